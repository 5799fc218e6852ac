"""driftless world build|info"""

from __future__ import annotations

import argparse
import json


def _build(args: argparse.Namespace) -> int:
    from driftless.checkpoint import refuse_overwrite
    from driftless.world.build import build_world, fit_world_action_map, world_bytes

    refuse_overwrite(args.out, args.force, "world")
    action_map = None
    if args.action_data:
        if not args.lam:
            raise ValueError("--action-data needs --lam (the map links LAM codes to true actions)")
        action_map = fit_world_action_map(args.lam, args.action_data, max_clips=args.action_clips)
        print(f"action map accuracy {action_map['accuracy']:.3f} "
              f"(majority baseline {action_map['majority_baseline']:.3f}) on {action_map['pairs']} transitions")
    sampling = {"steps": args.steps} if args.steps else {}
    meta = build_world(args.out, args.tokenizer, args.dynamics, args.lam, fp16=not args.fp32, sampling=sampling,
                       action_map=action_map, name=args.name)
    size = world_bytes(args.out)
    print(json.dumps({"world": args.out, "parameters": meta["parameters"], "bytes": size}, indent=2))
    if args.max_mb and size > args.max_mb * 1e6:
        raise ValueError(f"the world takes {size / 1e6:.2f} MB, over --max-mb {args.max_mb}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from driftless.models.common import num_params
    from driftless.world.build import world_bytes
    from driftless.world.world import load

    w = load(args.world)
    parts = {k: num_params(m) for k, m in (("tokenizer", w.tokenizer), ("lam", w.lam), ("dynamics", w.dynamics))
             if m is not None}
    print(json.dumps({"resolution": w.resolution, "num_actions": w.num_actions, "parameters": parts,
                      "sampling": w.sampling.__dict__, "action_map": w.action_map.get("keys", {}),
                      "action_map_accuracy": w.action_map.get("accuracy"),
                      "bytes": world_bytes(w.meta.get("_path", args.world)) if not args.world == "coinrun" else None},
                     indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("world", help="assemble or inspect a world (tokenizer + LAM + dynamics)")
    verbs = p.add_subparsers(dest="world_verb", metavar="VERB", required=True)
    b = verbs.add_parser("build", help="assemble a world folder from three checkpoints",
                         description="Copy the EMA weights of a tokenizer, LAM and dynamics checkpoint (fp16 by "
                                     "default, LAM decoder dropped) into one world folder with world.json.")
    b.add_argument("--tokenizer", required=True, help="tokenizer checkpoint folder")
    b.add_argument("--lam", help="LAM checkpoint folder")
    b.add_argument("--dynamics", help="dynamics checkpoint folder")
    b.add_argument("--out", required=True, help="world folder to write")
    b.add_argument("--force", action="store_true", help="replace a world already in --out")
    b.add_argument("--name", default="world")
    b.add_argument("--steps", type=int, help="default sampling steps per frame stored in world.json")
    b.add_argument("--action-data", help="a store with true actions: fit the keyboard action map on it")
    b.add_argument("--action-clips", type=int, default=512, help="clips used to fit the action map")
    b.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16)")
    b.add_argument("--max-mb", type=float, help="fail if the world folder is larger than this many MB")
    b.set_defaults(func=_build)
    i = verbs.add_parser("info", help="print a world's components, sizes and action map")
    i.add_argument("world", nargs="?", default="coinrun")
    i.set_defaults(func=_info)
