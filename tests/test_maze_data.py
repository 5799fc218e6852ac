"""Maze2D data: D4RL layouts, the PointMaze wrapper, the waypoint controller, determinism."""

import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

from driftless.cli import build_parser  # noqa: E402
from driftless.plan.maze import (MAZES, MazeEnv, MazeTokens, WaypointController, generate_dataset,  # noqa: E402
                                 get_maze, load_dataset, save_dataset, shortest_path)


def test_layouts_match_d4rl_and_pointmaze():
    from gymnasium_robotics.envs.maze import maps

    assert get_maze("umaze").pointmaze_map() == maps.U_MAZE
    assert get_maze("medium").pointmaze_map() == maps.MEDIUM_MAZE
    assert get_maze("large").pointmaze_map() == maps.LARGE_MAZE
    assert [MAZES[m].episode_len for m in ("umaze", "medium", "large")] == [300, 600, 800]
    spec = get_maze("medium")
    for cell in spec.open_cells:  # cell <-> xy round trip
        assert spec.xy_to_cell(spec.cell_to_xy(cell)) == cell
    with pytest.raises(ValueError, match="unknown maze"):
        get_maze("huge")


def test_shortest_path_avoids_walls():
    spec = get_maze("umaze")
    path = shortest_path(spec, (3, 1), (1, 1))  # around the U: right, up, left
    assert path[-1] == (1, 1) and len(path) == 6
    assert not any(spec.walls[c] for c in path)


def test_env_reward_and_wall():
    env = MazeEnv("umaze", seed=0)
    goal = env.spec.cell_to_xy(env.spec.goal_cell)
    env.reset(start=goal + np.array([0.2, 0.0]))
    _, r = env.step([0.0, 0.0])
    assert r == 1.0  # within 0.5 of the goal
    env.reset(start=env.spec.cell_to_xy((3, 1)))
    for _ in range(100):  # push up into the wall between the arms of the U
        obs, r = env.step([0.0, 1.0])
    assert obs[1] < env.spec.cell_to_xy((2, 1))[1] and r == 0.0


def test_controller_reaches_goal_without_noise():
    env = MazeEnv("umaze", seed=3)
    obs = env.reset(start=env.spec.cell_to_xy((3, 1)))
    ctrl = WaypointController(env.spec, np.random.default_rng(0))
    total = 0.0
    for _ in range(300):
        a, _ = ctrl.act(obs[:2], obs[2:], env.goal)
        obs, r = env.step(a)
        total += r
    assert total > 100  # the goal is reached well before half the episode and held


def test_dataset_deterministic_and_consistent(tmp_path):
    a = generate_dataset("umaze", 1500, seed=7, progress=False)
    b = generate_dataset("umaze", 1500, seed=7, progress=False)
    c = generate_dataset("umaze", 1500, seed=8, progress=False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["observations"], c["observations"])
    # one continuous stream: every next observation is the following observation
    np.testing.assert_array_equal(a["next_observations"][:-1], a["observations"][1:])
    assert np.all(np.abs(a["actions"]) <= 1.0)
    d = np.linalg.norm(a["next_observations"][:, :2] - a["goals"], axis=1)
    np.testing.assert_array_equal(a["rewards"], (d <= 0.5).astype(np.float32))
    path = save_dataset(tmp_path / "u.npz", a, "umaze", 7, 0.5)
    back = load_dataset(path)
    assert back["maze"] == "umaze" and int(back["seed"]) == 7
    np.testing.assert_array_equal(back["actions"], a["actions"])


def test_tokens_windows():
    data = generate_dataset("umaze", 400, seed=0, progress=False)
    tok = MazeTokens(data, tokens=3, frame_stack=5)
    import torch

    x0, cond = tok.sample(4, torch.Generator().manual_seed(0))
    assert x0.shape == (4, 3, 35) and cond.shape == (4, 4)
    # the first step's action in a window follows from its conditioning observation
    i = int(np.flatnonzero(np.all(np.isclose(data["observations"], cond[0].numpy()), axis=1))[0])
    np.testing.assert_allclose(x0[0, 0, :2].numpy(), data["actions"][i], rtol=1e-6)
    np.testing.assert_allclose(x0[0, 0, 3:7].numpy(), data["next_observations"][i], rtol=1e-6)
    stats = tok.stats()
    assert len(stats["token_mean"]) == 35 and len(stats["cond_std"]) == 4


def test_cli_data_maze(tmp_path):
    p = build_parser()
    args = p.parse_args(["data", "maze", "--maze", "umaze", "--steps", "300", "--out", str(tmp_path), "--quiet"])
    assert args.func(args) == 0
    assert load_dataset(tmp_path / "umaze.npz")["actions"].shape == (300, 2)
    with pytest.raises(ValueError):
        args = p.parse_args(["data", "maze", "--maze", "umaze", "--steps", "0", "--out", str(tmp_path)])
        args.func(args)
