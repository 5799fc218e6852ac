"""driftless world build|refit-actions|info"""

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
            raise ValueError("--action-data needs --lam (the map links LAM codes to what they do)")
        try:
            action_map = fit_world_action_map(args.lam, args.action_data, max_clips=args.action_clips)
            print(f"co-occurrence action map accuracy {action_map['accuracy']:.3f} (majority baseline "
                  f"{action_map['majority_baseline']:.3f}) on {action_map['pairs']} transitions")
        except ValueError as e:  # a store of video files has no true actions
            if args.action_fit == "cooccurrence" or not args.dynamics:
                raise
            print(f"no co-occurrence map: {e}")
    sampling = {"steps": args.steps} if args.steps else {}
    meta = build_world(args.out, args.tokenizer, args.dynamics, args.lam, fp16=not args.fp32, sampling=sampling,
                       action_map=action_map, name=args.name)
    if args.action_data and args.dynamics and args.action_fit != "cooccurrence":
        _refit(args.out, args, method=args.action_fit)  # by effect (Procgen) or scene motion (video files)
    size = world_bytes(args.out)
    print(json.dumps({"world": args.out, "parameters": meta["parameters"], "bytes": size}, indent=2))
    if args.max_mb and size > args.max_mb * 1e6:
        raise ValueError(f"the world takes {size / 1e6:.2f} MB, over --max-mb {args.max_mb}")
    return 0


def _refit(world: str, args: argparse.Namespace, method: str) -> dict:
    from driftless.world.build import refit_action_map
    from driftless.world.controls import BranchConfig

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    fit = BranchConfig(starts=args.action_starts, frames=args.action_frames, measure=args.measure, seed=args.seed,
                       batch_size=args.batch_size)
    am = refit_action_map(world, method=method, data=args.action_data, fit=fit, game=args.game,
                          eval_starts=args.eval_starts, previews=not args.no_previews, progress=not args.no_progress)
    print(f"action map ({am['method']}): " + ", ".join(f"{k!r} -> {v}" for k, v in am["keys"].items()))
    held = am.get("heldout")
    if held:
        acc, before = held["accuracy"], held["previous_accuracy"]
        def fmt(a):
            return ", ".join(f"{c} {v:.2f}" for c, v in a["controls"].items() if v is not None) + \
                (f"; mean {a['mean']:.3f}" if a["mean"] is not None else "")
        print(f"controls accuracy on {held['starts']} held-out test states (chance {acc['chance']:.3f}): "
              f"{fmt(acc)}; the map it replaces: {fmt(before) if before['mean'] is not None else 'none'}")
    return am


def _refit_cmd(args: argparse.Namespace) -> int:
    from driftless.world.build import world_folder

    folder = world_folder(args.world)
    _refit(args.world, args, method=args.method)
    print(f"wrote {folder / 'world.json'}")
    return 0


def _fit_flags(p, data_help: str) -> None:
    g = p.add_argument_group("fitting the key map by effect")
    g.add_argument("--game", help="Procgen game to branch (default: the store's, the map's earlier fit, or coinrun)")
    g.add_argument("--action-starts", type=int, default=32, help="branch points (or clips) fitted on (default 32)")
    g.add_argument("--action-frames", type=int, default=8, help="frames each control / latent action is held "
                                                                 "(default 8)")
    g.add_argument("--eval-starts", type=int, default=32,
                   help="held-out test branch points measuring the map's controls accuracy (default 32; 0: skip)")
    g.add_argument("--measure", choices=["shift", "pixel"], default="shift",
                   help="how branches are compared: scene shift trajectories (default) or pixel MSE")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=64, help="world rollouts per forward pass")
    g.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a shared machine)")
    g.add_argument("--no-previews", action="store_true", help="write no preview strips of the latent actions")
    g.add_argument("--no-progress", action="store_true")


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
    b.add_argument("--action-data", help="a store: fit the keyboard action map with it (a Procgen store: by what "
                                         "each latent action does against the game's controls; video files: by "
                                         "scene motion; co-occurrence with its true actions kept as evidence)")
    b.add_argument("--action-clips", type=int, default=512, help="clips used for the co-occurrence map")
    b.add_argument("--action-fit", choices=["auto", "effect", "motion", "cooccurrence"], default="auto",
                   help="how keys are assigned to latent actions (default auto: effect where the game is "
                        "available, else scene motion; cooccurrence: the counts only)")
    b.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16)")
    b.add_argument("--max-mb", type=float, help="fail if the world folder is larger than this many MB")
    _fit_flags(b, "")
    b.set_defaults(func=_build)
    r = verbs.add_parser(
        "refit-actions", help="refit a world's key -> latent action map by what the latent actions do",
        description="Decide which latent action each key means from what it does: branch the real game (Procgen) "
                    "from saved states holding each control, roll the world out from the same frames holding each "
                    "latent action, and assign keys to latent actions one-to-one by how often the branches match. "
                    "Rewrites world.json's action_map (the evidence: scores of every key x latent action, held-out "
                    "controls accuracy before and after) and writes preview strips of every latent action.",
        epilog="examples:\n  driftless world refit-actions coinrun --game coinrun --threads 1\n"
               "  driftless world refit-actions runs/world --method motion --action-data data/my-videos",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("world", help="world folder, or a shipped world's name (rewrites the packaged world.json)")
    r.add_argument("--method", choices=["auto", "effect", "motion", "cooccurrence"], default="auto",
                   help="effect: branch the game; motion: scene motion on --action-data clips (worlds from video "
                        "files); cooccurrence: latent actions vs the true actions of --action-data; auto: effect "
                        "where Procgen and the game are available, else motion, else co-occurrence")
    r.add_argument("--action-data", help="a store: clips for the motion fit, true actions for co-occurrence")
    _fit_flags(r, "")
    r.set_defaults(func=_refit_cmd)
    i = verbs.add_parser("info", help="print a world's components, sizes and action map")
    i.add_argument("world", nargs="?", default="coinrun")
    i.set_defaults(func=_info)
