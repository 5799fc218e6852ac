"""The cross-shaped 2-D trajectory dataset of Diffusion Forcing's compositional-generation
experiment, and a trivial point environment to execute plans in.

Every trajectory runs in a straight line from one corner of the square [-1, 1]^2 through the
centre to the opposite corner, so the data hold the two diagonals of an X and nothing else.
A model with memory of where it came from should reproduce the crosses; a memoryless MPC
planner, conditioned only on the current position, is free at the centre to continue along
the other diagonal and so composes sub-trajectories into V shapes that the data never held.

Token per step: [dx, dy, x', y'] (the move, then the position after it), conditioned on the
position before the first move.

The experiment (`run_cross`, `driftless plan cross`; Diffusion Forcing, Sec. on compositional
generation): one tiny causal Diffusion-Forcing model is trained on cross trajectories, then
rolled out from each corner two ways with the generic MPC loop (no reward, no guidance):
* full memory: every executed token stays in the context and the prefix is the start, the
  plan covers the rest of the trajectory;
* memoryless: the prefix is the current position, no context; a plan of half a trajectory is
  executed whole, then the next is drawn from wherever that left the point (at the centre, any
  of the four arms is a continuation the data support).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from driftless.checkpoint import atomic_write_json
from driftless.plan import sequence_df as sdf
from driftless.plan.planner import Planner, PlannerConfig, TokenLayout, run_mpc
from driftless.plan.train import FitConfig, fit

CORNERS = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])  # counter-clockwise
CROSS_FIELDS = (("action", 2), ("obs", 2))
LENGTH = 16  # moves per trajectory


def make_cross(n: int, length: int = 16, noise: float = 0.01, seed: int = 0, hold: int = 0) -> dict[str, np.ndarray]:
    """n trajectories of `length` moves from a random corner to the opposite one, then `hold`
    moves of zero (the point rests at the far corner; lets training windows start anywhere,
    the centre included).

    Returns starts (n, 2), positions (n, length + hold, 2) after each move, moves
    (n, length + hold, 2), corners (n,) index of the starting corner; deterministic by seed.
    """
    if n < 1 or length < 2 or hold < 0:
        raise ValueError(f"make_cross needs n >= 1, length >= 2, hold >= 0; got {n}, {length}, {hold}")
    rng = np.random.default_rng(seed)
    corner = rng.integers(0, 4, size=n)
    start, end = CORNERS[corner], CORNERS[(corner + 2) % 4]
    frac = np.minimum(np.arange(length + hold + 1) / length, 1.0)[None, :, None]  # (1, L+H+1, 1)
    path = start[:, None] + frac * (end - start)[:, None]  # (n, L+H+1, 2)
    path = path + rng.normal(0, noise, size=path.shape)
    path[:, 0] = start
    return {"starts": path[:, 0].astype(np.float32), "positions": path[:, 1:].astype(np.float32),
            "moves": np.diff(path, axis=1).astype(np.float32), "corners": corner}


class CrossTokens:
    """Training windows over cross trajectories: any start offset, `tokens` steps long.

    sample(batch, generator) -> (x0 (b, tokens, 4), cond (b, 2)) in data units.
    """

    def __init__(self, data: dict[str, np.ndarray], tokens: int):
        L = data["positions"].shape[1]
        if not 1 <= tokens <= L:
            raise ValueError(f"tokens must lie in [1, {L}], got {tokens}")
        self.tokens = tokens
        prev = np.concatenate([data["starts"][:, None], data["positions"][:, :-1]], axis=1)  # (n, L, 2)
        self.prev = torch.from_numpy(prev)
        self.feats = torch.from_numpy(np.concatenate([data["moves"], data["positions"]], axis=-1))  # (n, L, 4)

    def stats(self) -> dict[str, list[float]]:
        f = self.feats.reshape(-1, 4)
        return {"token_mean": f.mean(0).tolist(), "token_std": f.std(0).clamp(min=1e-3).tolist(),
                "cond_mean": self.prev.reshape(-1, 2).mean(0).tolist(),
                "cond_std": self.prev.reshape(-1, 2).std(0).clamp(min=1e-3).tolist()}

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n, L = self.feats.shape[:2]
        gdev = generator.device if generator is not None else "cpu"
        traj = torch.randint(0, n, (batch,), generator=generator, device=gdev).cpu()
        off = torch.randint(0, L - self.tokens + 1, (batch,), generator=generator, device=gdev).cpu()
        idx = off[:, None] + torch.arange(self.tokens)[None]  # (b, tokens)
        return self.feats[traj[:, None], idx], self.prev[traj, off]


class PointEnv:
    """Executes planned moves exactly: position += move. obs (b, 2), reward always 0."""

    def __init__(self, starts: np.ndarray):
        self.pos = np.asarray(starts, dtype=np.float64).copy()

    def step(self, actions) -> tuple[np.ndarray, np.ndarray]:
        self.pos = self.pos + np.asarray(actions, dtype=np.float64)
        return self.pos.copy(), np.zeros(len(self.pos))


def classify(paths: np.ndarray, starts: np.ndarray, radius: float = 0.35) -> dict[str, float]:
    """Fractions of executed paths (b, L+1, 2) ending near the opposite corner ("cross"), an
    adjacent corner ("V": a composition never seen in the data), the start corner ("back")
    or elsewhere ("other")."""
    ends = paths[:, -1]
    start_idx = np.argmin(((starts[:, None] - CORNERS[None]) ** 2).sum(-1), axis=1)
    d = np.linalg.norm(ends[:, None] - CORNERS[None], axis=-1)  # (b, 4)
    near = d.min(1) < radius
    end_idx = d.argmin(1)
    rel = (end_idx - start_idx) % 4
    out = {"cross": np.mean(near & (rel == 2)), "V": np.mean(near & ((rel == 1) | (rel == 3))),
           "back": np.mean(near & (rel == 0)), "other": np.mean(~near)}
    return {k: float(v) for k, v in out.items()}


# ---- the experiment ------------------------------------------------------------------------------
def train_cross_model(steps: int, seed: int = 0, device: str = "cpu", progress: bool = False) -> sdf.SequenceDF:
    data = make_cross(2048, LENGTH, seed=seed, hold=LENGTH // 2)  # windows start anywhere up to the centre
    windows = CrossTokens(data, LENGTH)
    cfg = copy.deepcopy(sdf.PRESETS["debug"])
    cfg.token_dim, cfg.cond_dim, cfg.width, cfg.depth, cfg.heads = 4, 2, 96, 3, 4
    cfg.max_tokens = LENGTH
    cfg.meta = {"dataset": "cross", "length": LENGTH}
    model = sdf.SequenceDF(cfg).to(device)
    model.set_stats(**windows.stats())

    def sample(b, g):
        x0, c = windows.sample(b, g)
        return x0.to(device), c.to(device)

    ema, _ = fit(model, sample, FitConfig(steps=steps, batch=128, lr=1e-3, warmup=50, seed=seed), progress=progress)
    return ema


def rollout(model, episodes: int, memory: bool, horizon: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paths (episodes, LENGTH + 1, 2) from corners taken in turn."""
    starts = CORNERS[np.arange(episodes) % 4]
    env = PointEnv(starts)
    # memory: re-plan after every step with the whole past as context; memoryless: plan
    # `horizon` steps from the current position alone and execute all of them
    cfg = PlannerConfig(horizon=LENGTH if memory else horizon, schedule="pyramid", guidance_scale=0.0,
                        memory=-1 if memory else 0, open_loop=1 if memory else horizon, sampling_steps=10)
    gen = torch.Generator().manual_seed(seed)
    res = run_mpc(env, starts, Planner(model, cfg), TokenLayout(CROSS_FIELDS, 1), LENGTH, None,
                  reward_field=None, generator=gen)
    return res.positions, starts


def plot_cross(paths: dict[str, np.ndarray], fractions: dict[str, dict], path, count: int = 24) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(paths), figsize=(3.2 * len(paths), 3.3), dpi=90)
    for ax, (name, p) in zip(np.atleast_1d(axes), paths.items()):
        for k in range(min(count, len(p))):
            ax.plot(p[k, :, 0], p[k, :, 1], lw=1, alpha=0.7, color=plt.get_cmap("tab10")(k % 4))
        ax.plot(CORNERS[:, 0], CORNERS[:, 1], "ks", ms=4)
        f = fractions[name]
        ax.set_title(f"{name}\ncross {f['cross']:.0%}  V {f['V']:.0%}  back {f['back']:.0%}", fontsize=9)
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_cross(out, steps: int = 1500, episodes: int = 64, seed: int = 0, device: str = "cpu",
              memoryless_horizon: int = LENGTH // 2) -> dict:
    model = train_cross_model(steps, seed, device)
    data = make_cross(episodes, LENGTH, seed=seed + 1)
    paths, fractions = {"data": np.concatenate([data["starts"][:, None], data["positions"]], 1)}, {}
    fractions["data"] = classify(paths["data"], data["starts"])
    for name, memory in (("full memory", True), ("memoryless MPC", False)):
        p, starts = rollout(model, episodes, memory, memoryless_horizon, seed)
        paths[name], fractions[name] = p, classify(p, starts)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_cross(paths, fractions, out)
    summary = {"train_steps": steps, "episodes": episodes, "memoryless_horizon": memoryless_horizon,
               "fractions": fractions, "plot": str(out)}
    atomic_write_json(out.with_suffix(".json"), summary)
    return summary


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run_cross("cross.png")))
