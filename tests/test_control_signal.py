"""tools/control_signal.py: the motion it reads from pixels and the per-code summaries it reports."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

_spec = importlib.util.spec_from_file_location(
    "control_signal", Path(__file__).resolve().parents[1] / "tools" / "control_signal.py")
cs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cs)


def _panning(dx_per_frame: int, dy_per_frame: int = 0, frames: int = 4) -> np.ndarray:
    """(1, frames, 32, 32, 3) uint8: a camera moving (dx, dy) pixels per frame over a random scene."""
    scene = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    out = [scene[32 + t * dy_per_frame:64 + t * dy_per_frame, 32 + t * dx_per_frame:64 + t * dx_per_frame]
           for t in range(frames)]
    return np.stack(out)[None]


def test_best_shift_reads_the_camera_motion():
    for dx, dy in ((2, 0), (-1, 0), (0, 3), (1, -2)):
        got_dx, got_dy = cs.best_shift(_panning(dx, dy))
        assert (got_dx == dx).all() and (got_dy == dy).all(), (dx, dy, got_dx, got_dy)


def test_direction_codes_pick_the_code_that_moves_each_way():
    code = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 3]])
    groups = torch.zeros_like(code)
    dx = torch.tensor([[1, 1, -1, 0, 0, 0, 0, -1]])
    dy = torch.zeros_like(code)
    table = cs.code_table(code, groups, dx, dy, 5)
    assert table[4]["share"] == 0 and "right" not in table[4]
    best = cs.direction_codes(table, min_share=0.2)  # code 3 (1 of 8) is too rare to count
    assert best["right"]["code"] == 0 and best["right"]["rate"] == 1.0
    assert best["left"]["code"] == 1 and best["left"]["rate"] == 0.5
    assert best["score"] == 0.75
    # of the left moves (code 1 once, code 3 once) only code 3's says "left" cleanly; every right move does
    assert best["left"]["recall"] == 0.5 and best["right"]["recall"] == 1.0


def test_a_product_code_lam_is_read_part_by_part():
    from driftless.config import override
    from driftless.models import registry
    from driftless.models.lam import LatentActionModel

    torch.manual_seed(0)
    lam = LatentActionModel(override(registry.preset("lam", "debug"), {"num_actions": 6, "factors": [3, 2]})).eval()
    frames = np.random.default_rng(0).integers(0, 255, (4, 5, 64, 64, 3), dtype=np.uint8)
    groups = torch.zeros(4, 4, dtype=torch.long)
    fit = torch.tensor([True, True, False, False])
    dx = torch.randint(-1, 2, (4, 4))
    dy = torch.zeros(4, 4, dtype=torch.long)
    out = cs.probe_lam(lam, frames, groups, fit, dx, dy, seed=0, vectors=False)
    assert [len(t) for t in out["parts"]] == [3, 2] and len(out["codes"]) == 6
    for part in out["parts"]:
        assert abs(sum(r["share"] for r in part) - 1) < 1e-3
    # a part's code k gathers every full code with that digit
    share0 = [sum(r["share"] for r in out["codes"] if r["code"] // 2 == k) for k in range(3)]
    assert np.allclose(share0, [r["share"] for r in out["parts"][0]], atol=2e-3)
