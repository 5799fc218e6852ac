import numpy as np
import pytest
import torch

import driftless
from driftless.world.world import World


@pytest.fixture
def world(debug_world):
    return driftless.load(debug_world)


def _ctx(t=2, b=None, seed=0):
    g = np.random.default_rng(seed)
    shape = (t, 64, 64, 3) if b is None else (b, t, 64, 64, 3)
    return g.integers(0, 256, size=shape, dtype=np.uint8)


def test_api_shapes_and_types(world):
    assert world.num_actions == 4 and world.resolution == (64, 64)
    ctx = _ctx(3)
    z = world.encode(ctx)
    assert z.shape == (3, 64, 4) and z.dtype == np.float32
    assert world.decode(z).shape == ctx.shape and world.decode(z).dtype == np.uint8
    acts = world.infer_actions(ctx)
    assert acts.shape == (2,) and acts.dtype == np.int64 and acts.max() < 4
    assert world.infer_actions(_ctx(3, b=2)).shape == (2, 2)
    assert world.reset(ctx).shape == (64, 64, 3)
    assert world.step(1).shape == (64, 64, 3)
    assert world.step(np.int64(3)).dtype == np.uint8
    # torch tensors are accepted too
    assert world.encode(torch.from_numpy(ctx)).shape == (3, 64, 4)


def test_rollout_past_training_length_is_finite_and_seeded(world):
    ctx = _ctx(2)
    actions = np.arange(100) % 4
    a = world.rollout(ctx, actions, seed=7)
    assert a.shape == (102, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a[:2], ctx)
    b = world.rollout(ctx, actions, seed=7)
    assert np.array_equal(a, b), "same seed, same frames"
    c = world.rollout(ctx, actions, seed=8)
    assert not np.array_equal(a, c)
    assert world.dynamics.cfg.clip_len < 100


def test_batched_sessions_match_single_ones(world):
    ctx = _ctx(2, b=2)
    out = world.rollout(ctx, np.array([[0, 1, 2], [3, 3, 1]]), seed=1)
    assert out.shape == (2, 5, 64, 64, 3)
    world.reset(ctx, seed=0)
    assert world.step([1, 2]).shape == (2, 64, 64, 3)
    assert world.step(1).shape == (2, 64, 64, 3)  # one action broadcasts over the batch


@pytest.mark.parametrize("call,match", [
    (lambda w: w.step(9), r"\[0, 4\)"),
    (lambda w: w.step(-1), r"\[0, 4\)"),
    (lambda w: w.step(1.5), "integers"),
    (lambda w: w.step([1, 2]), "expected 1 action"),
])
def test_bad_actions(world, call, match):
    world.reset(_ctx(1))
    with pytest.raises(ValueError, match=match):
        call(world)


@pytest.mark.parametrize("frames,match", [
    (np.zeros((2, 64, 64, 3), np.float32), "uint8"),
    (np.zeros((2, 32, 64, 3), np.uint8), r"\(T, 64, 64, 3\)"),
    (np.zeros((64, 64, 3), np.uint8), r"\(T, 64, 64, 3\)"),
    ([[1, 2]], "numpy array or torch tensor"),
])
def test_bad_frames(world, frames, match):
    with pytest.raises(ValueError, match=match):
        world.encode(frames)


def test_step_before_reset_and_unknown_options(debug_world):
    w = driftless.load(debug_world)
    with pytest.raises(ValueError, match="reset"):
        w.step(0)
    with pytest.raises(ValueError, match="unknown sampling option"):
        w.reset(_ctx(1), stepz=3)
    with pytest.raises(ValueError, match="at least 2 frame"):
        w.infer_actions(_ctx(1))
    with pytest.raises(FileNotFoundError, match="no world"):
        driftless.load("no-such-world")


def test_sampling_options_change_the_result(world):
    ctx = _ctx(2)
    a = world.rollout(ctx, [1, 1, 1], seed=0, steps=2)
    b = world.rollout(ctx, [1, 1, 1], seed=0, steps=4)
    assert not np.array_equal(a[2:], b[2:])


def test_tokenizer_only_world(tmp_path, debug_world):
    w = driftless.load(debug_world / "tokenizer")
    assert isinstance(w, World) and w.dynamics is None
    assert w.decode(w.encode(_ctx(2))).shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="dynamics"):
        w.reset(_ctx(1))


@pytest.mark.parametrize("schedule", ["pyramid", "full_sequence", "autoregressive"])
def test_rollout_with_scheduling_matrices(world, schedule):
    ctx = _ctx(2)
    actions = np.arange(13) % 4
    a = world.rollout(ctx, actions, seed=3, schedule=schedule, chunk=4, uncertainty=1.5)
    b = world.rollout(ctx, actions, seed=3, schedule=schedule, chunk=4, uncertainty=1.5)
    assert a.shape == (15, 64, 64, 3) and np.array_equal(a, b)
    assert np.array_equal(a[:2], ctx)
    with pytest.raises(ValueError, match="context window"):
        world.rollout(ctx, actions, schedule="pyramid", chunk=50)


def test_static_caches_play_the_same_frames_as_the_eager_session():
    """The CUDA-graph path's static KV caches (device-side slot and mask, all slots read with a
    mask, one frame at a time) give the frames of the ordinary session, past the window where
    the ring buffer wraps, up to float rounding (run here on the CPU, without the graph)."""
    import driftless

    world = driftless.load("coinrun")
    ctx = world.decode(np.random.default_rng(1).standard_normal((3, 64, world.tokenizer.cfg.latent_dim)).astype(np.float32))
    window = min(16, world.dynamics.cfg.context_window)  # a short window keeps the test short
    actions = np.random.default_rng(2).integers(0, world.num_actions, window + 4)  # the ring buffer wraps
    frames = {}
    for static in (False, True):
        world._reset(ctx, 0, None, static=static, window=window)
        frames[static] = np.stack([world.step(int(a)) for a in actions]).astype(np.int16)
    assert world._session.static and isinstance(world._session.dec_pos, torch.Tensor)
    assert int(world._session.dec_pos) == 3 + len(actions)
    assert int(world._session.dyn_state.position) == 3 + len(actions)
    diff = np.abs(frames[True] - frames[False])
    assert diff.mean() < 0.01 and diff.max() <= 2, (diff.mean(), diff.max())  # seen: 8e-6, 1


@pytest.fixture(scope="module")
def short_decoder_world(tmp_path_factory):
    """A debug world whose decoder attends to one earlier frame (temporal window 2): every sampling
    window of 2+ frames decodes alike, so frames that differ between windows differ through the
    dynamics."""
    from driftless.world.debug import make_debug_world

    return driftless.load(make_debug_world(tmp_path_factory.mktemp("window") / "w",
                                           tokenizer_overrides={"decoder.temporal_window": 2}))


def test_window_reaches_the_dynamics(short_decoder_world):
    """`window` sets the frames the dynamics attends to (it once changed only the context kept at
    reset and the decoder, and window 3 gave the default's frames); the trained window is the
    default, and a longer one is refused."""
    w = short_decoder_world
    trained = w.dynamics.cfg.context_window  # 6
    ctx, actions = _ctx(1), np.arange(12) % 4  # one context frame: no window trims it
    default = w.rollout(ctx, actions, seed=0)
    assert np.array_equal(w.rollout(ctx, actions, seed=0, window=trained), default)
    short = w.rollout(ctx, actions, seed=0, window=3)
    assert np.array_equal(short[:3], default[:3])  # the context, then frames 1-2 see all there is either way
    assert not np.array_equal(short[3:], default[3:])
    two = w.rollout(ctx, actions, seed=0, window=2)
    assert np.array_equal(two[:2], default[:2]) and not np.array_equal(two[2:], short[2:])
    assert w.rollout(ctx, actions, seed=0, window=1).shape == (1 + len(actions), 64, 64, 3)
    with pytest.raises(ValueError, match=rf"window must be an integer in \[1, {trained}\].*trained"):
        w.rollout(ctx, actions, window=trained + 1)
    with pytest.raises(ValueError, match=r"window must be"):
        w.reset(ctx, window=0)
    w.reset(ctx, window=3)
    w.step(1, window=3)  # the session's own window: fine
    with pytest.raises(ValueError, match="fixed for a session"):
        w.step(1, window=4)


@pytest.mark.parametrize("static", [False, True])
def test_a_shorter_window_is_the_model_with_that_attention_span(debug_world, static):
    """Frame by frame with window W (KV caches of W - 1 past frames, ring buffer wrapped) computes
    what the whole sequence does in one pass with a temporal attention span of W frames."""
    dyn = driftless.load(debug_world).dynamics
    cfg = dyn.cfg
    g = torch.Generator().manual_seed(0)
    n = 9
    frames = torch.randn(1, n + 1, cfg.tokens_per_frame, cfg.latent_dim, generator=g)  # n clean, then a noisy one
    acts = torch.randint(0, cfg.num_actions, (1, n + 1), generator=g)
    levels = torch.tensor([[0] * n + [500]])
    blocks = dyn.backbone.blocks
    for window in (2, 3, cfg.context_window):
        state = dyn.new_state(static=static, window=window)
        for i in range(n):  # one at a time (static caches take one frame per call)
            dyn.observe(state, frames[:, i:i + 1], acts[:, i:i + 1], context_level=0)
        out = dyn.frame(dyn.run, frames[:, n:], levels[:, n:], acts[:, n:], start=state.position, caches=state.caches)
        spans = [b.temporal_window for b in blocks]
        try:
            for b in blocks:
                b.temporal_window = window
            ref = dyn.frame(dyn.run, frames, levels, acts)[:, n:]  # no caches: the span masks attention
        finally:
            for b, span in zip(blocks, spans):
                b.temporal_window = span
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
        assert state.window == window
