"""`driftless image train|sample|classifier|eval` end to end on a tiny ImageFolder with a debug
tokenizer (random weights: this checks the plumbing, not quality)."""

import json

import numpy as np
import pytest
import torch

from driftless.cli import main


@pytest.mark.slow
def test_image_cli_end_to_end(tmp_path, capsys):
    from driftless import checkpoint
    from driftless.config import override, to_dict
    from driftless.image.data import write_image_folder
    from driftless.image.inception import save_random_inception
    from driftless.models.tokenizer import PRESETS, Tokenizer

    torch.manual_seed(0)
    tcfg = override(PRESETS["debug"], {"latent_mean": [0.0] * 4, "latent_std": [1.0] * 4})
    checkpoint.save(tmp_path / "tok", "tokenizer", to_dict(tcfg), Tokenizer(tcfg).state_dict())
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 80, (24, 64, 64, 3), dtype=np.uint8)
    labels = np.arange(24) % 3
    for c in range(3):
        imgs[labels == c, ..., c] += 150
    write_image_folder(tmp_path / "data", imgs, labels, ["r", "g", "b"])
    run, data, tok = str(tmp_path / "run"), str(tmp_path / "data"), str(tmp_path / "tok")

    assert main(["image", "train", "--data", data, "--val-data", data, "--tokenizer", tok, "--out", run,
                 "--preset", "debug", "--steps", "4", "--batch-size", "8", "--val-every", "2", "--save-every", "2",
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 4 and (tmp_path / "run" / "latents-train.safetensors").exists()
    header = checkpoint.read_header(tmp_path / "run" / "checkpoint", "image")
    assert header["config"]["class_names"] == ["b", "g", "r"] and header["config"]["grid"] == [8, 8]
    assert any(json.loads(line).get("split") == "val" for line in open(tmp_path / "run" / "metrics.jsonl"))

    grid = tmp_path / "grid.png"
    assert main(["image", "sample", "--checkpoint", run, "--classes", "r,b", "--per-class", "2", "--ar-steps", "3",
                 "--diffusion-steps", "4", "--cfg", "2", "--out", str(grid), "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from PIL import Image

    assert out["images"] == 4 and Image.open(grid).size == (72 + 2 * 64, 2 * 64)
    assert main(["image", "sample", "--checkpoint", run, "--classes", "purple", "--out", str(grid)]) == 1
    assert "unknown class 'purple'" in capsys.readouterr().err

    clf = str(tmp_path / "clf")
    assert main(["image", "classifier", "--data", data, "--out", clf, "--epochs", "1", "--width", "8"]) == 0
    inc = save_random_inception(tmp_path / "inc.pt", "torchscript")
    log = tmp_path / "eval.jsonl"
    assert main(["image", "eval", "--checkpoint", run, "--real", data, "--classifier", clf, "--per-class", "4",
                 "--ar-steps", "1,8", "--diffusion-steps", "3", "--cfg", "1,2", "--inception", str(inc),
                 "--reference", "--json", str(log), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in open(log)]
    assert [r["variant"] for r in rows] == ["real_heldout", "tokenizer_reconstruction"] + ["random"] * 4
    assert [(r["ar_steps"], r["cfg"]) for r in rows[2:]] == [(1, 1.0), (1, 2.0), (8, 1.0), (8, 2.0)]
    for r in rows:
        assert {"accuracy", "precision", "recall", "fd_classifier", "fid", "is"} <= set(r)
        assert 0 <= r["precision"] <= 1 and r["fid"] >= 0


def test_latent_batches_resume_where_they_left_off():
    from driftless.train.memory import TensorBatches

    lat, lab = torch.arange(10.0)[:, None, None], torch.arange(10)
    b = TensorBatches({"latents": lat, "labels": lab}, batch_size=3, seed=1)  # 3 batches per epoch, one image dropped
    it = b.stream(0)
    first = [next(it)["labels"].tolist() for _ in range(7)]
    assert all(len(x) == 3 for x in first) and len({v for x in first[:3] for v in x}) == 9
    it = b.stream(4 * 3)  # after 4 batches
    assert [next(it)["labels"].tolist() for _ in range(3)] == first[4:7]
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(TensorBatches({"latents": lat, "labels": lab}, batch_size=11).stream(0))
