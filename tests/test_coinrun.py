import itertools
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("procgen")

from driftless.data import coinrun  # noqa: E402
from driftless.data.coinrun import SPLITS, DiskSpaceError, StreamingClips, generate  # noqa: E402
from driftless.data.store import EpisodeStore  # noqa: E402

TINY = dict(workers=1, envs_per_worker=2, max_frames_per_episode=30, episodes_per_shard=1, verbose=False)


def _frames_by_shard(store):
    return {name: [np.array(store.frames(i)) for i in store.shard_episodes(name)] for name in store.shard_names}


def test_tiny_generation_shapes_splits_and_rerun(tmp_path):
    out = tmp_path / "val"
    summary = generate(out, 2, split="val", seed=5, **TINY)
    assert summary["episodes"] == 2 and summary["frames"] == 60 and summary["bytes"] > 60 * 64 * 64 * 3
    store = EpisodeStore(out)
    assert store.resolution == (64, 64) and store.num_episodes == 2
    assert store.meta["split"] == "val" and store.meta["distribution_mode"] == "hard"
    lo, hi = SPLITS["val"]
    for i in range(2):
        ep = store.episode(i)
        assert ep["frames"].shape == (30, 64, 64, 3) and ep["frames"].dtype == np.uint8
        assert ep["frames"].std() > 0  # real rendered pixels
        assert ep["actions"].dtype == np.int64 and ep["rewards"].dtype == np.float32
        assert np.all((ep["actions"][:-1] >= 0) & (ep["actions"][:-1] < 15)) and ep["actions"][-1] == -1
        info = ep["info"]
        assert lo <= info["level_seed"] < hi and info["split"] == "val" and info["truncated"] is True
    before = json.loads((out / "store.json").read_text())
    frames = _frames_by_shard(store)

    again = generate(out, 2, split="val", seed=5, **TINY)  # re-run: a no-op
    assert again["episodes"] == 0 and again["skipped_shards"] == 2 and again["store_episodes"] == 2
    assert json.loads((out / "store.json").read_text()) == before

    # interrupted run: one shard lost; re-running makes only that one, identical to before
    store.remove_shard(store.shard_names[0])
    resumed = generate(out, 2, split="val", seed=5, **TINY)
    assert resumed["episodes"] == 1 and resumed["skipped_shards"] == 1
    store = EpisodeStore(out)
    assert store.num_episodes == 2
    for name, eps in _frames_by_shard(store).items():
        for a, b in zip(eps, frames[name]):
            np.testing.assert_array_equal(a, b)

    # growing the request extends the store; other settings or another split are refused
    more = generate(out, 3, split="val", seed=5, **TINY)
    assert more["episodes"] == 1 and EpisodeStore(out).num_episodes == 3
    with pytest.raises(ValueError, match="settings"):
        generate(out, 3, split="val", seed=5, **{**TINY, "envs_per_worker": 3})
    with pytest.raises(ValueError, match="split"):
        generate(out, 3, split="test", seed=5, **TINY)
    with pytest.raises(ValueError, match="split"):
        generate(tmp_path / "x", 1, split="nope", **TINY)


def test_another_procgen_game(tmp_path, capsys):
    """--game: the same store from another Procgen game, named as such; CoinRun stays the default."""
    from driftless.cli import main

    assert main(["data", "coinrun", "--out", str(tmp_path / "fish"), "--episodes", "2", "--split", "val",
                 "--workers", "1", "--envs-per-worker", "2", "--max-frames-per-episode", "8",
                 "--episodes-per-shard", "1", "--game", "bigfish"]) == 0
    fish = EpisodeStore(tmp_path / "fish")
    assert fish.meta["source"] == "procgen:bigfish" and fish.num_episodes == 2
    assert all(n.startswith("bigfish-val-hard-s0-") for n in fish.shard_names)
    assert fish.info(0)["source"] == "procgen:bigfish" and fish.episode(0)["frames"].shape == (8, 64, 64, 3)
    generate(tmp_path / "coin", 2, split="val", seed=0, **{**TINY, "max_frames_per_episode": 8})
    coin = EpisodeStore(tmp_path / "coin")
    assert coin.meta["source"] == "procgen:coinrun" and coin.shard_names[0].startswith("coinrun-val-hard-s0-")
    assert not np.array_equal(np.array(coin.frames(0)), np.array(fish.frames(0)))
    with pytest.raises(ValueError, match="source"):  # one game per store
        generate(tmp_path / "fish", 2, split="val", seed=0, **{**TINY, "max_frames_per_episode": 8})
    with pytest.raises(ValueError, match="unknown Procgen game"):
        generate(tmp_path / "x", 1, game="pong", **TINY)


def test_whole_episodes_rewards_and_train_levels(tmp_path):
    """Full episodes (no cap): the terminal reward of CoinRun is kept in info, consistent
    with procgen's level_complete flag; lengths respect the 1000-frame limit."""
    summary = generate(tmp_path / "tr", 4, split="train", seed=0, workers=1, envs_per_worker=4,
                       episodes_per_shard=4, verbose=False)
    store = EpisodeStore(tmp_path / "tr")
    assert summary["frames"] == store.num_frames == int(store.episode_lengths.sum())
    lo, hi = SPLITS["train"]
    for i in range(store.num_episodes):
        ep = store.episode(i)
        t = len(ep["frames"])
        info = ep["info"]
        assert 1 < t <= 1000 and info["truncated"] is False and lo <= info["level_seed"] < hi
        assert np.all(ep["actions"][:-1] >= 0) and ep["actions"][-1] == -1
        assert 0 <= info["final_action"] < 15
        assert (info["final_reward"] == 10.0) == info["level_complete"]
        assert info["episode_return"] == pytest.approx(float(ep["rewards"].sum()) + info["final_reward"])


def test_disk_space_refusal(tmp_path, monkeypatch):
    class Usage:
        total, used, free = 10**9, 10**9 - 12345, 12345

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage)
    out = tmp_path / "big"
    with pytest.raises(DiskSpaceError) as err:
        generate(out, 1000, split="train", workers=1, verbose=False)
    msg = str(err.value)
    need = 1000 * coinrun.EST_FRAMES_PER_EPISODE * (64 * 64 * 3 + 6)
    assert str(need) in msg and "12345" in msg
    assert not out.exists()  # refused before creating anything


def test_parallel_workers_match_inline(tmp_path):
    """Content depends on the seed and shard settings, not on the number of workers."""
    cfg = dict(split="test", seed=2, envs_per_worker=2, max_frames_per_episode=12, episodes_per_shard=2,
               verbose=False)
    s1 = generate(tmp_path / "one", 6, workers=1, **cfg)
    s2 = generate(tmp_path / "two", 6, workers=2, **cfg)
    assert s1["episodes"] == s2["episodes"] == 6
    a, b = EpisodeStore(tmp_path / "one"), EpisodeStore(tmp_path / "two")
    assert sorted(a.shard_names) == sorted(b.shard_names)
    fa, fb = _frames_by_shard(a), _frames_by_shard(b)
    for name in fa:
        assert len(fa[name]) == len(fb[name]) == 2
        for x, y in zip(fa[name], fb[name]):
            np.testing.assert_array_equal(x, y)


def test_streaming_clips(tmp_path):
    L = 6
    ds = StreamingClips(clip_len=L, split="val", num_envs=3, seed=1, stride=L - 1, shuffle_buffer=1)
    clips = list(itertools.islice(iter(ds), 300))  # > 1000 frames: spans >= 2 episodes
    by_episode = {}
    for c in clips:
        assert set(c) == {"frames", "actions", "rewards", "episode", "start"}
        assert c["frames"].shape == (L, 64, 64, 3) and c["frames"].dtype == torch.uint8
        assert c["actions"].shape == (L - 1,) and c["actions"].dtype == torch.int64
        assert c["rewards"].shape == (L - 1,) and c["rewards"].dtype == torch.float32
        # the last transition of an episode is stored as -1: a clip that crossed the end would hold it
        assert bool(torch.all((c["actions"] >= 0) & (c["actions"] < 15)))
        by_episode.setdefault(c["episode"], []).append(c)
    assert len(by_episode) >= 2
    for eps in by_episode.values():
        for prev, nxt in zip(eps, eps[1:]):  # stride L-1: consecutive clips share one frame
            assert nxt["start"] == prev["start"] + L - 1
            assert torch.equal(prev["frames"][-1], nxt["frames"][0])

    # two DataLoader workers (and two ranks) run different envs
    def first_batch(rank, workers):
        d = StreamingClips(clip_len=4, split="train", num_envs=2, seed=1, rank=rank, shuffle_buffer=2)
        loader = torch.utils.data.DataLoader(d, batch_size=2, num_workers=workers)
        return list(itertools.islice(iter(loader), 2))

    b = first_batch(0, 2)
    assert {int(e) % 2 for e in b[0]["episode"]} != {int(e) % 2 for e in b[1]["episode"]}  # worker ids
    assert not torch.equal(b[0]["frames"], b[1]["frames"])
    r1 = first_batch(1, 0)
    assert not torch.equal(first_batch(0, 0)[0]["frames"], r1[0]["frames"])


def _runs(actions: np.ndarray) -> np.ndarray:
    """Lengths of the runs of equal consecutive actions in each column of (T, n)."""
    lengths = []
    for col in actions.T:
        cut = np.flatnonzero(np.diff(col) != 0) + 1
        bounds = np.concatenate([[0], cut, [len(col)]])
        lengths.append(np.diff(bounds)[1:-1])  # drop the runs cut by the window's edges
    return np.concatenate(lengths)


def test_held_action_policy_statistics():
    """The held agent: uniform actions, each held for a geometric number of frames of the asked mean;
    the uniform agent draws a new action every frame, exactly as the per-frame agent always did."""
    from driftless.data.coinrun import AgentPolicy, RandomAgent

    for mean in (4.0, 8.0):
        agent = RandomAgent(64, np.random.default_rng(0), AgentPolicy("held", mean))
        acts = np.stack([agent() for _ in range(3000)])  # (T, envs)
        # a new draw repeats the old action with probability 1/15: runs last mean * 15/14 frames
        runs = _runs(acts)
        assert abs(runs.mean() - mean * 15 / 14) < 0.04 * mean, (mean, runs.mean())
        # runs are geometric too (a geometric number of geometric holds): P(run of 1 frame) = 1/mean * 14/15
        assert abs((runs == 1).mean() - (1 / mean) * 14 / 15) < 0.01
        freq = np.bincount(acts.reshape(-1), minlength=15) / acts.size
        assert np.abs(freq - 1 / 15).max() < 0.01 and acts.min() >= 0 and acts.max() < 15
        change = (np.diff(acts, axis=0) != 0).mean()
        assert abs(change - (1 / mean) * 14 / 15) < 0.01
    uniform = RandomAgent(4, np.random.default_rng(3), AgentPolicy("uniform"))
    ref = np.random.default_rng(3)
    for _ in range(5):
        np.testing.assert_array_equal(uniform(), ref.integers(0, 15, size=4).astype(np.int32))
    change = (np.diff(np.stack([uniform() for _ in range(2000)]), axis=0) != 0).mean()
    assert abs(change - 14 / 15) < 0.02
    with pytest.raises(ValueError, match="policy"):
        AgentPolicy("greedy")
    with pytest.raises(ValueError, match="hold_mean"):
        AgentPolicy("held", 0.5)


def test_generate_held_and_uniform_stores(tmp_path):
    """Held actions are the default and show in the stored true actions; a store keeps one policy;
    the uniform agent writes the stores it always wrote (same shard settings string)."""
    from driftless.data.coinrun import UNIFORM, AgentPolicy

    generate(tmp_path / "held", 2, split="val", seed=1, **{**TINY, "max_frames_per_episode": 60})
    held = EpisodeStore(tmp_path / "held")
    assert held.meta["policy"] == {"kind": "held", "hold_mean": 6.0} and held.info(0)["gen"].endswith("-h6")
    acts = np.concatenate([held.actions(i)[:-1] for i in range(2)])
    assert (np.diff(acts) != 0).mean() < 0.35  # about 1/6 * 14/15, not 14/15
    with pytest.raises(ValueError, match="policy"):
        generate(tmp_path / "held", 3, split="val", seed=1, policy=UNIFORM, **{**TINY, "max_frames_per_episode": 60})
    generate(tmp_path / "uni", 2, split="val", seed=1, policy=UNIFORM, **{**TINY, "max_frames_per_episode": 60})
    uni = EpisodeStore(tmp_path / "uni")
    assert uni.info(0)["gen"] == "e2-p1-m60" and uni.meta["policy"] == {"kind": "uniform"}
    acts = np.concatenate([uni.actions(i)[:-1] for i in range(2)])
    assert (np.diff(acts) != 0).mean() > 0.8
    generate(tmp_path / "h4", 1, split="val", seed=1, policy=AgentPolicy("held", 4), **TINY)
    assert EpisodeStore(tmp_path / "h4").info(0)["gen"] == "e2-p1-m30-h4"
def test_same_level_episodes_keep_one_level_across_restarts(tmp_path):
    """--same-level-frames: each episode is one test level played for exactly N frames; Procgen
    restarts the level (at the latest at its 1000-frame time limit), and every restart shows the
    level's first screen again."""
    from driftless.cli import main

    out = tmp_path / "test"
    generate(out, 1, split="test", seed=3, **{**TINY, "max_frames_per_episode": None})  # an ordinary episode beside
    assert main(["data", "coinrun", "--out", str(out), "--episodes", "1", "--split", "test", "--seed", "3",
                 "--workers", "1", "--same-level-frames", "1050"]) == 0
    store = EpisodeStore(out)
    assert store.num_episodes == 2
    long = [i for i in range(2) if store.info(i).get("same_level")]
    assert len(long) == 1 and any("-L1050-" in n for n in store.shard_names)
    ep = store.episode(long[0])
    info, frames = ep["info"], ep["frames"]
    lo, hi = SPLITS["test"]
    assert frames.shape == (1050, 64, 64, 3) and lo <= info["level_seed"] < hi
    assert info["resets"] and info["plays"] == len(info["resets"]) + 1  # the time limit forces a restart
    for r in info["resets"]:
        np.testing.assert_array_equal(frames[r], frames[0])  # the same level's first screen
        assert 0 <= ep["actions"][r - 1] < 15  # the transition into a restart keeps its real action
    assert ep["actions"][-1] == -1
    with pytest.raises(ValueError, match="combine"):
        generate(tmp_path / "x", 1, split="test", same_level_frames=10, **TINY)
    with pytest.raises(ValueError, match="not in the test split"):
        coinrun.make_env(1, "test", level=5)
