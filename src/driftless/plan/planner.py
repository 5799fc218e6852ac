"""Planning with any Diffusion-Forcing sequence model and a reward: MPC, guidance, MCTG.

Nothing here knows about mazes. A task supplies
* a sequence model with `diffusion`, `denoiser(cond)`, `normalize` / `unnormalize` (tokens)
  and `normalize_cond` (e.g. `driftless.plan.sequence_df.SequenceDF`, or later a video world
  model with a reward head),
* a `TokenLayout` naming the fields of one environment step inside a token (e.g. action,
  reward, next observation) and how many steps are stacked into one token,
* a reward on planned tokens in data units, `reward_fn(tokens (b, T, D)) -> (b,)`,
* an environment with `step(actions (b, A)) -> (obs (b, O), reward (b,))`.

`Planner.plan` samples a plan of H tokens from the current observation (the clean prefix) and
optional memory (executed tokens held at the context level), following a scheduling matrix
(pyramid, autoregressive or full sequence) with reward guidance, averaged over K sampled futures
when `mctg_samples > 1` (Monte Carlo Tree Guidance).
`run_mpc` is model-predictive control: plan, execute the first `open_loop` tokens' actions,
observe what really happened, plan again.
`run_full_sequence` is the Diffuser-like baseline: plan once, then execute the plan's own
actions or track its states with a PD controller (`pd_action`), re-planning only when the
plan runs out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from driftless.diffusion.guidance import chain, inpaint_guide, reward_guide
from driftless.diffusion.scheduling import SCHEDULE_KINDS, sample_matrix, schedule_matrix, with_context

RewardFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TokenLayout:
    """What one token holds: `frame_stack` environment steps of `fields` [(name, size), ...]."""

    fields: tuple[tuple[str, int], ...]
    frame_stack: int = 1

    def __post_init__(self) -> None:
        if self.frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {self.frame_stack}")
        names = [n for n, _ in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"field names must be unique, got {names}")

    @property
    def step_dim(self) -> int:
        return sum(n for _, n in self.fields)

    @property
    def token_dim(self) -> int:
        return self.step_dim * self.frame_stack

    def field_slice(self, name: str) -> slice:
        """Where field `name` sits inside one step's features."""
        start = 0
        for n, size in self.fields:
            if n == name:
                return slice(start, start + size)
            start += size
        raise ValueError(f"no field {name!r} in the token layout; fields are {[n for n, _ in self.fields]}")

    def steps(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., T, frame_stack * step_dim) -> (..., T * frame_stack, step_dim)."""
        return tokens.reshape(tokens.shape[:-2] + (tokens.shape[-2] * self.frame_stack, self.step_dim))

    def get(self, tokens: torch.Tensor, name: str) -> torch.Tensor:
        """One field for every step: (..., T * frame_stack, size)."""
        return self.steps(tokens)[..., self.field_slice(name)]

    def assemble(self, **parts: torch.Tensor) -> torch.Tensor:
        """Fields (..., T * frame_stack, size) by name -> tokens (..., T, token_dim)."""
        missing = [n for n, _ in self.fields if n not in parts]
        if missing:
            raise ValueError(f"assemble needs every field; missing {missing}")
        steps = torch.cat([parts[n].float() for n, _ in self.fields], dim=-1)
        n = steps.shape[-2]
        if n % self.frame_stack:
            raise ValueError(f"{n} steps do not fill whole tokens of {self.frame_stack}")
        return steps.reshape(steps.shape[:-2] + (n // self.frame_stack, self.token_dim))


PRECISIONS = ("fp32", "bf16")


@dataclass
class PlannerConfig:
    horizon: int = 30  # tokens planned (cut to what is left of the episode)
    schedule: str = "pyramid"  # pyramid | autoregressive | full_sequence
    uncertainty: float = 1.0  # pyramid: rows by which each token lags the previous one
    sampling_steps: int | None = None  # DDIM steps per token (None: the model's default)
    guidance_scale: float = 1.0
    guidance_mode: str = "noisy"  # noisy (through the denoiser; needed for MCTG) | x0
    mctg_samples: int = 1  # futures averaged for the guidance gradient (1 = plain guidance)
    guidance_alpha_power: float = 1.0  # guidance weight sigma^2 / alpha^p (1: classifier guidance)
    open_loop: int = 1  # tokens executed before re-planning
    memory: int = 0  # executed tokens kept as clean context: 0 memoryless, -1 all
    context_level: int = 0
    # the noise level the model is told for clean tokens (finished plan tokens, context): models
    # trained with a level per token uniform in [0, K] have almost never seen level 0 itself
    clean_level: int = 0
    eta: float = 0.0
    # on a GPU: "fp32" samples in full precision, "bf16" under bf16 autocast (faster; the network's
    # outputs keep about 3 significant digits, a few hundredths of a maze cell); CPU: always fp32
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule must be one of {SCHEDULE_KINDS}, got {self.schedule!r}")
        if self.horizon < 1 or self.open_loop < 1 or self.mctg_samples < 1:
            raise ValueError("horizon, open_loop and mctg_samples must all be >= 1")
        if self.memory < -1:
            raise ValueError(f"memory must be -1 (all), 0 (none) or a number of tokens, got {self.memory}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


class SequenceModel(Protocol):
    diffusion: object

    def denoiser(self, cond): ...
    def normalize(self, x): ...
    def unnormalize(self, x): ...
    def normalize_cond(self, c): ...


class Planner:
    def __init__(self, model: SequenceModel, cfg: PlannerConfig | None = None):
        self.model = model
        self.cfg = cfg or PlannerConfig()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def matrix(self, horizon: int, n_context: int) -> torch.Tensor:
        d = self.model.diffusion
        steps = self.cfg.sampling_steps or d.cfg.sampling_steps
        m = schedule_matrix(self.cfg.schedule, horizon, steps, d.levels, self.cfg.uncertainty)
        return with_context(m, n_context, self.cfg.context_level) if n_context else m

    @torch.no_grad()
    def plan(
        self,
        cond: torch.Tensor,
        reward_fn: RewardFn | None = None,
        context: torch.Tensor | None = None,
        horizon: int | None = None,
        inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample (b, H, D) plan tokens in data units.

        cond (b, C): the observation the plan starts from (data units); context (b, n, D):
        executed tokens after cond (memory); reward_fn on tokens in data units;
        inpaint = (mask, values) over the plan's tokens in data units (Diffuser conditioning).
        """
        cfg, model = self.cfg, self.model
        horizon = horizon or cfg.horizon
        dev = self.device
        cond_n = model.normalize_cond(torch.as_tensor(cond, dtype=torch.float32, device=dev))
        b = cond_n.shape[0]
        n_ctx = 0 if context is None else context.shape[1]
        dim = model.cfg.token_dim
        x = torch.randn((b, horizon, dim), generator=generator, device="cpu").to(dev)
        if n_ctx:
            x = torch.cat([model.normalize(context.to(dev).float()), x], dim=1)
        denoise = model.denoiser(cond_n)
        if cfg.clean_level > 0:
            denoise_exact, floor = denoise, cfg.clean_level

            def denoise(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
                return denoise_exact(x, levels.clamp(min=floor))
        guide_r = None
        if reward_fn is not None and cfg.guidance_scale:
            def reward_n(xn: torch.Tensor) -> torch.Tensor:
                # MCTG hands over K copies of the b plans stacked sample-major: score each
                # copy with the task's per-plan reward (which may hold per-plan goals)
                return torch.cat([reward_fn(model.unnormalize(c[:, n_ctx:])) for c in xn.split(b)])

            guide_r = reward_guide(denoise, model.diffusion, reward_n, cfg.guidance_scale, cfg.mctg_samples,
                                   cfg.guidance_mode, generator, alpha_power=cfg.guidance_alpha_power)
        guide_i = None
        if inpaint is not None:
            mask, values = inpaint
            pad = torch.zeros((b, n_ctx, dim), dtype=torch.bool, device=dev)
            full_mask = torch.cat([pad, mask.to(dev).expand(b, horizon, dim)], dim=1)
            full_vals = torch.cat([pad.float(), model.normalize(values.to(dev).float().expand(b, horizon, dim))], 1)
            guide_i = inpaint_guide(full_mask, full_vals)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda" and cfg.precision == "bf16"):
            out = sample_matrix(denoise, model.diffusion, x, self.matrix(horizon, n_ctx), eta=cfg.eta,
                                generator=generator, guide=chain(guide_r, guide_i))
        return model.unnormalize(out[:, n_ctx:])


@dataclass
class EpisodeResult:
    returns: np.ndarray  # (b,)
    positions: np.ndarray  # (b, L + 1, O) observations visited
    plan_seconds: float  # wall time spent planning
    env_steps: int
    plans: list = field(default_factory=list)  # first plan of the episode, data units (b, H, D)

    @property
    def seconds_per_step(self) -> float:
        return self.plan_seconds / max(1, self.env_steps)


def run_mpc(
    env,
    obs0: np.ndarray,
    planner: Planner,
    layout: TokenLayout,
    episode_len: int,
    reward_fn: RewardFn | None,
    action_field: str = "action",
    obs_field: str = "obs",
    reward_field: str | None = "reward",
    generator: torch.Generator | None = None,
    progress=None,
) -> EpisodeResult:
    """Model-predictive control on a batch of environments: plan, execute `open_loop` tokens of
    the plan's own actions, condition the next plan on what was observed."""
    cfg, fs = planner.cfg, layout.frame_stack
    obs = np.asarray(obs0, dtype=np.float64)
    b = obs.shape[0]
    history_obs = [obs.copy()]  # observation before each executed token
    executed: list[torch.Tensor] = []  # executed tokens, data units (b, 1, D) each
    traj, returns, t, plan_s, plans = [obs.copy()], np.zeros(b), 0, 0.0, []
    while t < episode_len:
        left = math.ceil((episode_len - t) / fs)
        horizon = min(cfg.horizon, left)
        keep = len(executed) if cfg.memory == -1 else min(cfg.memory, len(executed))
        context = torch.cat(executed[len(executed) - keep:], dim=1) if keep else None
        cond = torch.as_tensor(history_obs[len(history_obs) - 1 - keep], dtype=torch.float32)
        tic = time.perf_counter()
        plan = planner.plan(cond, reward_fn, context=context, horizon=horizon, generator=generator)
        plan_s += time.perf_counter() - tic
        if not plans:
            plans.append(plan.cpu().numpy())
        actions = layout.get(plan, action_field).cpu().numpy()  # (b, H*fs, A)
        for j in range(min(cfg.open_loop, horizon)):
            parts: dict[str, list] = {n: [] for n, _ in layout.fields}
            for i in range(fs):
                if t >= episode_len:
                    break
                a = np.clip(actions[:, j * fs + i], -1.0, 1.0)
                obs, r = env.step(a)
                returns += r
                parts[action_field].append(a)
                parts[obs_field].append(obs)
                if reward_field:
                    parts[reward_field].append(r[:, None])
                traj.append(obs.copy())
                t += 1
            if len(parts[action_field]) < fs:
                break  # the episode ended inside this token
            executed.append(layout.assemble(**{
                n: torch.as_tensor(np.stack(v, axis=1), dtype=torch.float32) for n, v in parts.items()}))
            history_obs.append(obs.copy())
        if progress is not None:
            progress(t)
    return EpisodeResult(returns, np.stack(traj, axis=1), plan_s, t, plans)


def pd_action(position, velocity, target_position, target_velocity, kp: float = 1.0, kd: float = 1.0) -> np.ndarray:
    """Diffuser's maze2d tracker: a = kp (p* - p) + kd (v* - v), clipped to [-1, 1]."""
    a = kp * (np.asarray(target_position) - position) + kd * (np.asarray(target_velocity) - velocity)
    return np.clip(a, -1.0, 1.0)


def run_full_sequence(
    env,
    obs0: np.ndarray,
    planner: Planner,
    layout: TokenLayout,
    episode_len: int,
    horizon: int,
    executor: str = "actions",
    goal_state: np.ndarray | None = None,
    reward_fn: RewardFn | None = None,
    action_field: str = "action",
    obs_field: str = "obs",
    generator: torch.Generator | None = None,
) -> EpisodeResult:
    """Diffuser-like: plan `horizon` tokens at once (conditioned on the start and, if given, on
    `goal_state` (b, O) at the plan's last step by inpainting), then follow it open loop:
    `executor="actions"` replays the plan's own actions; `"pd"` tracks its states with
    `pd_action` (positions obs[:2], velocities obs[2:4]) and holds the last state after the
    plan ends. With own actions a fresh plan is drawn when the old one runs out."""
    if executor not in ("actions", "pd"):
        raise ValueError(f"executor must be 'actions' or 'pd', got {executor!r}")
    fs = layout.frame_stack
    obs = np.asarray(obs0, dtype=np.float64)
    b = obs.shape[0]
    sl = layout.field_slice(obs_field)
    traj, returns, plan_s, plans, t = [obs.copy()], np.zeros(b), 0.0, [], 0

    def make_plan(start: np.ndarray) -> np.ndarray:
        nonlocal plan_s
        inpaint = None
        if goal_state is not None:
            mask = torch.zeros(horizon, layout.token_dim, dtype=torch.bool)
            vals = torch.zeros(b, horizon, layout.token_dim)
            last = (fs - 1) * layout.step_dim  # last step of the last token
            mask[-1, last + sl.start: last + sl.stop] = True
            vals[:, -1, last + sl.start: last + sl.stop] = torch.as_tensor(goal_state, dtype=torch.float32)
            inpaint = (mask, vals)
        tic = time.perf_counter()
        p = planner.plan(torch.as_tensor(start, dtype=torch.float32), reward_fn, horizon=horizon,
                         inpaint=inpaint, generator=generator)
        plan_s += time.perf_counter() - tic
        plans.append(p.cpu().numpy())
        return p

    plan = make_plan(obs)
    k = 0
    while t < episode_len:
        n = horizon * fs
        if executor == "actions":
            if k >= n:
                plan, k = make_plan(obs), 0
            a = np.clip(layout.get(plan, action_field)[:, k].cpu().numpy(), -1.0, 1.0)
        else:
            states = layout.get(plan, obs_field).cpu().numpy()  # (b, n, O): state after step i
            target = states[:, min(k, n - 1)].copy()
            if k >= n:
                target[:, 2:4] = 0.0
            a = pd_action(obs[:, :2], obs[:, 2:4], target[:, :2], target[:, 2:4])
        obs, r = env.step(a)
        returns += r
        traj.append(obs.copy())
        t, k = t + 1, k + 1
    return EpisodeResult(returns, np.stack(traj, axis=1), plan_s, t, plans[:1])
