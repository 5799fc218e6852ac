"""The `fused_commit` sampling option: the last denoising pass appends a generated frame to the
dynamics' KV caches, one backbone pass fewer per frame (models/frame_forcing.py)."""

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from driftless.world.debug import make_debug_world
    from driftless.world.world import load

    return load(make_debug_world(tmp_path_factory.mktemp("fused") / "world"))


def _start(world, seed=0):
    h, w = world.resolution
    return np.random.default_rng(seed).integers(0, 256, (2, h, w, 3), dtype=np.uint8)


def _passes(world, monkeypatch):
    """Record (levels, commit) of every backbone pass of the dynamics."""
    calls = []
    run = world.dynamics.run

    def spy(tokens, levels, actions, start=0, caches=None, commit=False, *args, **kwargs):
        calls.append((levels.detach().clone(), commit))
        return run(tokens, levels, actions, start, caches, commit, *args, **kwargs)

    monkeypatch.setattr(world.dynamics, "run", spy)
    return calls


def test_fused_commit_saves_a_pass_and_commits_the_last_one(world, monkeypatch):
    frame = world.dynamics.frame
    # fused: the last step starts at the context level, the others evenly spaced above it
    assert frame._ladder(4, "cpu", 300).tolist() == [1000, 767, 533, 300, 0]
    assert frame._ladder(4, "cpu").tolist() == [1000, 750, 500, 250, 0]
    world.reset(_start(world), seed=1, steps=4, fused_commit=False)
    calls = _passes(world, monkeypatch)
    world.step(1)
    assert len(calls) == 5 and [c for _, c in calls] == [False] * 4 + [True]  # 4 steps, then the commit pass
    world.reset(_start(world), seed=1, steps=4, fused_commit=True, context_level=300)
    calls.clear()
    position = world._session.dyn_state.position
    world.step(1)
    assert len(calls) == 4 and [c for _, c in calls] == [False, False, False, True]
    assert [int(lv.flatten()[0]) for lv, _ in calls] == [1000, 767, 533, 300]  # committed at the context level
    assert world._session.dyn_state.position == position + 1
    frames = [world.step(a) for a in (0, 2, 3)]
    assert all(f.shape == (*world.resolution, 3) for f in frames)


def test_fused_commit_holds_frames_at_the_context_level(world, monkeypatch):
    calls = _passes(world, monkeypatch)
    world.reset(_start(world), seed=0, steps=2, fused_commit=True, context_level=40)
    assert calls and all(int(lv.flatten()[0]) == 40 and commit for lv, commit in calls)  # start frames
    calls.clear()
    world.step(0)
    assert [int(lv.flatten()[0]) for lv, _ in calls] == [1000, 40] and calls[-1][1]  # generated ones
    with pytest.raises(ValueError, match="context level"):
        world.step(0, context_level=1000)


def test_fused_commit_needs_one_pass_per_step(world):
    world.reset(_start(world), seed=0)
    with pytest.raises(ValueError, match="fused_commit.*cfg_scale 1 or cfg_steps below steps"):
        world.step(0, fused_commit=True, cfg_scale=2.0)
    with pytest.raises(ValueError, match="fused_commit.*one pass in that step"):
        world.reset(_start(world), seed=0, fused_commit=True, history_guidance=2.0)
    world.reset(_start(world), seed=0)
    with pytest.raises(ValueError, match="at least 2 steps"):
        world.step(0, fused_commit=True, steps=1)


def test_fused_rollouts_are_seeded_and_differ_from_the_commit_pass(world):
    start = _start(world)
    a = world.rollout(start, [0, 1, 2, 3], seed=3, steps=2, fused_commit=True)
    b = world.rollout(start, [0, 1, 2, 3], seed=3, steps=2, fused_commit=True)
    c = world.rollout(start, [0, 1, 2, 3], seed=3, steps=2)
    assert np.array_equal(a, b) and not np.array_equal(a[2:], c[2:])


@pytest.mark.slow  # exports the debug world's graphs (~20 s on 2 cores)
def test_step_graph_with_fused_commit_matches_the_world(tmp_path):
    """The ONNX step graph, exported with fused_commit, gives World.reset + World.step's frames
    for the same seed (generated frames committed by the last pass, at the context level), past the ring buffer's wrap-around."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from driftless.export.onnx import export_onnx
    from driftless.world.debug import make_debug_world

    world = make_debug_world(tmp_path / "world")
    torch.manual_seed(0)
    m = export_onnx(world, tmp_path / "onnx", steps=2, eta=1.0, fused_commit=True, check_frames=10, seed=0,
                    log=lambda *a: None)
    assert m["sampling"]["fused_commit"] is True
    check = m["check"]
    assert check["latents_max_abs"] < 1e-4 and check["frames_max_abs"] <= 1, check
    # action guidance in the first of two steps, fused commit kept: the graph runs it like PyTorch
    g = export_onnx(world, tmp_path / "onnx-cfg", steps=2, eta=1.0, fused_commit=True, cfg_scale=3.0, cfg_steps=1,
                    check_frames=10, seed=0, log=lambda *a: None)
    assert g["sampling"]["cfg_steps"] == 1 and g["sampling"]["cfg_scale"] == 3.0
    assert g["check"]["latents_max_abs"] < 1e-4 and g["check"]["frames_max_abs"] <= 1, g["check"]


def test_cfg_steps_guides_only_the_noisiest_steps_and_lets_fused_commit_stay_on(world, monkeypatch):
    """cfg_steps = K: the first K denoising steps run the network twice (the action and the null
    action), the others once; 0 samples as no guidance at all and K = steps as guidance in every
    step (same noise); with K below the steps fused_commit is allowed and its last pass commits."""
    calls = _passes(world, monkeypatch)

    def frames(**opts):
        world.reset(_start(world), seed=3, steps=4, fused_commit=False, **opts)
        calls.clear()
        out = [world.step(a) for a in (1, 2)]
        return np.stack(out), len(calls) // 2

    plain, n_plain = frames()
    guided, n_guided = frames(cfg_scale=3.0)
    none_guided, n_none = frames(cfg_scale=3.0, cfg_steps=0)
    all_guided, n_all = frames(cfg_scale=3.0, cfg_steps=4)
    early, n_early = frames(cfg_scale=3.0, cfg_steps=1)
    assert (n_plain, n_guided, n_none, n_all, n_early) == (5, 9, 5, 9, 6)  # passes per frame (+1 commit pass)
    assert np.array_equal(none_guided, plain) and np.array_equal(all_guided, guided)
    assert not np.array_equal(early, plain) and not np.array_equal(early, guided)

    with pytest.raises(ValueError, match="cfg_steps below steps"):
        world.reset(_start(world), seed=3, steps=4, fused_commit=True, cfg_scale=3.0)
    with pytest.raises(ValueError, match="cfg_steps below steps"):
        world.reset(_start(world), seed=3, steps=4, fused_commit=True, cfg_scale=3.0, cfg_steps=4)
    world.reset(_start(world), seed=3, steps=4, fused_commit=True, cfg_scale=3.0, cfg_steps=2)
    calls.clear()
    world.step(1)
    assert [c for _, c in calls] == [False] * 5 + [True]  # steps 1-2 twice, 3 once, the last once and committed
