"""History guidance (issue 16): the forcing model's frames guided by the same model without a past
(its past held at the top noise level), the option's path from World to the dynamics, its
composition with CFG on the action, and its refusals (other frame models, bad values, ONNX)."""

import numpy as np
import pytest
import torch

import driftless
from driftless.config import override
from driftless.models import registry
from driftless.models.dynamics import Dynamics


def _dyn(frame_model: str = "forcing") -> Dynamics:
    torch.manual_seed(0)
    dyn = Dynamics(override(registry.preset("dynamics", "debug"), {"frame_model": frame_model}))
    with torch.no_grad():  # open the zero-initialised gates so every input matters
        for p in dyn.parameters():
            if p.abs().sum() == 0 and p.dim() >= 1:
                p.normal_(0, 0.02)
        if frame_model == "forcing":
            dyn.frame.latent_out.weight.normal_(0, 0.5)  # outputs of a useful size
    return dyn.eval()


def _context(dyn: Dynamics, seed: int, b: int = 2, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, dyn.cfg.tokens_per_frame, dyn.cfg.latent_dim, generator=g)


def _frames(dyn: Dynamics, context: torch.Tensor, history_guidance: float, cfg_scale: float = 1.0,
            state_guidance: float | None = None, frames: int = 3) -> torch.Tensor:
    """`frames` generated frames (b, n, s, c) from `context`, actions 1, 2, 3, ..., seed 0."""
    b, n = context.shape[:2]
    g = torch.Generator().manual_seed(0)
    hg = history_guidance if state_guidance is None else state_guidance
    state = dyn.new_state(history_guidance=hg)
    acts = torch.arange(n).remainder(dyn.cfg.num_actions).expand(b, n)
    dyn.observe(state, context, acts, generator=g)
    out = [dyn.generate_frame(state, torch.full((b,), i % dyn.cfg.num_actions), steps=3, eta=1.0,
                              cfg_scale=cfg_scale, history_guidance=history_guidance, generator=g)
           for i in range(1, frames + 1)]
    return torch.cat(out, dim=1)


def test_off_by_default_and_exactly_the_plain_frames_at_1():
    dyn = _dyn()
    ctx = _context(dyn, 1)
    plain = _frames(dyn, ctx, 1.0)
    state = dyn.new_state()
    assert not state.history_free and not dyn.new_state(history_guidance=1.0).history_free
    assert dyn.new_state(history_guidance=2.0).history_free
    g = torch.Generator().manual_seed(0)
    b, n = ctx.shape[:2]
    dyn.observe(state, ctx, torch.arange(n).remainder(dyn.cfg.num_actions).expand(b, n), generator=g)
    default = torch.cat([dyn.generate_frame(state, torch.full((b,), i % dyn.cfg.num_actions), steps=3, eta=1.0,
                                            generator=g) for i in range(1, 4)], dim=1)
    assert torch.equal(plain, default)


def test_guidance_changes_the_frames_and_grows_with_the_scale():
    dyn = _dyn()
    ctx = _context(dyn, 1)
    # the same rollout state (same noise draws), the past's branch alone at scale 1
    base = _frames(dyn, ctx, 1.0, state_guidance=2.0)
    d = {w: float((_frames(dyn, ctx, w) - base).abs().mean()) for w in (1.5, 3.0)}
    assert 0 < d[1.5] < d[3.0], d


def test_the_history_free_branch_ignores_the_past():
    """At scale 0 the frames are the history-free branch's alone: two different pasts (same noise
    draws, same actions) give the same frames, bit for bit; the past's branch tells them apart."""
    dyn = _dyn()
    a, b = _context(dyn, 1), _context(dyn, 2)
    assert torch.equal(_frames(dyn, a, 0.0), _frames(dyn, b, 0.0))
    assert not torch.allclose(_frames(dyn, a, 1.0, state_guidance=2.0), _frames(dyn, b, 1.0, state_guidance=2.0))
    # what the branch holds: pure noise at the top level, whatever the frames
    free, levels = dyn.frame.history_free_context(a, torch.Generator().manual_seed(5))
    free_b, _ = dyn.frame.history_free_context(b, torch.Generator().manual_seed(5))
    assert torch.equal(free, free_b) and bool((levels == dyn.cfg.diffusion.levels).all())


def test_the_past_branch_of_the_batched_pass_is_the_plain_prediction():
    """Rows :b of the 2b pass see the same past as a plain state (the context noise is drawn first,
    the history-free branch's after it), so at scale 1 a guided state predicts what a plain one does."""
    dyn = _dyn()
    x = torch.randn(2, 1, dyn.cfg.tokens_per_frame, dyn.cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    levels, acts = torch.full((2, 1), 700), torch.tensor([[1], [3]])
    out = {}
    for hg in (1.0, 2.0):
        state = dyn.new_state(history_guidance=hg)
        dyn.observe(state, _context(dyn, 1), torch.ones(2, 3, dtype=torch.long),
                    generator=torch.Generator().manual_seed(0))
        out[hg] = dyn.frame._denoise_fn(dyn.run, acts, state, 1.0, 1.0)(x, levels)
    torch.testing.assert_close(out[2.0], out[1.0], rtol=1e-5, atol=1e-5)


def test_composition_with_cfg_on_the_action():
    """out = g_free + w (g_past - g_free), each branch guided on the action first (g = out(null) +
    s (out(a) - out(null))), both branches in one forward pass of 2b rows."""
    dyn = _dyn()
    frame, b, w, s = dyn.frame, 2, 2.5, 1.7
    state = dyn.new_state(history_guidance=w)
    n = 3
    dyn.observe(state, _context(dyn, 1, b, n), torch.ones(b, n, dtype=torch.long),
                generator=torch.Generator().manual_seed(0))
    x = torch.randn(b, 1, dyn.cfg.tokens_per_frame, dyn.cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    levels = torch.full((b, 1), 600)
    acts = torch.tensor([[1], [3]])
    calls = []
    real_run = dyn.run
    run = lambda tokens, *a, **k: calls.append(tokens.shape[0]) or real_run(tokens, *a, **k)  # noqa: E731

    def branches(a):
        out = frame(run, torch.cat([x, x]), torch.cat([levels, levels]), torch.cat([a, a]), start=state.position,
                    caches=state.caches)
        return out[:b], out[b:]

    got = frame._denoise_fn(run, acts, state, s, w)(x, levels)
    assert calls == [2 * b, 2 * b]  # two passes (action, null action), each with both branches
    (past_a, free_a), (past_0, free_0) = branches(acts), branches(torch.full_like(acts, frame.null_action))
    g_past, g_free = past_0 + s * (past_a - past_0), free_0 + s * (free_a - free_0)
    torch.testing.assert_close(got, g_free + w * (g_past - g_free), rtol=1e-5, atol=1e-5)
    calls.clear()
    frame._denoise_fn(run, acts, state, 1.0, w)(x, levels)
    assert calls == [2 * b]  # without CFG: one pass


@pytest.fixture
def world(debug_world):
    return driftless.load(debug_world)


def _ctx(t=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(t, 64, 64, 3), dtype=np.uint8)


def test_the_world_option_reaches_the_dynamics(world):
    ctx, actions = _ctx(), np.arange(8) % 4
    default = world.rollout(ctx, actions, seed=0)
    assert np.array_equal(default, world.rollout(ctx, actions, seed=0, history_guidance=1.0))
    guided = world.rollout(ctx, actions, seed=0, history_guidance=2.0)
    assert not np.array_equal(default[2:], guided[2:])
    assert np.array_equal(guided, world.rollout(ctx, actions, seed=0, history_guidance=2.0)), "seeded"
    assert world._session.dyn_state.history_free
    # per step: 1 on a guided session samples through its past's branch; on again later
    world.reset(ctx, seed=0, history_guidance=2.0)
    world.step(1, history_guidance=1.0)
    world.step(2, history_guidance=3.0)
    # a session started without it has no history-free branch
    world.reset(ctx, seed=0)
    with pytest.raises(ValueError, match="history-free branch"):
        world.step(1, history_guidance=2.0)
    world.step(1)  # (the refused call left the session as it was)
    # scheduling-matrix chunks guide too
    chunks = world.rollout(ctx, np.arange(9) % 4, seed=0, schedule="pyramid", chunk=3, history_guidance=2.0)
    assert chunks.shape == (11, 64, 64, 3)
    assert not np.array_equal(chunks, world.rollout(ctx, np.arange(9) % 4, seed=0, schedule="pyramid", chunk=3))


def test_static_caches_guide_like_the_eager_session(world):
    """The CUDA-graph path's static KV caches hold both branches too (run here on the CPU)."""
    ctx, actions = _ctx(3, seed=1), np.random.default_rng(2).integers(0, 4, 10)  # window 6: wraps
    frames = {}
    for static in (False, True):
        world._reset(ctx, 0, None, static=static, history_guidance=2.0)
        frames[static] = np.stack([world.step(int(a)) for a in actions]).astype(np.int16)
    assert world._session.static and world._session.dyn_state.history_free
    diff = np.abs(frames[True] - frames[False])
    assert diff.mean() < 0.05 and diff.max() <= 2, (diff.mean(), diff.max())


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), 1e30, "2", True])
def test_bad_values_are_refused(world, value):
    with pytest.raises(ValueError, match="sampling option history_guidance"):
        world.reset(_ctx(), history_guidance=value)
    with pytest.raises(ValueError, match="history_guidance must be a finite number"):
        _dyn().new_state(history_guidance=value)


@pytest.mark.parametrize("frame_model", ["mar", "maskgit"])
def test_other_frame_models_refuse_it(frame_model):
    dyn = _dyn(frame_model)
    with pytest.raises(ValueError, match="history_guidance is implemented for frame_model 'forcing'"):
        dyn.new_state(history_guidance=2.0)
    with pytest.raises(ValueError, match="'forcing'"):
        dyn.generate_frame(dyn.new_state(), torch.zeros(1, dtype=torch.long), history_guidance=2.0)


def test_eval_flag_and_the_onnx_export_refusal(world):
    from driftless.cli import build_parser
    from driftless.cli.evaluate import sampling_overrides

    args = build_parser().parse_args(["eval", "coinrun", "--data", "x", "--history-guidance", "2.5", "--context-level", "500"])
    assert sampling_overrides(args) == {"history_guidance": 2.5, "context_level": 500}
    with pytest.raises(ValueError, match="--history-guidance"):
        sampling_overrides(build_parser().parse_args(["eval", "coinrun", "--data", "x", "--history-guidance", "-1"]))
    pytest.importorskip("onnx")
    from driftless.export.onnx import sampling_options

    assert sampling_options(world).history_guidance == 1.0
    with pytest.raises(ValueError, match="ONNX export does not support history guidance"):
        sampling_options(world, history_guidance=2.0)
    world.sampling = world.sampling.updated(history_guidance=1.5)  # as a world.json default would
    with pytest.raises(ValueError, match="world's sampling default"):
        sampling_options(world)


def test_history_dropout_drops_a_prefix_of_some_clips_to_the_top_level():
    """drop_history: in the dropped clips every frame before a cut (1..t-1) is at K and the rest
    keep their levels; about a fraction p of clips is dropped; p = 0 changes nothing."""
    from driftless.models.frame_forcing import drop_history

    torch.manual_seed(0)
    levels = torch.randint(0, 500, (4000, 6))
    assert torch.equal(drop_history(levels, 0.0, 1000), levels)
    out = drop_history(levels, 0.25, 1000)
    changed = (out != levels).any(dim=1)
    assert 0.2 < changed.float().mean() < 0.3
    for row, new in zip(levels[changed], out[changed]):
        cut = int((new == 1000).long().argmin())  # first frame kept
        assert 1 <= cut <= 5 and (new[:cut] == 1000).all() and torch.equal(new[cut:], row[cut:])
    everything = drop_history(levels, 1.0, 1000)
    assert (everything[:, 0] == 1000).all() and (everything[:, -1] == levels[:, -1]).all()


def test_history_dropout_trains_and_is_checked():
    """The config's history_dropout reaches the forcing model's training loss: at p = 1 every
    clip's first frame is noised at the top level K; out-of-range values and other frame models
    refuse it."""
    base = registry.preset("dynamics", "debug")
    top = base.diffusion.levels
    batch = {"latents": torch.randn(64, base.clip_len, base.tokens_per_frame, base.latent_dim),
             "actions": torch.randint(0, base.num_actions, (64, base.clip_len - 1))}
    seen = {}
    for p in (0.0, 1.0):
        torch.manual_seed(0)
        dyn = Dynamics(override(base, {"history_dropout": p}))
        q_sample = dyn.frame.diffusion.q_sample

        def spy(x0, k, noise, p=p, q_sample=q_sample):
            seen[p] = k.clone()
            return q_sample(x0, k, noise)

        dyn.frame.diffusion.q_sample = spy
        loss = dyn.training_loss(batch)[0]
        assert torch.isfinite(loss)
    assert (seen[1.0][:, 0] == top).all() and (seen[0.0][:, 0] == top).float().mean() < 0.1
    with pytest.raises(ValueError, match="history_dropout"):
        override(base, {"history_dropout": 1.5})
    with pytest.raises(ValueError, match="history_dropout"):
        override(base, {"history_dropout": 0.1, "frame_model": "mar"})


def test_clean_history_makes_a_prefix_of_some_clips_nearly_clean():
    """clean_history: in the chosen clips every frame before a cut (1..t-1) is at a level in
    [0, top] and the rest keep their levels; about a fraction p of clips is chosen; p = 0 changes
    nothing."""
    from driftless.models.frame_forcing import clean_history

    torch.manual_seed(0)
    levels = torch.randint(500, 1001, (4000, 6))  # all above `top`: a changed frame is visible
    assert torch.equal(clean_history(levels, 0.0, 100), levels)
    out = clean_history(levels, 0.25, 100)
    changed = (out != levels).any(dim=1)
    assert 0.2 < changed.float().mean() < 0.3
    for row, new in zip(levels[changed], out[changed]):
        cut = int((new <= 100).long().argmin())  # first frame kept
        assert 1 <= cut <= 5 and (new[:cut] <= 100).all() and torch.equal(new[cut:], row[cut:])
    everything = clean_history(levels, 1.0, 100)
    assert (everything[:, 0] <= 100).all() and torch.equal(everything[:, -1], levels[:, -1])
    assert everything[:, 0].float().std() > 10  # drawn, not a constant


def test_clean_history_trains_and_is_checked():
    """The config's clean_history reaches the forcing model's training loss (at p = 1 every clip's
    first frame is at most clean_history_level; at p = 0 most are above it); bad values and other
    frame models refuse it."""
    base = registry.preset("dynamics", "debug")
    batch = {"latents": torch.randn(64, base.clip_len, base.tokens_per_frame, base.latent_dim),
             "actions": torch.randint(0, base.num_actions, (64, base.clip_len - 1))}
    seen = {}
    for p in (0.0, 1.0):
        torch.manual_seed(0)
        dyn = Dynamics(override(base, {"clean_history": p, "clean_history_level": 20}))
        q_sample = dyn.frame.diffusion.q_sample

        def spy(x0, k, noise, p=p, q_sample=q_sample):
            seen[p] = k.clone()
            return q_sample(x0, k, noise)

        dyn.frame.diffusion.q_sample = spy
        assert torch.isfinite(dyn.training_loss(batch)[0])
    assert (seen[1.0][:, 0] <= 20).all() and (seen[0.0][:, 0] <= 20).float().mean() < 0.5
    for bad in ({"clean_history": 1.5}, {"clean_history": 0.5, "frame_model": "mar"},
                {"clean_history_level": base.diffusion.levels + 1}):
        with pytest.raises(ValueError, match="clean_history"):
            override(base, bad)
