import json

import numpy as np
import pytest
from PIL import Image

import driftless
from driftless.cli import main
from driftless.world.world import ASSETS


def test_demo_writes_a_side_by_side_gif_and_psnr(debug_world, tmp_path, capsys):
    pytest.importorskip("procgen")
    out = tmp_path / "demo.gif"
    assert main(["demo", "--world", str(debug_world), "--clips", "2", "--frames", "4", "--out", str(out),
                 "--threads", "1"]) == 0
    text = capsys.readouterr().out
    result = json.loads(text[: text.rindex("}") + 1])
    assert np.isfinite(result["psnr_db"]) and result["clips"] == 2
    gif = Image.open(out)
    assert gif.n_frames == 4 and gif.size[0] > gif.size[1] // 2  # two clips side by side, stacked


def test_shipped_world_fits_the_budget_and_plays():
    folder = ASSETS / "coinrun"
    weights = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    everything = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert weights <= 16_000_000 and everything <= 16_000_000, (weights, everything)
    world = driftless.load("coinrun")
    assert world.num_actions == 8 and world.resolution == (64, 64)
    for module in (world.tokenizer, world.lam, world.dynamics):
        assert module is not None
    header = json.loads((folder / "world.json").read_text())
    assert header["weights_dtype"] == "float16"
    ctx = np.full((1, 64, 64, 3), 120, dtype=np.uint8)
    video = world.rollout(ctx, [0, 1, 2], seed=0, steps=2)
    assert video.shape == (4, 64, 64, 3) and video.dtype == np.uint8
