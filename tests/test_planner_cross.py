"""Compositional-generation plumbing: the cross dataset, windows, outcome classes, rollouts."""

import numpy as np
import torch

from driftless.plan import cross as cross_eval
from driftless.plan.cross import CORNERS, CrossTokens, PointEnv, classify, make_cross


def test_cross_dataset():
    a = make_cross(32, 8, seed=1, hold=4)
    b = make_cross(32, 8, seed=1, hold=4)
    np.testing.assert_array_equal(a["positions"], b["positions"])
    assert a["positions"].shape == (32, 12, 2)
    ends = a["positions"][:, 7]
    np.testing.assert_allclose(ends, CORNERS[(a["corners"] + 2) % 4], atol=0.05)  # opposite corner
    np.testing.assert_allclose(a["positions"][:, -1], ends, atol=0.05)  # then rests there
    np.testing.assert_allclose(np.abs(a["positions"][:, 3]).max(), 0.0, atol=0.05)  # via the centre
    tok = CrossTokens(a, 8)
    x, c = tok.sample(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 8, 4) and c.shape == (16, 2)
    torch.testing.assert_close(c + x[:, 0, :2], x[:, 0, 2:])  # start + first move = first position


def test_classify():
    s = CORNERS[[0, 0, 0, 0]]
    paths = np.stack([np.stack([s[i], e]) for i, e in enumerate(
        [CORNERS[2], CORNERS[1], CORNERS[0], np.zeros(2)])])
    assert classify(paths, s) == {"cross": 0.25, "V": 0.25, "back": 0.25, "other": 0.25}
    env = PointEnv(s[:1])
    np.testing.assert_allclose(env.step([[0.5, 0.5]])[0], [[-0.5, -0.5]])


def test_rollout_modes_run():
    model = cross_eval.train_cross_model(steps=5)
    p_mem, starts = cross_eval.rollout(model, 4, memory=True, horizon=8)
    p_free, _ = cross_eval.rollout(model, 4, memory=False, horizon=8)
    assert p_mem.shape == p_free.shape == (4, cross_eval.LENGTH + 1, 2)
    np.testing.assert_allclose(p_mem[:, 0], starts)
