"""`driftless data procgen-games`: the built-in image-generation set (16 Procgen games, 64x64).

`driftless.cli.data` calls `register_games` to add the verb.
"""

from __future__ import annotations

import argparse
import json

_EPILOG = """\
examples:
  driftless data procgen-games --out data/procgen-games/train --per-game 400
  driftless data procgen-games --out data/procgen-games/val --per-game 100 --split val

Writes an ImageFolder (one folder per game, PNG files named <split>-NNNNN.png) that
`driftless image train --data` reads. Levels of the train / val / test splits are disjoint
(seeds [0, 10000), [10000, 10500), [10500, 11000)). Re-running skips finished games."""


def _run(args: argparse.Namespace) -> int:
    from driftless.data.images import GAMES, build_procgen_games

    games = GAMES if args.games in (None, "all") else tuple(g.strip() for g in args.games.split(",") if g.strip())
    summary = build_procgen_games(args.out, per_game=args.per_game, split=args.split, stride=args.stride,
                                  envs=args.envs, seed=args.seed, mode=args.mode, games=games,
                                  progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def register_games(data_sub: argparse._SubParsersAction) -> None:
    p = data_sub.add_parser(
        "procgen-games", help="make the 16-Procgen-games image set (64x64 frames, one class per game)",
        description="Run a uniform random agent in each of the 16 Procgen games and keep one 64x64 frame every "
                    "--stride steps of each of --envs environments (random phase per environment), until "
                    "--per-game frames per game are collected. Written as an ImageFolder of PNGs.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write (one sub-folder per game)")
    p.add_argument("--per-game", type=int, default=400, help="frames per game (default: 400)")
    p.add_argument("--split", choices=["train", "val", "test"], default="train",
                   help="level-seed range to draw levels from (default: train)")
    p.add_argument("--stride", type=int, default=24, help="keep one frame every STRIDE steps per env (default: 24)")
    p.add_argument("--envs", type=int, default=64, help="vectorised environments per game (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of levels and actions (default: 0)")
    p.add_argument("--mode", choices=["hard", "easy"], default="hard", help="Procgen distribution mode (default: hard)")
    p.add_argument("--games", default="all", help="comma-separated subset of the 16 games (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
