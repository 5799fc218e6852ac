"""The generic Diffusion-Forcing planner: token layouts, plans, MPC in an open room, baselines."""

import copy

import numpy as np
import pytest
import torch

from driftless.plan import sequence_df as sdf
from driftless.plan.planner import Planner, PlannerConfig, TokenLayout, pd_action, run_full_sequence, run_mpc
from driftless.plan.train import FitConfig, fit

STEP = 0.15  # room units moved per unit of action
LAYOUT = TokenLayout((("action", 2), ("obs", 2)), 1)


class Room:
    """An open room [-1, 1]^2 with kinematic motion: pos <- clip(pos + STEP * clip(a))."""

    def __init__(self, starts):
        self.pos = np.asarray(starts, dtype=np.float64).copy()

    def step(self, actions):
        self.pos = np.clip(self.pos + STEP * np.clip(actions, -1, 1), -1, 1)
        return self.pos.copy(), np.zeros(len(self.pos))


def _room_data(n=4000, length=8, seed=0):
    """Random walks in the room: tokens [a_t, pos_{t+1}], conditioned on pos_0."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 2, generator=g) * 2 - 1
    start = pos.clone()
    acts = torch.rand(n, length, 2, generator=g) * 2 - 1
    toks = []
    for t in range(length):
        pos = (pos + STEP * acts[:, t]).clamp(-1, 1)
        toks.append(torch.cat([acts[:, t], pos], -1))
    return torch.stack(toks, 1), start


@pytest.fixture(scope="module")
def room_model():
    torch.manual_seed(0)
    x, c = _room_data()
    cfg = copy.deepcopy(sdf.PRESETS["debug"])
    cfg.token_dim, cfg.cond_dim, cfg.width = 4, 2, 64
    model = sdf.SequenceDF(cfg)
    model.set_stats(x.reshape(-1, 4).mean(0), x.reshape(-1, 4).std(0), c.mean(0), c.std(0))

    def sample(b, g):
        i = torch.randint(0, len(x), (b,), generator=g)
        return x[i], c[i]

    ema, trace = fit(model, sample, FitConfig(steps=300, batch=64, lr=3e-3, warmup=20, ema=0.95), progress=False)
    assert np.mean(trace[-50:]) < 0.5 * np.mean(trace[:20])
    return ema


def test_layout_roundtrip_and_errors():
    lay = TokenLayout((("action", 2), ("reward", 1), ("obs", 4)), frame_stack=3)
    assert lay.token_dim == 21
    tok = torch.randn(5, 4, 21)
    parts = {n: lay.get(tok, n) for n in ("action", "reward", "obs")}
    assert parts["obs"].shape == (5, 12, 4)
    torch.testing.assert_close(lay.assemble(**parts), tok)
    with pytest.raises(ValueError, match="no field"):
        lay.get(tok, "value")
    with pytest.raises(ValueError, match="missing"):
        lay.assemble(action=parts["action"])
    with pytest.raises(ValueError):
        PlannerConfig(schedule="zigzag")
    with pytest.raises(ValueError, match="precision"):
        PlannerConfig(precision="fp16")


def test_clean_level_is_what_the_model_is_told(room_model, monkeypatch):
    """clean_level raises the level the network sees for clean tokens (finished plan tokens and
    context), and nothing else: the levels above it pass unchanged."""
    seen = []
    forward = type(room_model).forward

    def spy(self, x, levels, cond=None):
        seen.append(levels.detach().clone())
        return forward(self, x, levels, cond)

    monkeypatch.setattr(type(room_model), "forward", spy)
    ctx = torch.randn(2, 2, 4)
    for clean in (0, 3):
        seen.clear()
        Planner(room_model, PlannerConfig(horizon=4, sampling_steps=4, guidance_scale=0.0, clean_level=clean)).plan(
            torch.zeros(2, 2), context=ctx, horizon=4, generator=torch.Generator().manual_seed(0))
        levels = torch.cat([s.flatten() for s in seen])
        assert levels.min() == clean  # context and finished tokens: 0, or the floor
        assert levels.max() > 3 and (levels > 3).sum() > 0


@pytest.mark.slow  # trains the tiny room model once (~10 s on 2 cores)
def test_plan_shapes_and_context_kept(room_model):
    pl = Planner(room_model, PlannerConfig(horizon=5, sampling_steps=4, guidance_scale=0.0))
    cond = torch.zeros(3, 2)
    plan = pl.plan(cond, horizon=5, generator=torch.Generator().manual_seed(0))
    assert plan.shape == (3, 5, 4) and torch.isfinite(plan).all()
    ctx = torch.randn(3, 2, 4)
    plan2 = pl.plan(cond, context=ctx, horizon=3, generator=torch.Generator().manual_seed(0))
    assert plan2.shape == (3, 3, 4)
    # the plan's positions follow its own actions (the model learnt the room's dynamics)
    plan = pl.plan(torch.rand(16, 2) * 1.2 - 0.6, horizon=5, generator=torch.Generator().manual_seed(1))
    a, p = LAYOUT.get(plan, "action"), LAYOUT.get(plan, "obs")
    step = (p[:, 1:] - p[:, :-1]) / STEP
    assert (step - a[:, 1:]).abs().mean() < 0.45


@pytest.mark.slow  # trains the tiny room model once (~10 s on 2 cores)
def test_mpc_reaches_goal_in_open_room(room_model):
    starts = np.array([[-0.8, -0.8], [0.8, -0.7], [-0.7, 0.8], [0.6, 0.6]])
    goals = torch.tensor([[0.7, 0.7], [-0.6, 0.7], [0.7, -0.7], [-0.7, -0.6]])

    def reward(tokens):  # minus the distance to the goal at every planned step
        return -(LAYOUT.get(tokens, "obs") - goals[:, None]).norm(dim=-1).sum(-1)

    env = Room(starts)
    cfg = PlannerConfig(horizon=6, sampling_steps=5, guidance_scale=5.0, mctg_samples=2, open_loop=2)
    res = run_mpc(env, starts, Planner(room_model, cfg), LAYOUT, 24, reward, reward_field=None,
                  generator=torch.Generator().manual_seed(0))
    final = np.linalg.norm(res.positions[:, -1] - goals.numpy(), axis=1)
    initial = np.linalg.norm(starts - goals.numpy(), axis=1)
    assert res.positions.shape == (4, 25, 2)
    assert np.all(final < 0.45), final  # every start reaches its goal (1.5 to 2.1 away) in 24 steps
    assert np.all(final < 0.3 * initial)
    # without guidance the same planner wanders: reaching the goals needs the reward
    env = Room(starts)
    free = run_mpc(env, starts, Planner(room_model, PlannerConfig(horizon=6, sampling_steps=5, guidance_scale=0.0,
                                                                  open_loop=2)),
                   LAYOUT, 24, reward, reward_field=None, generator=torch.Generator().manual_seed(0))
    assert np.linalg.norm(free.positions[:, -1] - goals.numpy(), axis=1).mean() > 2 * final.mean()


@pytest.mark.slow  # trains the tiny room model once (~10 s on 2 cores)
def test_full_sequence_baseline_runs(room_model):
    starts = np.array([[-0.5, -0.5], [0.5, 0.5]])
    env = Room(starts)
    pl = Planner(room_model, PlannerConfig(schedule="full_sequence", sampling_steps=4, guidance_scale=0.0))
    res = run_full_sequence(env, starts, pl, TokenLayout((("action", 2), ("obs", 2)), 1), 10, horizon=4,
                            executor="actions", generator=torch.Generator().manual_seed(0))
    assert res.positions.shape == (2, 11, 2) and len(res.plans) == 1
    with pytest.raises(ValueError, match="executor"):
        run_full_sequence(env, starts, pl, LAYOUT, 10, horizon=4, executor="magic")


def test_pd_action():
    a = pd_action(np.zeros((1, 2)), np.zeros((1, 2)), np.array([[0.3, -5.0]]), np.zeros((1, 2)))
    np.testing.assert_allclose(a, [[0.3, -1.0]])
