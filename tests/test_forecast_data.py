"""Time-series data: GluonTS reader and grouping, macrodata, the synthetic process's known law."""

import gzip
import json

import numpy as np
import pytest

from driftless.forecast import data as ts


def _write_lines(path, rows, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


@pytest.fixture
def gluonts_folder(tmp_path):
    """3 hourly series; series 1 starts 2 h late and series 2 ends 1 h early in train; 2 test dates."""
    root = tmp_path / "toy_nips"
    (root).mkdir()
    (root / "metadata.json").write_text(json.dumps({
        "freq": "H", "prediction_length": 3,
        "feat_static_cat": [{"name": "feat_static_cat_0", "cardinality": "3"}]}))
    base = [np.arange(10.0) + 100 * i for i in range(3)]
    train = [
        {"start": "2020-01-01 00:00:00", "target": base[0].tolist(), "feat_static_cat": [0]},
        {"start": "2020-01-01 02:00:00", "target": base[1][2:].tolist(), "feat_static_cat": [1]},
        {"start": "2020-01-01 00:00:00", "target": base[2][:9].tolist(), "feat_static_cat": [2]},
    ]
    test = []
    for end in (13, 16):  # two rolling dates, each block holds all 3 series up to its end
        for i in range(3):
            full = np.arange(end, dtype=float) + 100 * i
            test.append({"start": "2020-01-01 00:00:00", "target": full.tolist(), "feat_static_cat": [i]})
    _write_lines(root / "train" / "data.json", train)
    _write_lines(root / "test" / "data.json.gz", test, gz=True)
    return root


def test_gluonts_grouping(gluonts_folder):
    ds = ts.load_gluonts(gluonts_folder)
    assert ds.train.shape == (10, 3) and ds.dim == 3 and ds.prediction_length == 3 and ds.season == 24
    np.testing.assert_array_equal(ds.train[:, 0], np.arange(10.0))
    # series 1 starts 2 h late: its first two steps are filled with its own mean
    np.testing.assert_allclose(ds.train[:2, 1], np.mean(np.arange(2, 10) + 100.0))
    np.testing.assert_array_equal(ds.train[2:, 1], np.arange(2, 10) + 100.0)
    # series 2 ends early: right-filled with its mean
    assert ds.train[9, 2] == pytest.approx(np.mean(np.arange(9) + 200.0))
    assert [t.shape for t in ds.test] == [(13, 3), (16, 3)]
    ctx, tgt, t0 = ds.windows(context_length=5)
    assert ctx.shape == (2, 5, 3) and tgt.shape == (2, 3, 3)
    np.testing.assert_array_equal(tgt[1, :, 2], [213.0, 214.0, 215.0])
    np.testing.assert_array_equal(t0, [5, 8])
    # max_target_dim keeps the last series, as GluonTS does
    small = ts.load_gluonts(gluonts_folder, max_target_dim=2)
    np.testing.assert_array_equal(small.test[0][:, 0], ds.test[0][:, 1])


def test_gluonts_errors(gluonts_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        ts.load_gluonts(tmp_path)
    with pytest.raises(ValueError, match="dates"):
        ts.load_gluonts(gluonts_folder, num_test_dates=4)
    bad = gluonts_folder / "train" / "data.json"
    bad.write_text('{"start": "2020-01-01", "target": [1, 2]}\nnot json\n')
    with pytest.raises(ValueError, match="not valid JSON"):
        ts.load_gluonts(gluonts_folder)


def test_frequency_helpers():
    assert ts.pandas_freq("H") == "h" and ts.pandas_freq("30T") == "30min" and ts.pandas_freq("B") == "B"
    assert ts.season_of("H") == 24 and ts.season_of("30min") == 48 and ts.season_of("10min") == 144
    assert ts.season_of("B") == 5 and ts.season_of("D") == 7 and ts.season_of("Q") == 4
    with pytest.raises(ValueError):
        ts.pandas_freq("every hour")


def test_macrodata_split():
    pytest.importorskip("statsmodels")
    ds = ts.macrodata(prediction_length=4, test_windows=8)
    assert ds.dim == 12 and ds.train.shape == (203 - 32, 12) and len(ds.test) == 8
    assert ds.test[-1].shape[0] == 203 and ds.columns[0] == "realgdp"
    ctx, tgt, _ = ds.windows(16)
    # consecutive windows are contiguous: window i's target is the start of window i+1's last context steps
    np.testing.assert_array_equal(tgt[0], ctx[1][-4:])
    assert np.all(ds.train[:, 0] > 2000)  # real GDP in billions of 2005 dollars


def test_synthetic_one_step_law_matches_generated_data():
    proc = ts.SyntheticVAR(dim=3, period=12, seed=4)
    x = proc.generate(20000, seed=5)
    t = np.arange(len(x) - 1)
    means, covs = proc.forecast_law(x[:-1], t, horizon=1)
    resid = x[1:] - means[:, 0]
    assert np.abs(resid.mean(0)).max() < 0.05
    np.testing.assert_allclose(np.cov(resid.T), covs[0], atol=0.06)
    np.testing.assert_allclose(covs[0], proc.Sigma)
    # sampled forecasts follow the stated multi-step law
    paths = proc.sample_forecast(x[:2], np.array([0, 1]), horizon=5, n=40000, seed=6)
    m5, c5 = proc.forecast_law(x[:2], np.array([0, 1]), horizon=5)
    np.testing.assert_allclose(paths.mean(1), m5, atol=0.06)
    np.testing.assert_allclose(np.cov(paths[0, :, 4].T), c5[4], rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="stationary"):
        ts.SyntheticVAR(rho=(0.5, 1.2))


def test_load_dataset_specs(gluonts_folder):
    ds = ts.load_dataset("synthetic:dim=2,length=300,prediction_length=4,test_windows=3")
    assert ds.dim == 2 and ds.train.shape == (300, 2) and len(ds.test) == 3 and ds.process is not None
    assert ts.load_dataset(str(gluonts_folder)).dim == 3
    assert ts.load_dataset(f"{gluonts_folder}:max_target_dim=1").dim == 1
    with pytest.raises(ValueError, match="unknown dataset"):
        ts.load_dataset("electricity_nips_not_here")
    with pytest.raises(ValueError, match="bad option"):
        ts.load_dataset("synthetic:colour=3")
