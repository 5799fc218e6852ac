"""Maze2D evaluation: D4RL-normalised return of planners and reference policies.

normalised = 100 * (return - random) / (expert - random), with D4RL's published reference
returns for maze2d-*-v1 (d4rl/infos.py: REF_MIN_SCORE / REF_MAX_SCORE). Episodes run in
batches of environments stepped together; the planner plans for the whole batch at once.

Methods:
* `df`: Diffusion-Forcing MPC with goal guidance on every planned step, MCTG with K samples;
* `df-plain`: the same without MCTG (K = 1);
* `diffuser-actions` / `diffuser-pd`: a full-sequence (Diffuser-like) plan from the start to
  the goal (inpainted at the plan's last step), executed with its own actions or tracked by
  Diffuser's PD controller;
* `controller`: D4RL's waypoint controller (the data policy, without its noise);
* `random`: uniform random actions.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from driftless.plan.maze import MazeBatch, WaypointController, get_maze
from driftless.plan.planner import Planner, PlannerConfig, TokenLayout, run_full_sequence, run_mpc

# D4RL's reference returns (random, expert) for the sparse-reward maze2d v1 tasks (v0 for open)
D4RL_REF = {
    "open": (0.01, 20.66),
    "umaze": (23.85, 161.86),
    "medium": (13.13, 277.39),
    "large": (6.7, 273.99),
}
# Diffuser's maze2d plan horizons in environment steps
DIFFUSER_HORIZON = {"open": 64, "umaze": 128, "medium": 256, "large": 384}
METHODS = ("df", "df-plain", "diffuser-actions", "diffuser-pd", "controller", "random")
MAZE_LAYOUT_FIELDS = (("action", 2), ("reward", 1), ("obs", 4))


def maze_layout(frame_stack: int) -> TokenLayout:
    return TokenLayout(MAZE_LAYOUT_FIELDS, frame_stack)


def normalized_score(returns, maze: str) -> np.ndarray:
    if maze not in D4RL_REF:
        raise ValueError(f"no D4RL reference returns for maze {maze!r}; known: {sorted(D4RL_REF)}")
    lo, hi = D4RL_REF[maze]
    return 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)


def mean_se(x) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n))."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_se needs at least one value")
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0
    return float(x.mean()), se


MAZE_DT = 0.01  # the simulator's timestep: a step moves the ball by MAZE_DT x its new velocity
MAX_STEP = 5 * MAZE_DT * math.sqrt(2)  # the longest step it allows (velocity clipped to 5 per axis)


def goal_reward(layout: TokenLayout, goals: torch.Tensor, weight: float = 1.0):
    """Reward for goal guidance: minus the distance to the goal summed over *every* planned
    step, so a plan is better the sooner it reaches the goal and the longer it stays."""
    goals = goals.float()

    def reward(tokens: torch.Tensor) -> torch.Tensor:
        pos = layout.get(tokens, "obs")[..., :2]  # (b, T*fs, 2)
        return -weight * (pos - goals.to(pos.device)[:, None]).norm(dim=-1).sum(-1)

    return reward


@dataclass
class EvalResult:
    maze: str
    method: str
    multi_task: bool
    returns: np.ndarray
    seconds_per_step: float
    positions: np.ndarray | None = None
    goals: np.ndarray | None = None

    @property
    def normalized(self) -> np.ndarray:
        return normalized_score(self.returns, self.maze)

    def summary(self) -> dict:
        m, se = mean_se(self.normalized)
        r, rse = mean_se(self.returns)
        return {"maze": self.maze, "method": self.method, "multi_task": self.multi_task,
                "episodes": int(self.returns.size), "normalized_mean": round(m, 2), "normalized_se": round(se, 2),
                "return_mean": round(r, 2), "return_se": round(rse, 2),
                "plan_seconds_per_step": round(self.seconds_per_step, 5)}


def _policy_episode(env: MazeBatch, obs, episode_len: int, kind: str, rng: np.random.Generator):
    ctrls = [WaypointController(env.spec, np.random.default_rng(rng.integers(1 << 31))) for _ in range(len(env))]
    returns, traj = np.zeros(len(env)), [obs.copy()]
    for _ in range(episode_len):
        if kind == "random":
            a = rng.uniform(-1, 1, size=(len(env), 2))
        else:
            a = np.stack([c.act(o[:2], o[2:], g)[0] for c, o, g in zip(ctrls, obs, env.goals)])
        obs, r = env.step(a)
        returns += r
        traj.append(obs.copy())
    return returns, np.stack(traj, axis=1)


def evaluate(
    maze: str,
    method: str,
    episodes: int,
    model=None,
    planner_cfg: PlannerConfig | None = None,
    multi_task: bool = False,
    batch: int = 50,
    seed: int = 0,
    diffuser_horizon: int | None = None,
    keep_positions: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Run `episodes` episodes of `method` on `maze` (episode lengths 150/300/600/800)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if episodes < 1 or batch < 1:
        raise ValueError(f"episodes and batch must be >= 1, got {episodes}, {batch}")
    needs_model = method not in ("controller", "random")
    if needs_model and model is None:
        raise ValueError(f"method {method!r} needs a trained sequence model (--checkpoint)")
    spec = get_maze(maze)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    fs = model.cfg.meta.get("frame_stack", 1) if needs_model else 1
    layout = maze_layout(fs)
    returns, positions, goal_list, plan_s, steps = [], [], [], 0.0, 0
    bar = tqdm(total=episodes, desc=f"{method} {maze}{' multi' if multi_task else ''}", disable=not progress)
    done = 0
    while done < episodes:
        n = min(batch, episodes - done)
        env = MazeBatch(maze, n, seed=seed * 7919 + done)
        obs = env.reset(multi_task=multi_task)
        goals = env.goals
        if not needs_model:
            tic = time.perf_counter()
            r, traj = _policy_episode(env, obs, spec.episode_len, method, rng)
            plan_s += time.perf_counter() - tic
            steps += spec.episode_len
        elif method.startswith("df"):
            cfg = dataclasses.replace(planner_cfg or PlannerConfig())
            if method == "df-plain":
                cfg.mctg_samples = 1
            reward = goal_reward(layout, torch.as_tensor(goals))
            res = run_mpc(env, obs, Planner(model, cfg), layout, spec.episode_len, reward, generator=gen)
            r, traj, plan_s, steps = res.returns, res.positions, plan_s + res.plan_seconds, steps + res.env_steps
        else:
            cfg = dataclasses.replace(planner_cfg or PlannerConfig(), schedule="full_sequence", mctg_samples=1,
                                      guidance_scale=0.0)
            h_steps = diffuser_horizon or model.cfg.meta.get("tokens", 1) * fs
            horizon = max(1, math.ceil(h_steps / fs))
            goal_state = np.concatenate([goals, np.zeros((n, 2))], axis=1)
            res = run_full_sequence(env, obs, Planner(model, cfg), layout, spec.episode_len, horizon,
                                    executor=method.split("-")[1], goal_state=goal_state, generator=gen)
            r, traj, plan_s, steps = res.returns, res.positions, plan_s + res.plan_seconds, steps + res.env_steps
        returns.append(r)
        if keep_positions:
            positions.append(traj)
            goal_list.append(goals)
        done += n
        bar.update(n)
    bar.close()
    return EvalResult(maze, method, multi_task, np.concatenate(returns), plan_s / max(1, steps),
                      np.concatenate(positions) if keep_positions else None,
                      np.concatenate(goal_list) if keep_positions else None)


def _draw_maze(ax, spec) -> None:
    """Walls as dark squares, the axes fitted to the maze, no ticks."""
    import matplotlib.pyplot as plt

    rows, cols = spec.shape
    for (i, j), wall in np.ndenumerate(spec.walls):
        if wall:
            x, y = spec.cell_to_xy((i, j))
            ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, color="0.25"))
    ax.set_xlim(-cols / 2, cols / 2)
    ax.set_ylim(-rows / 2, rows / 2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_rollouts(result: EvalResult, path, count: int = 8, title: str | None = None) -> None:
    """Draw the maze, `count` executed trajectories, their starts and goals, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.positions is None:
        raise ValueError("plot_rollouts needs an EvalResult made with keep_positions=True")
    spec = get_maze(result.maze)
    rows, cols = spec.shape
    fig, ax = plt.subplots(figsize=(3.2 * cols / max(rows, cols) + 0.6, 3.2 * rows / max(rows, cols) + 0.4), dpi=90)
    _draw_maze(ax, spec)
    cmap = plt.get_cmap("tab10")
    for k in range(min(count, len(result.positions))):
        p = result.positions[k]
        ax.plot(p[:, 0], p[:, 1], color=cmap(k % 10), lw=1.2)
        ax.plot(p[0, 0], p[0, 1], "o", color=cmap(k % 10), ms=4)
        ax.plot(result.goals[k, 0], result.goals[k, 1], "*", color=cmap(k % 10), ms=9, mec="k", mew=0.5)
    ax.set_title(title or f"{result.method} on {result.maze}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plans_in_walls(maze: str, positions: np.ndarray) -> np.ndarray:
    """For planned positions (b, steps, 2), whether each plan enters a wall cell (b,) bool: a
    plan the maze does not allow (the ball cannot pass through a wall)."""
    spec = get_maze(maze)
    walls = spec.walls
    return np.array([any(walls[spec.xy_to_cell(p)] for p in plan) for plan in positions], dtype=bool)


def impossible_steps(positions: np.ndarray) -> np.ndarray:
    """For planned positions (b, steps, 2), which steps move farther than the simulator allows
    (b, steps - 1) bool: a plan that teleports (seen at the seams between tokens)."""
    return np.linalg.norm(np.diff(positions, axis=1), axis=-1) > MAX_STEP


@torch.no_grad()
def position_precision(model, data: dict, windows: int = 256, levels=(0, 67, 333, 1000), seed: int = 0,
                       clean_level: int = 0) -> list[dict]:
    """How exactly the model places a token, on random windows of a maze dataset `data`: the
    tokens before the middle one clean, the middle one at each noise level, the later ones pure
    noise (as when planning; the clean ones told `clean_level`, as the planner's setting); the
    error of the middle token's predicted positions in data units
    (median and 90th percentile over windows and steps) and of its seam (its first predicted
    position against the real one). A plan's steps are at most MAX_STEP long: errors near it
    make plans jump between tokens."""
    from driftless.plan.maze import MazeTokens

    fs = model.cfg.meta.get("frame_stack", 1)
    tokens = model.cfg.meta.get("tokens", model.cfg.max_tokens)
    device = next(model.parameters()).device
    x0, cond = MazeTokens(data, tokens, fs, device=device).sample(windows, torch.Generator().manual_seed(seed))
    layout = maze_layout(fs)
    xn, cn = model.normalize(x0), model.normalize_cond(cond)
    j, k_max = tokens // 2, model.diffusion.levels
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    out = []
    for k in levels:
        lv = torch.zeros(windows, tokens, dtype=torch.long, device=device)
        lv[:, j], lv[:, j + 1:] = int(k), k_max
        xk = model.diffusion.q_sample(xn, lv, torch.randn(xn.shape, generator=gen, device=device))
        told = lv.clamp(min=clean_level)  # what the network is told (the planner's clean_level)
        x0_hat, _ = model.diffusion.predict(model(xk, told, cn), xk, told)
        pred = layout.get(model.unnormalize(x0_hat)[:, j:j + 1], "obs")[..., :2]  # (b, fs, 2)
        true = layout.get(x0[:, j:j + 1], "obs")[..., :2]
        err = (pred - true).norm(dim=-1).float().cpu()  # (b, fs)
        out.append({"level": int(k), "clean_level": clean_level, "position_error_median": round(float(err.median()), 4),
                    "position_error_p90": round(float(err.quantile(0.9)), 4),
                    "seam_error_median": round(float(err[:, 0].median()), 4)})
    return out


def show_plans(maze: str, model, scales: list[float], planner_cfg: PlannerConfig, path, starts=None,
               seed: int = 0) -> list[dict]:
    """One plan from each start (default: the centre of every open cell but the goal's) towards
    the maze's goal, for each guidance scale; a PNG with one panel per scale and, per scale, how
    many plans pass through a wall, how many of their steps are longer than the simulator allows
    (and which share of those enter a token: the seams), and how near the goal they end. What `plan maze` would
    execute first, made visible: the prior keeps plans on routes, guidance pulls them to the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = get_maze(maze)
    goal = spec.cell_to_xy(spec.goal_cell)
    if starts is None:
        starts = np.stack([spec.cell_to_xy(c) for c in spec.open_cells if c != spec.goal_cell])
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    bad = [tuple(p) for p in starts if spec.walls[spec.xy_to_cell(p)]]
    if bad:
        raise ValueError(f"starts inside walls of {maze}: {bad}; give open positions (x:y, centred coordinates)")
    obs = np.concatenate([starts, np.zeros_like(starts)], axis=1)  # at rest
    goals = np.repeat(goal[None], len(starts), axis=0)
    layout = maze_layout(model.cfg.meta.get("frame_stack", 1))
    rows, cols = spec.shape
    fig, axes = plt.subplots(1, len(scales), figsize=(3.0 * len(scales) * cols / max(rows, cols) + 0.4,
                                                      3.0 * rows / max(rows, cols) + 0.5), dpi=90, squeeze=False)
    out = []
    for ax, g in zip(axes[0], scales):
        cfg = dataclasses.replace(planner_cfg, guidance_scale=float(g))
        reward = goal_reward(layout, torch.as_tensor(goals)) if g > 0 else None
        plan = Planner(model, cfg).plan(torch.as_tensor(obs, dtype=torch.float32), reward, horizon=cfg.horizon,
                                        generator=torch.Generator().manual_seed(seed))
        pos = layout.get(plan, "obs")[..., :2].float().cpu().numpy()  # (b, steps, 2)
        through = plans_in_walls(maze, pos)
        jumps = impossible_steps(np.concatenate([starts[:, None], pos], axis=1))  # (b, steps): into step i
        seam = np.arange(jumps.shape[1]) % layout.frame_stack == 0  # the first step of each token
        end = np.linalg.norm(pos[:, -1] - goal, axis=-1)
        _draw_maze(ax, spec)
        cmap = plt.get_cmap("tab20")
        for k in range(len(pos)):
            ax.plot(np.r_[starts[k, 0], pos[k, :, 0]], np.r_[starts[k, 1], pos[k, :, 1]], lw=0.8,
                    color=cmap(k % 20), alpha=0.35 if through[k] else 0.9, ls="--" if through[k] else "-")
        ax.plot(starts[:, 0], starts[:, 1], "k.", ms=4)
        ax.plot(goal[0], goal[1], "*", color="gold", ms=11, mec="k", mew=0.6)
        ax.set_title(f"guidance {g:g}: {through.mean():.0%} through walls", fontsize=8)
        out.append({"guidance": float(g), "plans": len(pos), "through_walls": round(float(through.mean()), 3),
                    "impossible_steps": round(float(jumps.mean()), 4),
                    "impossible_on_seams": round(float(jumps[:, seam].sum() / max(1, jumps.sum())), 3),
                    "end_distance_mean": round(float(end.mean()), 3),
                    "ends_at_goal": round(float((end < 0.5).mean()), 3)})
    fig.suptitle(f"first plans on {maze} (dashed: through a wall)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return out


# ---- settings chosen on validation seeds ---------------------------------------------------------
PLANNER_SETTINGS = "planner.json"  # beside a sequence model's weights: its tuned planner settings
EVAL_SEED = 0  # the evaluation seed of docs/benchmarks.md section 8; tuning must use others


def choose_guidance(scores: list[dict]) -> dict:
    """The tuning rule: the guidance scale with the highest mean normalised return on the
    validation episodes; among scales within 1 % of it, the smallest (the gentlest push
    off the model's prior that plays as well). `scores`: [{"guidance", "normalized_mean", ...}]."""
    if not scores:
        raise ValueError("choose_guidance needs at least one scored guidance scale")
    best = max(s["normalized_mean"] for s in scores)
    tol = 0.01 * abs(best)
    return min((s for s in scores if s["normalized_mean"] >= best - tol), key=lambda s: s["guidance"])


def _tune_cell(maze: str, checkpoint: str, device: str, cfg: dict, method: str, episodes: int, batch: int,
               seed: int, multi_task: bool, progress: bool) -> dict:
    """One guidance scale on the validation episodes (a worker process's job)."""
    from driftless.models.registry import load_model

    torch.set_num_threads(1)
    model = load_model(checkpoint, device, kind="sequence_df")
    res = evaluate(maze, method, episodes, model=model, planner_cfg=PlannerConfig(**cfg), multi_task=multi_task,
                   batch=batch, seed=seed, progress=progress)
    return {"guidance": cfg["guidance_scale"], **res.summary()}


def tune_guidance(maze: str, checkpoint: str, scales: list[float], planner_cfg: PlannerConfig, method: str = "df",
                  episodes: int = 50, batch: int = 50, seed: int = 1, multi_task: bool = False, device: str = "cpu",
                  workers: int = 1, progress: bool = True) -> dict:
    """Score each goal-guidance scale on `episodes` validation episodes (`seed` != the evaluation
    seed 0) and choose one with `choose_guidance`. `workers` > 1 scores the scales in parallel
    processes (each loads the model; on a GPU they share it). Returns the settings record
    `save_planner_settings` writes: the chosen scale, how it was chosen, every score."""
    if seed == EVAL_SEED:
        raise ValueError(f"seed {EVAL_SEED} is the evaluation seed; tune on another (e.g. --seed 1), "
                         "then evaluate once on seed 0")
    if method not in ("df", "df-plain"):
        raise ValueError(f"guidance is tuned for the Diffusion-Forcing planners (df, df-plain), not {method!r}")
    if not scales or any(s < 0 for s in scales):
        raise ValueError(f"--guidance needs one or more scales >= 0, got {scales}")
    base = dataclasses.asdict(planner_cfg)
    if method == "df-plain":
        base["mctg_samples"] = 1
    jobs = [(maze, str(checkpoint), device, {**base, "guidance_scale": float(g)}, method, episodes, batch, seed,
             multi_task, progress and workers == 1) for g in scales]
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_tune_cell, *job) for job in jobs]
            scores = [f.result() for f in tqdm(futures, desc=f"tune {maze}", disable=not progress)]
    else:
        scores = [_tune_cell(*job) for job in jobs]
    chosen = choose_guidance(scores)
    return {"guidance": chosen["guidance"], "method": method, "mctg": base["mctg_samples"],
            "sampling_steps": base["sampling_steps"], "horizon_tokens": base["horizon"],
            "clean_level": base["clean_level"], "precision": base["precision"],
            "chosen_by": {"rule": "highest mean normalised return; within 1 % of it, the smallest scale",
                          "seed": seed, "episodes": episodes, "maze": maze},
            "scores": [{k: s[k] for k in ("guidance", "normalized_mean", "normalized_se", "episodes")}
                       for s in scores]}


def save_planner_settings(checkpoint: str, record: dict, multi_task: bool = False) -> Path:
    """Store a tuning record in the checkpoint folder's planner.json (atomic; the other task's
    record is kept): `plan maze` takes its guidance scale from there unless --guidance is given."""
    from driftless.checkpoint import atomic_write_json

    path = Path(checkpoint) / PLANNER_SETTINGS
    settings = load_planner_settings(checkpoint)
    settings["multi_task" if multi_task else "single_task"] = record
    atomic_write_json(path, settings)
    return path


def load_planner_settings(checkpoint: str | None) -> dict:
    """The checkpoint's planner.json ({} when there is none); a broken file is an error naming it."""
    import json

    if not checkpoint:
        return {}
    path = Path(checkpoint) / PLANNER_SETTINGS
    if not path.exists():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable planner settings ({e}); delete it or run `driftless plan tune` again")
    if not isinstance(settings, dict):
        # a ValueError like the unreadable case: the file's content is wrong, not a caller's type
        raise ValueError(f"{path}: expected a JSON object of planner settings, "  # noqa: TRY004
                         f"got {type(settings).__name__}")
    return settings
