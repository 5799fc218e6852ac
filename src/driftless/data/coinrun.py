"""Procgen CoinRun episodes from a random agent: to disk (`generate`) or live
(`StreamingClips`). `generate` and `make_env` take any other Procgen game (`PROCGEN_GAMES`) with
`game=`; CoinRun is the default and the game the rest of the package is tuned on.

The agent (`AgentPolicy`) is random either way. "held" (the default for world training) holds
each action for a geometric number of frames (mean `hold_mean`, 6 by default), so that an
action lasts long enough for its effect to show despite the game's momentum; "uniform" draws a
new uniform action every frame (Genie's setting, kept for comparisons; its stores are the same
as before the policy option existed). The true action of every transition is stored either way.

Levels are split by level seed into disjoint ranges (`SPLITS`). gym3's observe/act loop
gives (reward, obs, first): `first` marks the first frame of a new episode, and the reward
observed after act(a) belongs to the transition out of the previous frame. An episode is the
run of observations from one `first` to the next. Procgen resets by itself, so the frame
after an episode's last action is never observed: by the store convention that last
transition is stored as -1 / 0, and its action, reward and outcome are kept in the
episode's info ("final_action", "final_reward", "level_complete"). In CoinRun the only
reward is the +10 for reaching the coin, which ends the episode, so it lives in that info.

Which episodes are kept is decided when they start (the first `count` episodes started
in a shard, in (step, env) order), not when they end, so long episodes are not under-
represented; the others are stepped but dropped.

Shards: `{game}-{split}-{mode}-s{seed}-{g:05d}`, shard g holding `episodes_per_shard`
episodes (the last one possibly fewer). Each shard has its own procgen rand_seed and action
RNG derived from (seed, split, mode, g), so its content depends on (seed, envs_per_worker,
episodes_per_shard, max_frames_per_episode) and NOT on the number of workers, and an
interrupted run resumes by making only the missing shards.

Long same-level episodes (`same_level_frames=N`, `driftless data coinrun --same-level-frames N`):
each stored episode plays ONE level (an env with num_levels=1, start_level=<its seed>) for
exactly N frames. Procgen restarts the level when the agent dies, finishes or hits the time
limit, so consecutive plays of one level are joined into one stored episode; the frame index
where each new play starts is kept in the episode's info (`resets`), the transition into it
carries the action really taken (the play's `final_action`) and its reward. They are the real
reference for long rollouts (eval/drift.py, "same level"): what a level looks like 1000 frames
after its first frames. Their shards are named `{game}-{split}-{mode}-s{seed}-L{N}-{g:05d}`, so
they sit beside ordinary episodes in one store.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import queue
import shutil
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from driftless.data.store import EpisodeStore, estimate_bytes

SPLITS = {"train": (0, 10000), "val": (10000, 10500), "test": (10500, 11000)}
# the 16 Procgen games (all share the 15-action set and 64x64 frames)
PROCGEN_GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
                 "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot")
MODES = ("hard", "easy")
NUM_ACTIONS = 15  # procgen's full action set
RESOLUTION = (64, 64)
EPISODE_FRAME_CAP = 1000  # procgen's CoinRun time limit (used for the disk estimate)
# Random-agent episode length, hard mode, measured here on 600 episodes chosen at start:
# mean 620 frames, median 630, 34% hit the 1000 cap (easy: mean 656). The disk estimate uses
# this rounded-up constant per episode (or max_frames_per_episode if smaller).
EST_FRAMES_PER_EPISODE = 700
DEFAULT_EPISODES_PER_SHARD = 64
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}
_MODE_ID = {"hard": 0, "easy": 1}
_SHARD_TAG, _STREAM_TAG, _LONG_TAG = 0, 1, 2
POLICIES = ("held", "uniform")
DEFAULT_HOLD_MEAN = 6.0  # frames an action is held on average by the "held" agent


@dataclass(frozen=True)
class AgentPolicy:
    """The random agent that plays the game: "held" holds a uniformly drawn action for a
    geometric number of frames (support 1, 2, ...; mean `hold_mean`), "uniform" draws a new
    action every frame (Genie's setting)."""

    kind: str = "held"
    hold_mean: float = DEFAULT_HOLD_MEAN

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ValueError(f"unknown agent policy {self.kind!r}: expected one of {list(POLICIES)}")
        if not float(self.hold_mean) >= 1.0:
            raise ValueError(f"hold_mean must be >= 1 frame, got {self.hold_mean}")

    @property
    def tag(self) -> str:
        """Its part of a shard's settings string ("" for uniform: stores made before the option)."""
        return "" if self.kind == "uniform" else f"-h{float(self.hold_mean):g}"

    def to_meta(self) -> dict:
        return {"kind": self.kind} if self.kind == "uniform" else asdict(self)


UNIFORM = AgentPolicy("uniform")
HELD = AgentPolicy("held")


class RandomAgent:
    """Actions of `n` envs, one call per frame: uniform per frame, or each env holding its
    action for a geometric number of frames (then a new uniform action and hold length)."""

    def __init__(self, n: int, rng: np.random.Generator, policy: AgentPolicy = HELD, num_actions: int = NUM_ACTIONS,
                 weights: np.ndarray | None = None):
        """`weights`: probabilities of the held agent's action draws (default uniform)."""
        self.n, self.rng, self.policy, self.num_actions = int(n), rng, policy, int(num_actions)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.actions = np.zeros(self.n, dtype=np.int32)
        self.left = np.zeros(self.n, dtype=np.int64)  # frames the current action is still held

    def __call__(self) -> np.ndarray:
        if self.policy.kind == "uniform":  # the same draws as the per-frame agent always made
            return self.rng.integers(0, self.num_actions, size=self.n).astype(np.int32)
        new = self.left <= 0
        k = int(new.sum())
        if k:
            self.actions[new] = (self.rng.integers(0, self.num_actions, size=k) if self.weights is None
                                 else self.rng.choice(self.num_actions, size=k, p=self.weights))
            self.left[new] = self.rng.geometric(1.0 / float(self.policy.hold_mean), size=k)
        self.left -= 1
        return self.actions.copy()


class DiskSpaceError(ValueError):
    """Not enough free disk space for the requested generation."""


def import_procgen():
    try:
        # `procgen` imports gym, which prints a deprecation notice to stderr: silence it
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            from procgen import ProcgenGym3Env
    except ImportError as e:
        raise ImportError('CoinRun needs Procgen, which is not installed: pip install "driftless[procgen]"') from e
    return ProcgenGym3Env


def split_range(split: str) -> tuple[int, int]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(SPLITS)}")
    return SPLITS[split]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown distribution mode {mode!r}: expected one of {list(MODES)}")


def check_game(game: str) -> None:
    if game not in PROCGEN_GAMES:
        raise ValueError(f"unknown Procgen game {game!r}: expected one of {list(PROCGEN_GAMES)}")


def make_env(num: int, split: str = "train", rand_seed: int = 0, distribution_mode: str = "hard",
             game: str = "coinrun", level: int | None = None):
    """A gym3 vector env of `num` envs of a Procgen game (CoinRun by default) drawing levels from
    `split`; with `level` (a seed inside the split), every env plays that one level again and again."""
    lo, hi = split_range(split)
    _check_mode(distribution_mode)
    check_game(game)
    if level is not None:
        if not lo <= int(level) < hi:
            raise ValueError(f"level {level} is not in the {split} split [{lo}, {hi})")
        lo, hi = int(level), int(level) + 1
    env_cls = import_procgen()
    return env_cls(num=int(num), env_name=game, start_level=lo, num_levels=hi - lo,
                   distribution_mode=distribution_mode, rand_seed=int(rand_seed), num_threads=0)


def _seeds(*key: int) -> tuple[int, np.random.Generator]:
    """(procgen rand_seed, action RNG) derived from an integer key."""
    env_seed = int(np.random.SeedSequence([*key, 0]).generate_state(1)[0] % (2**31 - 1))
    return env_seed, np.random.default_rng(np.random.SeedSequence([*key, 1]))


def run_episodes(env, rng: np.random.Generator, want: int | None = None, max_frames: int | None = None,
                 policy: AgentPolicy = HELD) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, dict]]:
    """Drive `env` with a random agent (`policy`); yield (frames (T,H,W,3) uint8, actions (T,)
    int64, rewards (T,) float32, info) for each kept episode as it finishes. Keeps the first
    `want` episodes started (all if None), cutting each at `max_frames` frames."""
    n = env.num
    agent = RandomAgent(n, rng, policy)
    slots: list[dict | None] = [None] * n  # the episode each env is recording, or None
    started = 0
    while True:
        rew, obs, first = env.observe()
        rgb = obs["rgb"]  # (n, 64, 64, 3), a fresh copy per observe (gym3 default), so views are safe
        infos = env.get_info() if first.any() else None
        for i in range(n):
            cur = slots[i]
            if first[i]:
                if cur is not None:  # natural end: the final transition is not observable
                    cur["info"].update(final_action=int(cur["last"]), final_reward=float(rew[i]),
                                       level_complete=bool(infos[i].get("prev_level_complete", 0)))
                    yield _finish(cur)
                if want is None or started < want:
                    cur = slots[i] = {"frames": [], "actions": [], "rewards": [],
                                      "info": {"level_seed": int(infos[i]["level_seed"]), "truncated": False}}
                    started += 1
                else:
                    cur = slots[i] = None
            elif cur is not None:
                cur["actions"].append(cur["last"])
                cur["rewards"].append(float(rew[i]))
            if cur is not None:
                cur["frames"].append(rgb[i])
                if max_frames is not None and len(cur["frames"]) >= max_frames:
                    cur["info"].update(truncated=True, final_action=None, final_reward=None, level_complete=None)
                    yield _finish(cur)
                    slots[i] = None  # ignore this env until its next episode starts
        if want is not None and started >= want and all(s is None for s in slots):
            return
        acts = agent()
        for i in range(n):
            if slots[i] is not None:
                slots[i]["last"] = int(acts[i])
        env.act(acts)


def same_level_episode(split: str, level: int, frames: int, rand_seed: int, rng: np.random.Generator,
                       distribution_mode: str = "hard", game: str = "coinrun",
                       policy: AgentPolicy = HELD
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """One level played by the random agent for exactly `frames` frames, across the level's
    restarts: (frames (T,H,W,3) uint8, actions (T,), rewards (T,), info) as `run_episodes`, with
    info["resets"] the frame indices where a new play of the level starts (0 excluded)."""
    if int(frames) < 1:
        raise ValueError(f"a same-level episode needs frames >= 1, got {frames}")
    env = make_env(1, split, rand_seed, distribution_mode, game, level=level)
    parts, acts, rews, resets, completed = [], [], [], [], 0
    total = 0
    try:
        for f, a, r, info in run_episodes(env, rng, policy=policy):
            if info["level_seed"] != int(level):  # cannot happen with num_levels=1; guards the claim
                raise RuntimeError(f"procgen played level {info['level_seed']}, not {level}")
            a, r = a.copy(), r.copy()
            if info.get("final_action") is not None:  # the transition into the next play
                a[-1], r[-1] = info["final_action"], info["final_reward"]
            completed += bool(info.get("level_complete"))
            if total:
                resets.append(total)
            parts.append(f)
            acts.append(a)
            rews.append(r)
            total += len(f)
            if total >= frames:
                break
    finally:
        env.close()
    frames_ = np.concatenate(parts)[:frames]
    actions = np.concatenate(acts)[:frames]
    rewards = np.concatenate(rews)[:frames]
    actions[-1], rewards[-1] = -1, 0.0  # the store convention: the last transition is not observed
    info = {"level_seed": int(level), "same_level": True, "resets": [int(x) for x in resets if x < frames],
            "plays": 1 + sum(1 for x in resets if x < frames), "levels_completed": int(completed),
            "truncated": True, "episode_return": float(rewards.sum())}
    return frames_, actions, rewards, info


def _finish(cur: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    frames = np.stack(cur["frames"])  # (T, H, W, 3)
    t = len(frames)
    actions = np.full(t, -1, dtype=np.int64)
    rewards = np.zeros(t, dtype=np.float32)
    actions[: t - 1] = cur["actions"][: t - 1]
    rewards[: t - 1] = cur["rewards"][: t - 1]
    info = cur["info"]
    info["episode_return"] = float(rewards.sum() + (info.get("final_reward") or 0.0))
    return frames, actions, rewards, info


# ------------------------------------------------------------------------------ generate
def shard_name(split: str, mode: str, seed: int, g: int, game: str = "coinrun", same_level_frames: int = 0) -> str:
    long = f"-L{same_level_frames}" if same_level_frames else ""
    return f"{game}-{split}-{mode}-s{seed}{long}-{g:05d}"


def _shard_job(out: str, job: dict, on_episode=None) -> tuple[int, int, int]:
    """Make one shard; returns (episodes, frames, bytes)."""
    store = EpisodeStore(out)
    if store.has_shard(job["name"]):  # a shorter copy from a smaller earlier run: replace it
        store.remove_shard(job["name"])
    if job.get("same_level_frames"):
        return _same_level_shard(store, job, on_episode)
    env_seed, rng = _seeds(job["seed"], _SPLIT_ID[job["split"]], _MODE_ID[job["mode"]], _SHARD_TAG, job["g"])
    env = make_env(job["envs"], job["split"], env_seed, job["mode"], job["game"])
    policy = AgentPolicy(**job["policy"])
    with store.writer(job["name"]) as w:
        for frames, actions, rewards, info in run_episodes(env, rng, want=job["count"], max_frames=job["max_frames"],
                                                           policy=policy):
            w.add_episode(frames, actions, rewards, source=f"procgen:{job['game']}", split=job["split"],
                          distribution_mode=job["mode"], gen=job["gen"], **info)
            if on_episode is not None:
                on_episode(len(frames))
    env.close()
    nbytes = sum(p.stat().st_size for p in (Path(out) / job["name"]).iterdir())
    return w.num_episodes, w.num_frames, nbytes


def _same_level_shard(store: EpisodeStore, job: dict, on_episode=None) -> tuple[int, int, int]:
    """A shard of same-level episodes: `count` levels of the split, each played for
    `same_level_frames` frames (levels drawn without replacement within the shard)."""
    env_seed, rng = _seeds(job["seed"], _SPLIT_ID[job["split"]], _MODE_ID[job["mode"]], _LONG_TAG, job["g"])
    lo, hi = split_range(job["split"])
    levels = lo + rng.choice(hi - lo, size=min(job["count"], hi - lo), replace=False)
    with store.writer(job["name"]) as w:
        for k, level in enumerate(levels):
            frames, actions, rewards, info = same_level_episode(
                job["split"], int(level), job["same_level_frames"], (env_seed + k) % (2**31 - 1), rng,
                job["mode"], job["game"], AgentPolicy(**job["policy"]))
            w.add_episode(frames, actions, rewards, source=f"procgen:{job['game']}", split=job["split"],
                          distribution_mode=job["mode"], gen=job["gen"], **info)
            if on_episode is not None:
                on_episode(len(frames))
    nbytes = sum(p.stat().st_size for p in (Path(store.root) / job["name"]).iterdir())
    return w.num_episodes, w.num_frames, nbytes


def _worker_main(q, out: str, jobs: list[dict], wid: int) -> None:
    try:
        for job in jobs:
            res = _shard_job(out, job, on_episode=lambda t: q.put(("episode", wid, t)))
            q.put(("shard", wid, res))
        q.put(("done", wid, None))
    except BaseException:
        q.put(("error", wid, traceback.format_exc()))


def _run_parallel(out: str, jobs: list[dict], workers: int, bar) -> tuple[int, int, int]:
    if sys.platform.startswith("linux"):
        # fork, like DataLoader workers: no re-import of torch in each child, and procgen's
        # one-off asset loading (seconds) is done once here and inherited by every child
        make_env(1, jobs[0]["split"], 0, jobs[0]["mode"], jobs[0]["game"]).close()
        ctx = mp.get_context("fork")
    else:
        ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(q, out, jobs[w::workers], w), daemon=True)
             for w in range(workers)]
    for p in procs:
        p.start()
    eps = frames = nbytes = 0
    done: set[int] = set()
    try:
        while len(done) < workers:
            try:
                kind, wid, payload = q.get(timeout=1.0)
            except queue.Empty:
                dead = [w for w, p in enumerate(procs) if w not in done and not p.is_alive()]
                if dead:
                    raise RuntimeError(f"Procgen worker(s) {dead} died (exit codes "
                                       f"{[procs[w].exitcode for w in dead]}); re-run to resume")
                continue
            if kind == "episode":
                bar.update(1)
            elif kind == "shard":
                eps, frames, nbytes = eps + payload[0], frames + payload[1], nbytes + payload[2]
                bar.set_postfix(frames=frames)
            elif kind == "done":
                done.add(wid)
            else:
                raise RuntimeError(f"Procgen worker {wid} failed (re-run the same command to resume):\n{payload}")
    finally:
        for p in procs:
            if p.is_alive() and p.pid is not None and len(done) < workers:
                p.terminate()
        for p in procs:
            p.join(timeout=10)
    return eps, frames, nbytes


def generate(out, episodes: int, split: str = "train", workers: int | None = None, envs_per_worker: int = 16,
             seed: int = 0, distribution_mode: str = "hard", max_frames_per_episode: int | None = None,
             episodes_per_shard: int = DEFAULT_EPISODES_PER_SHARD, verbose: bool = True, game: str = "coinrun",
             policy: AgentPolicy = HELD, same_level_frames: int | None = None) -> dict:
    """Write `episodes` random-agent episodes of `split` of a Procgen game (CoinRun by default)
    into the store at `out`, played by `policy` (held actions by default; `UNIFORM` for a new
    action every frame). A store holds one policy: extending it with another is refused. With
    `same_level_frames=N`, each episode instead plays one level of the split for exactly N frames
    across its restarts (the module docstring; one env per level, `envs_per_worker` and
    `max_frames_per_episode` do not apply).

    Parallel over `workers` processes (1: in this process); resumable (existing shards are
    skipped); refuses with DiskSpaceError when the estimate exceeds free space. Returns
    {"episodes", "frames", "bytes", "seconds", "frames_per_s", "skipped_shards", "shards",
    "store_episodes", "store_frames"} (the first five count this run only)."""
    split_range(split)
    _check_mode(distribution_mode)
    check_game(game)
    episodes, envs, per_shard = int(episodes), int(envs_per_worker), int(episodes_per_shard)
    workers = int(workers or os.cpu_count() or 1)
    if episodes < 1 or envs < 1 or per_shard < 1 or workers < 1:
        raise ValueError(f"episodes, envs_per_worker, episodes_per_shard and workers must be >= 1, got "
                         f"{episodes}, {envs}, {per_shard}, {workers}")
    max_frames = None if max_frames_per_episode in (None, 0) else int(max_frames_per_episode)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames_per_episode must be >= 1, got {max_frames_per_episode}")
    long = int(same_level_frames or 0)
    if long < 0:
        raise ValueError(f"same_level_frames must be >= 1 (or 0/None for ordinary episodes), got {same_level_frames}")
    if long and max_frames is not None:
        raise ValueError("same_level_frames and max_frames_per_episode do not combine: a same-level episode is "
                         "exactly same_level_frames long")
    import_procgen()  # fail early with the install hint
    out = Path(out)
    gen = (f"L{long}-p{per_shard}" if long else f"e{envs}-p{per_shard}-m{max_frames or 0}") + policy.tag
    meta = {"source": f"procgen:{game}", "split": split, "distribution_mode": distribution_mode,
            "levels": list(SPLITS[split]), "num_actions": NUM_ACTIONS, "policy": policy.to_meta()}

    store = EpisodeStore(out) if (out / "store.json").exists() else None
    if store is not None:
        for key in ("source", "split", "distribution_mode"):
            if store.meta.get(key) != meta[key]:
                raise ValueError(f"{out} holds a store with {key}={store.meta.get(key)!r}, not {meta[key]!r}; "
                                 f"use a separate --out per split and mode")
        had = store.meta.get("policy", UNIFORM.to_meta())  # stores made before the option: uniform
        if had != meta["policy"]:
            raise ValueError(f"{out} holds episodes of the agent policy {had}, not {meta['policy']}; "
                             f"use the same --policy/--hold-mean or another --out")
    jobs, skipped = [], 0
    for g in range(-(-episodes // per_shard)):
        job = {"name": shard_name(split, distribution_mode, seed, g, game, long), "g": g, "seed": int(seed),
               "split": split, "mode": distribution_mode, "game": game, "envs": envs, "max_frames": max_frames,
               "gen": gen, "policy": asdict(policy), "count": min(per_shard, episodes - g * per_shard),
               "same_level_frames": long}
        if store is not None and store.has_shard(job["name"]):
            have = store.shard_episodes(job["name"])
            old_gen = store.info(have[0]).get("gen")
            if old_gen != gen:
                raise ValueError(f"shard {job['name']} in {out} was made with settings {old_gen} "
                                 f"(e=envs_per_worker, p=episodes_per_shard, m=max_frames_per_episode, "
                                 f"h=hold_mean of the held-action agent), this run "
                                 f"asks for {gen}: re-run with the same settings, or use another --seed or --out")
            if len(have) >= job["count"]:
                skipped += 1
                continue
        jobs.append(job)

    per_episode = long or min(max_frames or EPISODE_FRAME_CAP, EST_FRAMES_PER_EPISODE)
    need = estimate_bytes(sum(j["count"] for j in jobs) * per_episode, RESOLUTION)
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise DiskSpaceError(
            f"not enough disk space in {probe}: {len(jobs)} shard(s) of {game} need about {need / 1e9:.2f} GB "
            f"({need} bytes, {per_episode} frames per episode estimated) but only {free / 1e9:.2f} GB ({free} bytes) "
            f"are free; ask for fewer --episodes, set --max-frames-per-episode, or stream with StreamingClips")
    EpisodeStore.create(out, RESOLUTION, meta=meta)

    from tqdm.auto import tqdm

    t0 = time.time()
    total = sum(j["count"] for j in jobs)
    with tqdm(total=total, unit="ep", desc=f"{game} {split}", disable=not verbose or total == 0) as bar:
        n_proc = min(workers, len(jobs))
        if n_proc <= 1:
            eps = frames = nbytes = 0
            for job in jobs:
                e, f, b = _shard_job(str(out), job, on_episode=lambda t: bar.update(1))
                eps, frames, nbytes = eps + e, frames + f, nbytes + b
        else:
            eps, frames, nbytes = _run_parallel(str(out), jobs, n_proc, bar)
    seconds = time.time() - t0
    store = EpisodeStore(out)
    summary = {"episodes": eps, "frames": frames, "bytes": nbytes, "seconds": round(seconds, 3),
               "frames_per_s": round(frames / seconds, 1) if seconds > 0 else 0.0, "skipped_shards": skipped,
               "shards": len(jobs), "store_episodes": store.num_episodes, "store_frames": store.num_frames}
    if verbose:
        print(f"{game} {split}: wrote {eps} episodes, {frames} frames, {nbytes / 1e6:.1f} MB in {seconds:.1f} s "
              f"({summary['frames_per_s']:.0f} frames/s); skipped {skipped} existing shard(s); "
              f"store {out} now holds {store.num_episodes} episodes, {store.num_frames} frames")
    return summary


# ------------------------------------------------------------------------------ streaming
class StreamingClips(IterableDataset):
    """Endless clips from live CoinRun envs (no disk) played by `policy` (held actions by
    default): the same items as ClipDataset.

    Each DataLoader worker of each rank runs `num_envs` envs with its own seeds; clips are
    cut from finished episodes every `stride` frames (random phase), never across an
    episode boundary, and mixed through a shuffle buffer of `shuffle_buffer` clips.
    "episode" numbers episodes within one rank (counter * num_workers + worker id).
    """

    def __init__(self, clip_len: int = 16, split: str = "train", num_envs: int = 8, seed: int = 0, rank: int = 0,
                 distribution_mode: str = "hard", stride: int | None = None, shuffle_buffer: int = 256,
                 policy: AgentPolicy = HELD):
        split_range(split)
        _check_mode(distribution_mode)
        if int(clip_len) < 1 or int(num_envs) < 1:
            raise ValueError(f"clip_len and num_envs must be >= 1, got {clip_len}, {num_envs}")
        self.clip_len, self.split, self.num_envs = int(clip_len), split, int(num_envs)
        self.seed, self.rank, self.mode = int(seed), int(rank), distribution_mode
        self.stride = int(stride or clip_len)
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.policy = policy
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")

    def __iter__(self) -> Iterator[dict]:
        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        env_seed, rng = _seeds(self.seed, _SPLIT_ID[self.split], _MODE_ID[self.mode], _STREAM_TAG, self.rank, wid)
        env = make_env(self.num_envs, self.split, env_seed, self.mode)
        buf: list[dict] = []
        L = self.clip_len
        for k, (frames, actions, rewards, _info) in enumerate(run_episodes(env, rng, policy=self.policy)):
            t = len(frames)
            if t < L:
                continue
            phase = int(rng.integers(0, min(self.stride, t - L + 1)))
            for s in range(phase, t - L + 1, self.stride):
                buf.append({"frames": torch.from_numpy(frames[s: s + L].copy()),
                            "actions": torch.from_numpy(actions[s: s + L - 1].copy()),
                            "rewards": torch.from_numpy(rewards[s: s + L - 1].copy()),
                            "episode": k * nw + wid, "start": s})
                if len(buf) >= self.shuffle_buffer:
                    j = int(rng.integers(len(buf)))
                    buf[j], buf[-1] = buf[-1], buf[j]
                    yield buf.pop()
