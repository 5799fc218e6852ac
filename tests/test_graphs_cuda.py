"""CUDA-graph play (world/graphs.py): what only a GPU can check. Skipped without CUDA; run on the
device with `python -m pytest tests/test_graphs_cuda.py`."""

import gc
import weakref

import numpy as np
import pytest
import torch

from driftless.world.graphs import WARMUP, FrameGraph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _draws(generator, device, frames, break_at=None):
    """Frames of a FrameGraph that draws noise from `generator`; at call `break_at` the frame
    reads the device from the host, which a recording refuses."""
    calls = {"n": 0}
    holder = {"g": generator}

    def make_frame():
        calls["n"] += 1
        x = torch.randn(4, device=device, generator=holder["g"])
        if calls["n"] == break_at:
            float(x.sum())  # host synchronisation: not allowed while recording
        return x * 1.0

    fg = FrameGraph(make_frame, None, generator, device, on_new_generator=lambda g: holder.update(g=g))
    return [fg(None).clone() for _ in range(frames)], fg


def _eager_reference(seed, device, frames):
    g = torch.Generator(device).manual_seed(seed)
    return torch.stack([torch.randn(4, device=device, generator=g) for _ in range(frames)])


def test_a_failed_recording_keeps_playing_from_the_same_random_state():
    device = torch.device("cuda")
    reference = _eager_reference(3, device, 7)
    with pytest.warns(RuntimeWarning, match="CUDA graph"):
        frames, fg = _draws(torch.Generator(device).manual_seed(3), device, 7, break_at=WARMUP + 1)
    assert not fg.captured and fg.error
    torch.testing.assert_close(torch.stack(frames), reference)


def test_recorded_frames_draw_what_eager_frames_draw():
    device = torch.device("cuda")
    reference = _eager_reference(5, device, 7)
    frames, fg = _draws(torch.Generator(device).manual_seed(5), device, 7)
    assert fg.captured and fg.error is None
    torch.testing.assert_close(torch.stack(frames), reference)


def test_a_replaced_session_frees_its_graph_without_the_collector(tmp_path):
    from driftless.world.debug import make_debug_world
    from driftless.world.world import load

    world = load(make_debug_world(tmp_path / "w"), device="cuda")
    ctx = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    gc.disable()
    try:
        graphs = []
        for _ in range(3):  # many sessions, as the evaluation's batches make
            world.reset(ctx)
            for a in range(WARMUP + 2):
                world.step(a % world.num_actions)
            assert world._session.graph.captured, world._session.graph.error
            graphs.append(weakref.ref(world._session.graph.graph))
        world.end_session()
        assert all(ref() is None for ref in graphs), "a finished session's CUDA graph is still alive"
    finally:
        gc.enable()
