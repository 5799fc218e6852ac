"""`driftless forecast train|predict|eval` end to end on tiny data."""

import json

import numpy as np
import pytest

from driftless.cli import main

DATA = "synthetic:dim=2,length=300,prediction_length=4,test_windows=3,period=6"


@pytest.mark.slow
def test_train_predict_eval(tmp_path, capsys):
    ck = tmp_path / "df"
    assert main(["forecast", "train", "--data", DATA, "--preset", "debug", "--context-length", "8",
                 "--train-steps", "20", "--batch-size", "8", "--out", str(ck), "--quiet",
                 "--set", "width=16", "--label", "tiny_df"]) == 0
    header = json.loads((ck / "config.json").read_text())
    assert header["kind"] == "forecaster" and header["config"]["model"]["width"] == 16
    assert header["config"]["model"]["seasons"] == [6] and header["meta"]["label"] == "tiny_df"

    out = tmp_path / "pred.npz"
    assert main(["forecast", "predict", "--ckpt", str(ck), "--samples", "7", "--out", str(out),
                 "--plot", str(tmp_path / "fan.png"), "--schedule", "pyramid"]) == 0
    with np.load(out) as z:
        assert z["samples"].shape == (3, 7, 4, 2) and z["targets"].shape == (3, 4, 2)
        assert np.isfinite(z["samples"]).all()
    assert (tmp_path / "fan.png").stat().st_size > 5000

    report = tmp_path / "eval.json"
    assert main(["forecast", "eval", "--data", DATA, "--ckpt", str(ck), "--samples", "9",
                 "--baselines", "seasonal_naive,var,oracle", "--schedule", "autoregressive,full_sequence",
                 "--json", str(report), "--plot-dir", str(tmp_path / "plots")]) == 0
    res = json.loads(report.read_text())["results"]
    assert {"seasonal_naive", "oracle", "tiny_df[autoregressive]", "tiny_df[full_sequence]"} <= set(res)
    assert any(name.startswith("var(") for name in res)
    assert all(0 <= r["crps_sum"] < 10 for r in res.values())
    assert list((tmp_path / "plots").glob("fan_*.png"))
    assert "crps_sum" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["forecast", "train", "--data", "nowhere_dataset", "--out", str(tmp_path / "x")]) == 1
    assert "unknown dataset" in capsys.readouterr().err
    assert main(["forecast", "eval", "--data", DATA, "--baselines", "prophet"]) == 1
    assert "unknown baseline" in capsys.readouterr().err
    assert main(["forecast", "predict", "--ckpt", str(tmp_path / "missing")]) == 1
