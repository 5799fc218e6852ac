"""`driftless data ...`: make and inspect episode stores."""

from __future__ import annotations

import argparse
import os

_EPILOG_COINRUN = """\
examples:
  driftless data coinrun --out data/coinrun-train --episodes 10000 --split train
  driftless data coinrun --out data/coinrun-val --episodes 500 --split val --workers 4
  driftless data coinrun --out data/coinrun-test --episodes 8 --split test --same-level-frames 1100
      (8 long episodes, each one test level played for 1100 frames across its restarts: the
       real reference of `driftless eval`'s same-level drift measure)

Re-running the same command resumes: shards already written are skipped. Episode content
depends on --seed, --envs-per-worker, --episodes-per-shard, --max-frames-per-episode and the
agent (--policy, --hold-mean), not on --workers. Use one --out folder per split. The default
agent holds each random action for 6 frames on average, so that what an action does shows in
the frames; --policy uniform draws a new action every frame (Genie's setting; stores made
before the option are uniform). A hard-mode random-agent episode averages
about 620 frames (12 KiB each at 64x64), so 10000 episodes take about 80 GB."""

_EPILOG_VIDEOS = """\
example:
  driftless data videos --in clips/ --out data/my-videos --size 64

Every video (mp4, webm, gif, mov, avi, mkv; searched recursively) becomes one episode,
center-cropped to a square and resized. Files already ingested are skipped, so an
interrupted run can simply be started again; unreadable files are reported and skipped."""


def register(sub) -> argparse._SubParsersAction:
    from driftless.data.coinrun import PROCGEN_GAMES

    p = sub.add_parser("data", help="make and inspect episode stores (CoinRun, video folders)",
                       description="Make and inspect episode stores: sharded, memory-mapped folders of "
                                   "frames, actions, rewards and episode boundaries.")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    dsub = p.add_subparsers(dest="data_verb", metavar="COMMAND")

    c = dsub.add_parser("coinrun", help="generate Procgen CoinRun episodes with a random agent",
                        description="Generate random-agent Procgen CoinRun episodes (64x64 RGB, 15 actions,\n"
                                    "true actions and rewards kept) into an episode store. Level seeds:\n"
                                    "train [0, 10000), val [10000, 10500), test [10500, 11000).",
                        epilog=_EPILOG_COINRUN, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--out", required=True, help="store folder to create or extend")
    c.add_argument("--episodes", type=int, required=True, help="number of episodes the store should hold for this seed")
    c.add_argument("--split", choices=["train", "val", "test"], default="train", help="level split (default: train)")
    c.add_argument("--workers", type=int, default=None, help="parallel processes (default: number of CPUs)")
    c.add_argument("--envs-per-worker", type=int, default=16, help="vectorised envs per process (default: 16)")
    c.add_argument("--episodes-per-shard", type=int, default=None,
                   help="episodes per shard, the unit of resumption (default: 64)")
    c.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    c.add_argument("--mode", choices=["hard", "easy"], default="hard", help="procgen distribution mode (default: hard)")
    c.add_argument("--max-frames-per-episode", type=int, default=None,
                   help="cut episodes to at most this many frames (default: keep whole episodes, at most 1000)")
    c.add_argument("--same-level-frames", type=int, default=None, metavar="N",
                   help="make long episodes instead: each plays one level for exactly N frames, the level "
                        "restarting when the agent dies or finishes (restart frames in the episode's info, "
                        "'resets'); they sit beside ordinary episodes in the same store")
    c.add_argument("--game", choices=PROCGEN_GAMES, default="coinrun",
                   help="another Procgen game instead of CoinRun (default: coinrun; see docs/architecture.md for "
                        "what else a new game needs)")
    c.add_argument("--policy", choices=["held", "uniform"], default="held",
                   help="the random agent: held (default, for world training) holds each action for a random "
                        "number of frames, geometric with mean --hold-mean; uniform draws a new action every frame "
                        "(Genie's setting)")
    c.add_argument("--hold-mean", type=float, default=None,
                   help="mean frames an action is held by the held agent (default: 6)")
    c.set_defaults(func=_coinrun)

    v = dsub.add_parser("videos", help="ingest a folder of video files",
                        description="Ingest a folder of video files (decoded with PyAV) into an episode store;\n"
                                    "actions are unknown (-1) and rewards zero.",
                        epilog=_EPILOG_VIDEOS, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--in", dest="in_dir", required=True, help="folder searched recursively for videos")
    v.add_argument("--out", required=True, help="store folder to create or extend")
    v.add_argument("--size", type=int, default=64, help="output frames are SIZE x SIZE RGB (default: 64)")
    v.add_argument("--max-frames", type=int, default=None, help="keep at most this many frames per video")
    v.add_argument("--fps", type=float, default=None, help="subsample to about this frame rate (default: every frame)")
    v.set_defaults(func=_videos)

    i = dsub.add_parser("info", help="summarise an episode store",
                        description="Print an episode store's episodes, frames, size on disk, resolution and "
                                    "whether actions and rewards are present.")
    i.add_argument("store", metavar="DIR", help="store folder")
    i.set_defaults(func=_info)

    return dsub  # the showcases add their data verbs here (driftless.cli.build_parser)


def _coinrun(args) -> int:
    from driftless.data.coinrun import DEFAULT_EPISODES_PER_SHARD, DEFAULT_HOLD_MEAN, AgentPolicy, generate

    if args.policy == "uniform" and args.hold_mean is not None:
        raise ValueError("--hold-mean applies to --policy held only")
    policy = AgentPolicy(args.policy, args.hold_mean or DEFAULT_HOLD_MEAN)
    generate(args.out, args.episodes, split=args.split, workers=args.workers or os.cpu_count(),
             envs_per_worker=args.envs_per_worker, seed=args.seed, distribution_mode=args.mode,
             max_frames_per_episode=args.max_frames_per_episode,
             episodes_per_shard=args.episodes_per_shard or DEFAULT_EPISODES_PER_SHARD, game=args.game,
             policy=policy, same_level_frames=args.same_level_frames)
    return 0


def _videos(args) -> int:
    from driftless.data.videos import ingest_videos

    summary = ingest_videos(args.in_dir, args.out, size=args.size, max_frames=args.max_frames, fps=args.fps)
    return 0 if summary["ingested"] + summary["skipped_existing"] > 0 or not summary["failed"] else 1


def _info(args) -> int:
    import numpy as np

    from driftless.data.store import EpisodeStore

    store = EpisodeStore(args.store)
    lengths = store.episode_lengths
    transitions = known = nonzero = 0
    reward_sum = 0.0
    for ep in range(store.num_episodes):
        a, r = store.actions(ep)[:-1], store.rewards(ep)[:-1]  # the last entry is always -1 / 0
        transitions += len(a)
        known += int((a >= 0).sum())
        nonzero += int(np.count_nonzero(r))
        reward_sum += float(r.sum())
    h, w = store.resolution
    print(f"store:       {store.root}")
    print(f"resolution:  {h}x{w}")
    print(f"shards:      {len(store.shard_names)}")
    print(f"episodes:    {store.num_episodes}")
    print(f"frames:      {store.num_frames}")
    if len(lengths):
        print(f"length:      min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}")
    print(f"bytes:       {store.total_bytes()} ({store.total_bytes() / 1e9:.3f} GB)")
    pct = 100.0 * known / transitions if transitions else 0.0
    print(f"actions:     {'known' if known == transitions and transitions else 'unknown' if not known else 'partly known'}"
          f" for {known}/{transitions} transitions ({pct:.1f}%)")
    print(f"rewards:     {nonzero} non-zero transitions, sum {reward_sum:g}")
    finals = [store.info(i).get("final_reward") for i in range(store.num_episodes)]
    finals = [f for f in finals if f is not None]
    if finals:
        print(f"final reward: {sum(1 for f in finals if f)} of {len(finals)} episodes end with a reward "
              f"(kept in episode info; the unobserved terminal transition)")
    if store.meta:
        print(f"meta:        {store.meta}")
    return 0
