"""Maze2D the D4RL way, on Gymnasium-Robotics' PointMaze (MuJoCo).

* `MAZES`: D4RL's maze2d layouts (U-maze, medium, large, plus the open room), written as
  D4RL's `maze_model` strings with the single-task goal cell `G`, and their episode lengths.
* `MazeEnv`: PointMaze's point mass (same MJCF options as D4RL: timestep 0.01, frame skip 1,
  Euler, gear 100, damping 1, velocity clipped to [-5, 5]) with D4RL's task semantics on top:
  start in a random open cell + U(-0.1, 0.1), initial velocity N(0, 0.1^2), sparse reward 1
  within 0.5 of the goal, goal = the `G` cell (single task) or a random open cell +
  U(-0.1, 0.1) (multi task). Coordinates are PointMaze's: cell (row, col) has its centre at
  x = col + 0.5 - cols / 2, y = rows / 2 - row - 0.5 (a rigid transform of D4RL's frame).
* `WaypointController`: D4RL's data-collection controller: shortest path over the grid of
  cells, noisy waypoints at the path's cell centres, PD control p = 10, d = -1.
* `generate_dataset`: one continuous stream of `steps` transitions, choosing a new random
  goal whenever the controller solves the current one or `episode_len` steps pass (as
  D4RL's generate_maze2d_datasets.py, with Gaussian action noise 0.5). Deterministic by seed.
* `save_dataset` / `load_dataset`: plain .npz arrays (no pickles).
* `MazeTokens`: training windows of Diffusion-Forcing tokens x_t = [a_t, r_t, o_{t+1}],
  `frame_stack` environment steps per token, conditioned on the first observation.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from driftless.checkpoint import atomic_write_bytes


@dataclass(frozen=True)
class MazeSpec:
    name: str
    layout: tuple[str, ...]  # rows of '#' wall, 'O' open, 'G' open and the single-task goal
    episode_len: int
    d4rl_id: str | None = None

    def __post_init__(self) -> None:
        widths = {len(r) for r in self.layout}
        if len(widths) != 1:
            raise ValueError(f"maze {self.name!r}: every layout row must have the same width")
        if sum(r.count("G") for r in self.layout) != 1:
            raise ValueError(f"maze {self.name!r}: the layout needs exactly one goal cell 'G'")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.layout), len(self.layout[0])

    @property
    def walls(self) -> np.ndarray:
        return np.array([[c == "#" for c in row] for row in self.layout], dtype=bool)

    @property
    def open_cells(self) -> list[tuple[int, int]]:
        """Open cells including the goal cell, sorted (D4RL's empty_and_goal_locations)."""
        return [(i, j) for i, row in enumerate(self.layout) for j, c in enumerate(row) if c != "#"]

    @property
    def goal_cell(self) -> tuple[int, int]:
        return next((i, j) for i, row in enumerate(self.layout) for j, c in enumerate(row) if c == "G")

    def cell_to_xy(self, cell) -> np.ndarray:
        rows, cols = self.shape
        i, j = cell
        return np.array([j + 0.5 - cols / 2, rows / 2 - i - 0.5], dtype=np.float64)

    def xy_to_cell(self, xy) -> tuple[int, int]:
        rows, cols = self.shape
        i = int(np.floor(rows / 2 - xy[1]))
        j = int(np.floor(xy[0] + cols / 2))
        return min(max(i, 0), rows - 1), min(max(j, 0), cols - 1)

    def pointmaze_map(self) -> list[list[int]]:
        return [[1 if c == "#" else 0 for c in row] for row in self.layout]


MAZES: dict[str, MazeSpec] = {
    "open": MazeSpec("open", ("#######", "#OOOOO#", "#OOGOO#", "#OOOOO#", "#######"), 150, "maze2d-open-v0"),
    "umaze": MazeSpec("umaze", ("#####", "#GOO#", "###O#", "#OOO#", "#####"), 300, "maze2d-umaze-v1"),
    "medium": MazeSpec("medium", (
        "########", "#OO##OO#", "#OO#OOO#", "##OOO###", "#OO#OOO#", "#O#OO#O#", "#OOO#OG#", "########",
    ), 600, "maze2d-medium-v1"),
    "large": MazeSpec("large", (
        "############", "#OOOO#OOOOO#", "#O##O#O#O#O#", "#OOOOOO#OOO#", "#O####O###O#",
        "#OO#O#OOOOO#", "##O#O#O#O###", "#OO#OOO#OGO#", "############",
    ), 800, "maze2d-large-v1"),
}

GOAL_RADIUS = 0.5  # D4RL's sparse reward radius (PointMaze's own is 0.45)


def get_maze(name: str) -> MazeSpec:
    if name not in MAZES:
        raise ValueError(f"unknown maze {name!r}; expected one of {sorted(MAZES)}")
    return MAZES[name]


def _point_maze_env(spec: MazeSpec):
    try:
        from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ImportError("the maze environment needs Gymnasium-Robotics and MuJoCo: "
                          "pip install 'driftless[maze]'") from e
    return PointMazeEnv(maze_map=spec.pointmaze_map(), continuing_task=True, reset_target=False)


class MazeEnv:
    """One point mass in one maze, D4RL maze2d semantics on PointMaze physics.

    obs = [x, y, vx, vy] (float64); action in [-1, 1]^2; reward 1 within 0.5 of the goal.
    """

    obs_dim = 4
    act_dim = 2

    def __init__(self, maze: str | MazeSpec, seed: int = 0):
        self.spec = get_maze(maze) if isinstance(maze, str) else maze
        self._env = _point_maze_env(self.spec)
        self._env.reset(seed=seed)  # builds MuJoCo data; the task state is ours, set below
        self._point = self._env.point_env
        self.rng = np.random.default_rng(seed)
        self.goal = self.spec.cell_to_xy(self.spec.goal_cell)
        self.obs = self._obs()

    def _obs(self) -> np.ndarray:
        d = self._point.data
        return np.concatenate([d.qpos[:2], d.qvel[:2]]).astype(np.float64)

    def random_goal(self) -> np.ndarray:
        cells = self.spec.open_cells
        cell = cells[self.rng.integers(len(cells))]
        return self.spec.cell_to_xy(cell) + self.rng.uniform(-0.1, 0.1, size=2)

    def reset(self, multi_task: bool = False, goal=None, start=None) -> np.ndarray:
        """Start in a random open cell (or at `start` xy); goal: `goal` xy, else the G cell
        (single task) or a random open cell (multi task)."""
        if start is None:
            cells = self.spec.open_cells
            start = self.spec.cell_to_xy(cells[self.rng.integers(len(cells))]) + self.rng.uniform(-0.1, 0.1, size=2)
        qvel = self.rng.normal(0.0, 0.1, size=2)
        self._point.set_state(np.asarray(start, dtype=np.float64), qvel)
        if goal is not None:
            self.goal = np.asarray(goal, dtype=np.float64)
        elif multi_task:
            self.goal = self.random_goal()
        else:
            self.goal = self.spec.cell_to_xy(self.spec.goal_cell)
        self.obs = self._obs()
        return self.obs.copy()

    def set_goal(self, goal) -> None:
        self.goal = np.asarray(goal, dtype=np.float64)

    def step(self, action) -> tuple[np.ndarray, float]:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._point.step(action)  # clips velocity to [-5, 5], one MuJoCo step of 0.01 s
        self.obs = self._obs()
        reward = float(np.linalg.norm(self.obs[:2] - self.goal) <= GOAL_RADIUS)
        return self.obs.copy(), reward


class MazeBatch:
    """Several independent `MazeEnv`s stepped together: obs (b, 4), actions (b, 2)."""

    def __init__(self, maze: str, n: int, seed: int = 0):
        if n < 1:
            raise ValueError(f"a batch needs at least one environment, got {n}")
        self.envs = [MazeEnv(maze, seed=seed * 100003 + i) for i in range(n)]
        self.spec = self.envs[0].spec

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, multi_task: bool = False) -> np.ndarray:
        return np.stack([e.reset(multi_task=multi_task) for e in self.envs])

    @property
    def goals(self) -> np.ndarray:
        return np.stack([e.goal for e in self.envs])

    def step(self, actions) -> tuple[np.ndarray, np.ndarray]:
        actions = np.asarray(actions)
        if actions.shape != (len(self.envs), 2):
            raise ValueError(f"actions must have shape ({len(self.envs)}, 2), got {actions.shape}")
        out = [e.step(a) for e, a in zip(self.envs, actions)]
        return np.stack([o for o, _ in out]), np.array([r for _, r in out])


def shortest_path(spec: MazeSpec, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Cells after `start` up to and including `goal` along a shortest 4-connected path."""
    walls = spec.walls
    dist = {goal: 0}
    queue = deque([goal])
    while queue:  # breadth-first search outwards from the goal
        c = queue.popleft()
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            n = (c[0] + di, c[1] + dj)
            if 0 <= n[0] < walls.shape[0] and 0 <= n[1] < walls.shape[1] and not walls[n] and n not in dist:
                dist[n] = dist[c] + 1
                queue.append(n)
    if start not in dist:
        raise ValueError(f"no path from cell {start} to cell {goal} in maze {spec.name!r}")
    path, c = [], start
    while c != goal:
        c = min(((c[0] + di, c[1] + dj) for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1))),
                key=lambda n: dist.get(n, 10**9))
        path.append(c)
    return path


class WaypointController:
    """D4RL's maze2d data controller: PD towards noisy cell-centre waypoints on a shortest path."""

    def __init__(self, spec: MazeSpec, rng: np.random.Generator, p_gain: float = 10.0, d_gain: float = -1.0,
                 solve_thresh: float = 0.1):
        self.spec, self.rng = spec, rng
        self.p_gain, self.d_gain, self.solve_thresh = p_gain, d_gain, solve_thresh
        self.target_cell: tuple[int, int] | None = None
        self.waypoints: list[np.ndarray] = []
        self.index = 0

    def _new_target(self, position, target_cell) -> None:
        cells = shortest_path(self.spec, self.spec.xy_to_cell(position), target_cell)
        self.waypoints = []
        for c in cells:
            wp = self.spec.cell_to_xy(c)
            if c != target_cell:
                # D4RL subtracts U(0, 0.2) in its (row, col) frame: +y and -x here
                u = self.rng.uniform(size=2) * 0.2
                wp = wp + np.array([-u[1], u[0]])
            self.waypoints.append(wp)
        self.target_cell, self.index = target_cell, 0

    def act(self, position, velocity, target) -> tuple[np.ndarray, bool]:
        """(action in [-1, 1]^2, solved): solved once within 0.1 of the target cell's centre."""
        cell = self.spec.xy_to_cell(target)
        if cell != self.target_cell:
            self._new_target(position, cell)
        centre = self.spec.cell_to_xy(cell)
        solved = np.linalg.norm(position - centre) < self.solve_thresh
        if solved or self.index >= len(self.waypoints):
            wp = centre
        else:
            wp = self.waypoints[self.index]
            if np.linalg.norm(position - wp) < self.solve_thresh:
                self.index += 1
        action = self.p_gain * (wp - position) + self.d_gain * velocity
        return np.clip(action, -1.0, 1.0), bool(solved)


def generate_dataset(maze: str, steps: int, seed: int = 0, noise: float = 0.5, progress: bool = True) -> dict:
    """D4RL-style offline data: one continuous stream of `steps` transitions.

    Returns float32 arrays observations (N, 4), actions (N, 2), rewards (N,) (1 if the next
    position is within 0.5 of the goal being pursued), goals (N, 2), next_observations (N, 4),
    and bool terminals (N,) marking where the controller solved its goal or ran out of time
    and a new goal was drawn.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    env = MazeEnv(maze, seed=seed)
    rng = np.random.default_rng([seed, 1])
    ctrl = WaypointController(env.spec, rng)
    obs = env.reset()
    env.set_goal(env.random_goal())
    out = {k: np.zeros((steps,) + s, np.float32) for k, s in
           (("observations", (4,)), ("actions", (2,)), ("rewards", ()), ("goals", (2,)), ("next_observations", (4,)))}
    out["terminals"] = np.zeros(steps, bool)
    ts = 0
    bar = tqdm(total=steps, desc=f"maze data {env.spec.name}", unit="step", disable=not progress, mininterval=1.0)
    for t in range(steps):
        action, done = ctrl.act(obs[:2], obs[2:], env.goal)
        if noise:
            action = np.clip(action + rng.normal(0.0, noise, size=2), -1.0, 1.0)
        if ts >= env.spec.episode_len:
            done = True
        goal = env.goal.copy()
        nxt, reward = env.step(action)
        out["observations"][t], out["actions"][t], out["rewards"][t] = obs, action, reward
        out["goals"][t], out["next_observations"][t], out["terminals"][t] = goal, nxt, done
        obs, ts = nxt, ts + 1
        if done:
            env.set_goal(env.random_goal())
            ts = 0
        if t % 1000 == 999:
            bar.update(1000)
    bar.update(steps - bar.n)
    bar.close()
    return out


DATA_KEYS = ("observations", "actions", "rewards", "goals", "next_observations", "terminals")


def save_dataset(path: str | os.PathLike, data: dict, maze: str, seed: int, noise: float) -> Path:
    """Write the arrays plus their provenance as an uncompressed .npz (atomically)."""
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    meta = {"maze": np.array(maze), "seed": np.array(seed), "noise": np.array(noise)}
    np.savez(buf, **{k: data[k] for k in DATA_KEYS}, **meta)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_dataset(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no maze dataset at {path}; make one with `driftless data maze`")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in DATA_KEYS if k not in f.files]
        if missing:
            raise ValueError(f"{path} is not a maze dataset: it lacks {missing}")
        out = {k: f[k] for k in f.files}
    out["maze"] = str(out["maze"])
    return out


STEP_FEATURES = 7  # [a (2), r (1), o_next (4)] per environment step


def step_features(data: dict) -> np.ndarray:
    """(N, 7) per-step token features [a_t, r_t, o_{t+1}]."""
    return np.concatenate([data["actions"], data["rewards"][:, None], data["next_observations"]], axis=1)


class MazeTokens:
    """Random training windows: cond o_s (4,) and `tokens` tokens of `frame_stack` steps each.

    sample(batch, generator) -> (x0 (b, tokens, frame_stack * 7), cond (b, 4)), in data units.
    """

    def __init__(self, data: dict, tokens: int, frame_stack: int, device="cpu"):
        feats = step_features(data)
        self.window = tokens * frame_stack
        if len(feats) < self.window + 1:
            raise ValueError(f"dataset has {len(feats)} steps, fewer than one window of {self.window}")
        self.tokens, self.frame_stack = tokens, frame_stack
        self.feats = torch.from_numpy(feats).float().to(device)
        self.obs = torch.from_numpy(data["observations"]).float().to(device)
        self.device = device

    def stats(self) -> dict[str, list[float]]:
        """Per-dimension mean/std of tokens (step features tiled frame_stack times) and cond."""
        f, o = self.feats, self.obs
        fs = self.frame_stack
        return {"token_mean": f.mean(0).repeat(fs).tolist(), "token_std": f.std(0).clamp(min=1e-3).repeat(fs).tolist(),
                "cond_mean": o.mean(0).tolist(), "cond_std": o.std(0).clamp(min=1e-3).tolist()}

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.feats) - self.window
        gdev = generator.device if generator is not None else "cpu"
        start = torch.randint(0, n + 1, (batch,), generator=generator, device=gdev).to(self.device)
        idx = start[:, None] + torch.arange(self.window, device=self.device)[None]  # (b, window)
        x0 = self.feats[idx].reshape(batch, self.tokens, self.frame_stack * STEP_FEATURES)  # (b, T, fs*7)
        return x0, self.obs[start]
