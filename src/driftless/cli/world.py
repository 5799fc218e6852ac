"""driftless world build|refit-actions|tune|info"""

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
    from driftless.runtime import check_device
    from driftless.world.build import refit_action_map
    from driftless.world.controls import BranchConfig

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    fit = BranchConfig(starts=args.action_starts, frames=args.action_frames, measure=args.measure, seed=args.seed,
                       batch_size=args.batch_size)
    am = refit_action_map(world, method=method, data=args.action_data, fit=fit, game=args.game,
                          eval_starts=args.eval_starts, previews=not args.no_previews, progress=not args.no_progress,
                          device=check_device(args.device))
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
    g.add_argument("--device", help="cpu | cuda | cuda:N: where the world rolls out (default: cuda when available)")
    g.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a shared machine)")
    g.add_argument("--no-previews", action="store_true", help="write no preview strips of the latent actions")
    g.add_argument("--no-progress", action="store_true")


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 15,100,300,500, got {text!r}")
    if not levels:
        raise argparse.ArgumentTypeError("give at least one context level")
    return levels


def _optional_list(cast, example: str):
    """An argparse type: comma-separated values of `cast` (e.g. "1,0.85,0.7"), or 'none' / 'off' /
    '' for an empty tuple (that part of the tune is skipped)."""
    what = "integers" if cast is int else "numbers"

    def parse(text: str) -> tuple:
        if text.strip().lower() in ("", "none", "off"):
            return ()
        try:
            return tuple(cast(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} such as {example} (or 'none'), "
                                             f"got {text!r}")
    return parse


def _tune(args: argparse.Namespace) -> int:
    from driftless.checkpoint import write_json
    from driftless.eval.tune import TuneConfig, tune_context_level
    from driftless.runtime import check_device
    from driftless.world.build import world_folder

    cfg = TuneConfig(levels=args.levels, split=args.split, allow_test=args.allow_test, clips=args.clips,
                     horizon=args.horizon, rollouts=args.rollouts, frames=args.frames, drift_window=args.drift_window,
                     psnr_tolerance=args.psnr_tolerance, max_frozen=args.max_frozen, min_gain=args.min_gain,
                     temperatures=args.temperatures, temperature_min_gain=args.temperature_min_gain,
                     steps=args.steps, steps_tolerance=args.steps_tolerance, fused_commit=args.tune_fused_commit,
                     batch_size=args.batch_size,
                     seed=args.seed, progress=not args.no_progress)
    folder = world_folder(args.world)  # (a missing world fails here, before the store is read)
    record = tune_context_level(folder, args.data, cfg, write=not args.dry_run, threads=args.threads,
                                device=check_device(args.device))
    print(f"{'  '.join(f'{k:>14}' for k in ('context level', 'PSNR (dB)', 'same-level', 'morphed', 'frozen', 'NN-PSNR last'))}")
    for r in record["candidates"]:
        cells = [r["context_level"], r["psnr"], r["same_level_score"], r["morphed_rate"], r["frozen_rate"],
                 r["nn_psnr_last"]]
        print("  ".join(f"{c:>14.3f}" if isinstance(c, float) else f"{str(c):>14}" for c in cells))
    for level, why in record["excluded"].items():
        print(f"not eligible: context level {level}: {why}")
    print(f"chosen: context level {record['chosen']} (was {record['previous']}): {record['reason']}")
    temp = record.get("temperature")
    if temp:
        print("  ".join(f"temperature {r['temperature']}: {r['psnr']:.2f} dB" for r in temp["candidates"]))
        print(f"chosen: temperature {temp['chosen']} (was {temp['previous']}): {temp['reason']}")
    steps = record.get("steps")
    if steps:
        print("  ".join(f"{r['steps']} steps: {r['psnr']:.2f} dB" for r in steps["candidates"]))
        print(f"chosen: {steps['chosen']} sampling steps (was {steps['previous']}): {steps['reason']}")
    fused = record.get("fused_commit")
    if fused:
        print(f"fused_commit on: {fused['on']['short']['psnr']:.2f} dB, off: {fused['off']['short']['psnr']:.2f} dB")
        state = {True: "on", False: "off"}
        print(f"chosen: fused_commit {state[fused['chosen']]} (was {state[fused['previous']]}): {fused['reason']}")
    if args.dry_run:
        print(f"--dry-run: {folder / 'world.json'} unchanged")
    else:
        also = (f", sampling.temperature = {temp['chosen']}" if temp else "") + \
               (f", sampling.steps = {steps['chosen']}" if steps else "") + \
               (f", sampling.fused_commit = {str(fused['chosen']).lower()}" if fused else "")
        print(f"wrote sampling.context_level = {record['chosen']}{also} and the evidence under tuning. to "
              f"{folder / 'world.json'}")
    write_json(record, args.json)
    return 0


def _sampling(args: argparse.Namespace) -> int:
    """Show or set the sampling defaults stored in world.json (checked by loading the world first)."""
    from driftless.checkpoint import atomic_write_json
    from driftless.cli.evaluate import SAMPLING_FLAGS  # the same settings eval takes as flags
    from driftless.world.build import world_folder
    from driftless.world.world import load

    folder = world_folder(args.world)
    meta = json.loads((folder / "world.json").read_text())
    before = dict(meta.get("sampling", {}))
    new = dict(before)
    if args.copy_from:
        src = json.loads((world_folder(args.copy_from) / "world.json").read_text())
        new = dict(src.get("sampling", {}))
    given = {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k) is not None}
    new.update(given)
    for k in args.unset or ():
        if k not in SAMPLING_FLAGS:
            raise SystemExit(f"--unset takes one of {', '.join(SAMPLING_FLAGS)}, got {k!r}")
        new.pop(k, None)
    if new == before:
        print(json.dumps(before, indent=2))
        return 0
    w = load(folder, device="cpu")
    try:  # the world's own check: ranges, the model's noise levels and window, fused_commit's needs
        w._options(w.sampling.__class__(), new)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"{folder / 'world.json'} unchanged: {e}") from None
    meta["sampling"] = new
    atomic_write_json(folder / "world.json", meta)
    for k in sorted(set(before) | set(new)):
        if before.get(k) != new.get(k):
            print(f"sampling.{k}: {before.get(k, '(default)')} -> {new.get(k, '(default)')}")
    print(f"wrote {folder / 'world.json'}")
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
                      "tuned": {k: {f: v.get(f) for f in ("chosen", "date", "data", "reason")}
                                for k, v in w.meta.get("tuning", {}).items()},
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
    sm = verbs.add_parser(
        "sampling", help="show or set the sampling defaults in world.json (steps, guidance, noise, window)",
        description="Print a world's sampling defaults, or change them: each flag given replaces one setting in "
                    "world.json (written atomically after the world has checked the new settings). `driftless "
                    "world tune` chooses context level, temperature, steps and fused_commit on validation data; "
                    "this verb sets them by hand, e.g. to try classifier-free guidance on the action.",
        epilog="examples:\n  driftless world sampling coinrun\n"
               "  driftless world sampling runs/world --cfg-scale 2 --no-fused-commit\n"
               "  driftless world sampling runs/world --from coinrun     # copy another world's settings",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sm.add_argument("world", help="world folder, or a shipped world's name (rewrites the packaged world.json)")
    sm.add_argument("--from", dest="copy_from", metavar="WORLD",
                    help="start from this world's sampling settings (then apply the flags)")
    sm.add_argument("--steps", type=int, help="denoising steps per frame")
    sm.add_argument("--cfg-scale", type=float, help="classifier-free guidance on the action (1 = off)")
    sm.add_argument("--cfg-steps", type=int, help="guide only the first N denoising steps (unset: every step; "
                                                  "fewer than --steps keeps fused_commit possible)")
    sm.add_argument("--eta", type=float, help="DDIM stochasticity in [0, 1]")
    sm.add_argument("--context-level", type=int, help="noise level the past is held at")
    sm.add_argument("--temperature", type=float, help="initial noise scale")
    sm.add_argument("--history-guidance", type=float, help="history guidance weight (1 = off)")
    sm.add_argument("--window", type=int, help="frames the dynamics attends (at most its training window)")
    sm.add_argument("--fused-commit", action=argparse.BooleanOptionalAction, default=None,
                    help="one backbone pass fewer per frame (needs no history guidance, and cfg-scale 1 or "
                         "cfg-steps below steps)")
    sm.add_argument("--unset", nargs="+", metavar="NAME", help="drop settings back to the defaults")
    sm.set_defaults(func=_sampling)
    from driftless.eval.tune import DEFAULT_LEVELS, DEFAULT_STEPS, DEFAULT_TEMPERATURES, TuneConfig

    d = TuneConfig()
    t = verbs.add_parser(
        "tune", help="choose the world's context noise level, temperature and sampling steps on validation data "
                     "and store them in world.json",
        description="Sampling frame by frame, the dynamics holds its generated past at a diffusion noise level, "
                    "the context level (the dynamics' config: 15 of 1000). A noisier past can keep long rollouts "
                    "on the player's level (docs/benchmarks.md, 1.6), too noisy loses the past. This measures "
                    "each candidate level on validation episodes, with the same rollouts for every candidate: "
                    f"short horizon, the GenieRedux protocol (1 real frame, {d.horizon} generated with the LAM's "
                    "actions, PSNR against the real frames); long horizon, the same-level score of "
                    "--frames-frame rollouts with random actions (the share of the last --drift-window frames "
                    "whose palette stays inside real one-level play's 90th percentile; real play scores about "
                    "0.9). Rule: among candidates whose PSNR is within --psnr-tolerance dB of the best one's and "
                    "whose rollouts are at most --max-frozen frozen, the highest same-level score (ties: higher "
                    "PSNR); it replaces the current level only if it scores at least --min-gain more. Then, at that "
                    "level, the temperature (each frame's initial noise scale) with the best short-horizon PSNR of "
                    "--temperatures, if it gains at least --temperature-min-gain dB and its long rollouts are not "
                    "more frozen than --max-frozen nor --min-gain lower on same-level score. Last, at that level "
                    "and temperature, the sampling steps per frame (each a pass of the dynamics: they set the "
                    "frame rate of play on a CPU): the fewest of --steps within --steps-tolerance dB of the best "
                    "short-horizon PSNR whose long rollouts hold. Then fused_commit (the last denoising pass "
                    "commits the frame: one pass fewer) on and off, on if within --steps-tolerance dB and its "
                    "long rollouts hold (--no-tune-fused-commit: not measured). The choices go into world.json as "
                    "sampling.context_level, sampling.temperature, sampling.steps and sampling.fused_commit (the "
                    "defaults of World, "
                    "play, eval and the ONNX export), with every candidate's numbers, the data, the rule and the "
                    "date under tuning.; the file is replaced atomically.",
        epilog="examples:\n"
               "  driftless data coinrun --out data/val-long --episodes 16 --split val --same-level-frames 450\n"
               "  driftless world tune worlds/mine --data data/val-long --threads 1   # a few minutes on 2 CPU cores\n"
               "  driftless world tune coinrun --data data/val-long --rollouts 8 --frames 400 --dry-run --json t.json\n\n"
               "The store needs real episodes that play one level for 1 + --frames frames (--same-level-frames),\n"
               "the reference of the same-level score. A store of the test split is refused (--allow-test).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("world", help="world folder, or a shipped world's name (rewrites the packaged world.json)")
    t.add_argument("--data", required=True, help="validation episode store with long one-level episodes (or a folder "
                                                 "holding SPLIT/ or a sibling DATA-SPLIT)")
    t.add_argument("--levels", type=_levels, default=DEFAULT_LEVELS, metavar="L1,L2,...",
                   help=f"candidate context levels, 0 (clean) up to the dynamics' levels (default "
                        f"{','.join(map(str, DEFAULT_LEVELS))}; the world's current level is always measured too)")
    t.add_argument("--temperatures", type=_optional_list(float, "1,0.85,0.7,0.5"), default=DEFAULT_TEMPERATURES,
                   metavar="T1,T2,...",
                   help=f"candidate temperatures at the chosen level (default "
                        f"{','.join(map(str, DEFAULT_TEMPERATURES))}; the current one is always measured; 'none': "
                        f"the temperature is not tuned)")
    t.add_argument("--steps", type=_optional_list(int, "2,3,4,8"), default=DEFAULT_STEPS, metavar="N1,N2,...",
                   help=f"candidate sampling steps per frame at the chosen level and temperature (default "
                        f"{','.join(map(str, DEFAULT_STEPS))}; the current ones are always measured; 'none': the "
                        f"steps are not tuned)")
    t.add_argument("--split", default=d.split, help=f"the split to tune on (default {d.split})")
    t.add_argument("--allow-test", action="store_true", help="tune on a store of the test split anyway (its test "
                                                             "figures are then no longer held out)")
    g = t.add_argument_group("measures")
    g.add_argument("--clips", type=int, default=d.clips, help=f"short horizon: clips (default {d.clips})")
    g.add_argument("--horizon", type=int, default=d.horizon, help=f"short horizon: generated frames scored "
                                                                  f"(default {d.horizon})")
    g.add_argument("--rollouts", type=int, default=d.rollouts, help=f"long horizon: rollouts per candidate "
                                                                    f"(default {d.rollouts})")
    g.add_argument("--frames", type=int, default=d.frames, help=f"long horizon: frames per rollout (default "
                                                                f"{d.frames}; the store needs one-level episodes of "
                                                                f"1 + this)")
    g.add_argument("--drift-window", type=int, default=d.drift_window,
                   help=f"the last frames the same-level score is taken over (default {d.drift_window})")
    g = t.add_argument_group("rule")
    g.add_argument("--psnr-tolerance", type=float, default=d.psnr_tolerance,
                   help=f"dB below the best short-horizon PSNR a candidate may lose (default {d.psnr_tolerance})")
    g.add_argument("--max-frozen", type=float, default=d.max_frozen,
                   help=f"largest share of frozen rollouts allowed (default {d.max_frozen})")
    g.add_argument("--min-gain", type=float, default=d.min_gain,
                   help=f"same-level score a candidate must gain over the current level (default {d.min_gain})")
    g.add_argument("--temperature-min-gain", type=float, default=d.temperature_min_gain,
                   help=f"short-horizon dB a temperature must gain over the current one (default "
                        f"{d.temperature_min_gain})")
    g.add_argument("--steps-tolerance", type=float, default=d.steps_tolerance,
                   help=f"short-horizon dB under the best candidate the fewest steps may lose (default "
                        f"{d.steps_tolerance})")
    g.add_argument("--tune-fused-commit", action=argparse.BooleanOptionalAction, default=d.fused_commit,
                   help="last, measure fused_commit on and off at the chosen level, temperature and steps (the "
                        "last denoising pass commits the frame: one backbone pass fewer per frame); on wins within "
                        "--steps-tolerance dB if its long rollouts hold (default: on, for worlds that can fuse)")
    g = t.add_argument_group("execution")
    g.add_argument("--dry-run", action="store_true", help="measure and choose, but leave world.json as it is")
    g.add_argument("--json", help="also write the tuning record to this JSON file")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"rollouts per forward pass "
                                                                        f"(default {d.batch_size})")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the clips, rollouts and sampling (the same "
                                                            "for every candidate)")
    g.add_argument("--device", help="cpu | cuda | cuda:N: where the world rolls out (default: cuda when available)")
    g.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a shared machine)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=_tune)
    i = verbs.add_parser("info", help="print a world's components, sizes and action map")
    i.add_argument("world", nargs="?", default="coinrun")
    i.set_defaults(func=_info)
