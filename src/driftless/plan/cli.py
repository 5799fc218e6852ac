"""`driftless plan train|tune|maze|show|cross`: Diffusion-Forcing planning (Maze2D, compositional crosses);
`driftless data maze`: D4RL-style Maze2D offline datasets on Gymnasium-Robotics' PointMaze."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from driftless.runtime import default_device

MAZE_NAMES = ["open", "umaze", "medium", "large"]

EXAMPLES = """examples:
  driftless data maze --maze medium --steps 1000000 --out data/maze
  driftless plan train --data data/maze/medium.npz --out runs/maze/medium-df
  driftless plan train --data data/maze/medium.npz --out runs/maze/medium-diffuser --baseline diffuser
  driftless plan tune --maze medium --checkpoint runs/maze/medium-df --guidance 1.5 3 6 12 --seed 1
  driftless plan maze --maze medium --checkpoint runs/maze/medium-df --method df df-plain --episodes 100 --mctg 4
  driftless plan maze --maze medium --checkpoint runs/maze/medium-diffuser --method diffuser-actions diffuser-pd
  driftless plan maze --maze medium --method controller random --multi-task
  driftless plan show --maze umaze --checkpoint runs/maze/umaze-df --guidance 0 3 12 --out plans.png
  driftless plan cross --out docs/img/cross.png
"""


def _train(args: argparse.Namespace) -> int:
    import torch

    from driftless.checkpoint import refuse_overwrite
    from driftless.config import parse_overrides
    from driftless.plan.train import train_maze_model

    refuse_overwrite(args.out, args.force, "checkpoint")
    torch.set_num_threads(args.threads)
    # fp32: full-precision matmuls too (the planner regresses positions to a few thousandths)
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "bf16"
    info = train_maze_model(args.data, args.out, args.baseline, args.preset, args.steps, args.batch, args.lr,
                            args.frame_stack, args.tokens, default_device(args.device), args.seed,
                            max_minutes=args.max_minutes, compile=args.compile, half=args.half,
                            init_from=args.init_from, overrides=parse_overrides(args.set),
                            bf16=args.precision == "bf16")
    print(json.dumps(info))
    return 0


def _maze(args: argparse.Namespace) -> int:
    import torch

    from driftless.checkpoint import atomic_write_json
    from driftless.plan.evaluate import evaluate, plot_rollouts

    torch.set_num_threads(args.threads)
    device = default_device(args.device)
    model = _checked_model(args, device) if args.checkpoint else None
    fs = model.cfg.meta.get("frame_stack", 1) if model is not None else 1
    guidance, source = _guidance(args)
    pcfg = _planner_config(args, model, guidance)
    if source != "--guidance":
        print(f"goal guidance scale {guidance:g} ({source})")
    summaries = []
    for method in args.method:
        res = evaluate(args.maze, method, args.episodes, model=model, planner_cfg=pcfg, multi_task=args.multi_task,
                       batch=args.batch, seed=args.seed, keep_positions=bool(args.plot))
        s = res.summary()
        s.update({"frame_stack": fs, "horizon_tokens": pcfg.horizon, "mctg": args.mctg if method == "df" else 1,
                  "guidance": guidance, "guidance_from": source, "alpha_power": args.guidance_alpha_power,
                  "schedule": args.schedule, "sampling_steps": args.sampling_steps, "clean_level": args.clean_level,
                  "precision": args.precision, "device": device})
        summaries.append(s)
        print(json.dumps(s))
        if args.plot:
            path = Path(args.plot)
            if len(args.method) > 1:
                path = path.with_name(f"{path.stem}-{method}{path.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            task = "multi-task" if args.multi_task else "single task"
            plot_rollouts(res, path, title=f"{method}, {args.maze} ({task}): {s['normalized_mean']:.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, summaries)
    return 0


def _device_flags(p: argparse.ArgumentParser, threads_help: str = "CPU threads for torch") -> None:
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=1, help=threads_help)


def _planner_flags(p: argparse.ArgumentParser) -> None:
    """The Diffusion-Forcing planner's settings, shared by `plan maze` and `plan tune`."""
    p.add_argument("--mctg", type=int, default=4, help="MCTG: futures averaged per guidance step (method df)")
    p.add_argument("--guidance-alpha-power", type=float, default=0.0,
                   help="guidance weight sigma^2/alpha^p: 1 is classifier guidance, 0 (default) guides "
                        "less at the noisiest levels")
    p.add_argument("--horizon", type=int, help="plan horizon in tokens (default: the training window)")
    p.add_argument("--schedule", default="pyramid", choices=["pyramid", "autoregressive", "full_sequence"])
    p.add_argument("--uncertainty", type=float, default=1.0, help="pyramid: rows each token lags the previous")
    p.add_argument("--sampling-steps", type=int, help="DDIM steps per token (default: the model's)")
    p.add_argument("--open-loop", type=int, default=1, help="tokens executed per plan before re-planning")
    p.add_argument("--clean-level", type=int, default=0,
                   help="noise level the model is told for clean tokens (1: the nearest level it was trained on; "
                        "0: the exact one); matters where a plan is used past its first token (--open-loop > 1, "
                        "plan show): one-token MPC executes a token denoised before any is clean")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="planning on a GPU: fp32 (default; as the Diffusion Forcing authors evaluate) or bf16 "
                        "autocast (faster, the network's outputs to about 3 significant digits); CPU: fp32")


def _checked_model(args: argparse.Namespace, device: str):
    """The --checkpoint's sequence model, refused when it was trained on another maze than --maze."""
    from driftless.models.registry import load_model

    model = load_model(args.checkpoint, device, kind="sequence_df")
    if model.cfg.meta.get("maze") not in (None, args.maze):
        raise ValueError(f"{args.checkpoint} was trained on maze {model.cfg.meta['maze']!r}, not {args.maze!r}")
    return model


def _planner_config(args: argparse.Namespace, model, guidance: float = 1.0):
    """The planner settings of `_planner_flags`; the horizon defaults to the model's training
    window (30 tokens without a model)."""
    from driftless.plan.planner import PlannerConfig

    horizon = args.horizon or (model.cfg.meta.get("tokens", 30) if model is not None else 30)
    return PlannerConfig(horizon=horizon, schedule=args.schedule, uncertainty=args.uncertainty,
                         sampling_steps=args.sampling_steps, guidance_scale=guidance,
                         guidance_alpha_power=args.guidance_alpha_power, mctg_samples=args.mctg,
                         open_loop=args.open_loop, clean_level=args.clean_level, precision=args.precision)


DEFAULT_GUIDANCE = 3.0  # benchmarks 8's scale, used when a checkpoint has no tuned one


def _guidance(args: argparse.Namespace) -> tuple[float, str]:
    """The goal-guidance scale for `plan maze` and where it came from: --guidance, else the
    checkpoint's planner.json (from `plan tune`) for this task, else the default."""
    from driftless.plan.evaluate import PLANNER_SETTINGS, load_planner_settings

    if args.guidance is not None:
        return args.guidance, "--guidance"
    task = "multi_task" if args.multi_task else "single_task"
    record = load_planner_settings(args.checkpoint).get(task)
    if record and "guidance" in record:
        return float(record["guidance"]), f"tuned, {Path(args.checkpoint) / PLANNER_SETTINGS}"
    return DEFAULT_GUIDANCE, "default"


def _tune(args: argparse.Namespace) -> int:
    import torch

    from driftless.plan.evaluate import save_planner_settings, tune_guidance

    torch.set_num_threads(args.threads)
    device = default_device(args.device)
    pcfg = _planner_config(args, _checked_model(args, device))  # the scale is set per scored value
    record = tune_guidance(args.maze, args.checkpoint, args.guidance, pcfg, method=args.method,
                           episodes=args.episodes, batch=args.batch, seed=args.seed, multi_task=args.multi_task,
                           device=device, workers=args.workers)
    record["device"] = device
    path = save_planner_settings(args.checkpoint, record, args.multi_task)
    for s in record["scores"]:
        print(json.dumps(s))
    print(json.dumps({"chosen_guidance": record["guidance"], "settings": str(path)}))
    if args.json:
        from driftless.checkpoint import atomic_write_json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, record)
    return 0


def _starts(text: str):
    """`x:y,x:y,...` (centred maze coordinates) -> [[x, y], ...]."""
    try:
        return [[float(v) for v in p.split(":")] for p in text.split(",")] if text else None
    except ValueError:
        raise ValueError(f"--starts expects x:y pairs separated by commas (e.g. -1:-1,0.5:-1), got {text!r}")


def _show(args: argparse.Namespace) -> int:
    import torch

    from driftless.plan.evaluate import show_plans

    torch.set_num_threads(args.threads)
    device = default_device(args.device)
    model = _checked_model(args, device)
    scales = args.guidance if args.guidance is not None else [0.0, _guidance(args)[0]]
    pcfg = _planner_config(args, model)  # the scale is set per panel
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = show_plans(args.maze, model, scales, pcfg, args.out, starts=_starts(args.starts), seed=args.seed)
    for r in rows:
        print(json.dumps(r))
    if args.data:
        from driftless.plan.evaluate import MAX_STEP, position_precision
        from driftless.plan.maze import load_dataset

        for r in position_precision(model, load_dataset(args.data), clean_level=args.clean_level):
            print(json.dumps({"precision": r, "max_step": round(MAX_STEP, 4)}))
    print(json.dumps({"plot": str(args.out)}))
    return 0


def _cross(args: argparse.Namespace) -> int:
    import torch

    from driftless.plan.cross import run_cross

    torch.set_num_threads(args.threads)
    out = run_cross(args.out, steps=args.steps, episodes=args.episodes, seed=args.seed, device=default_device(args.device),
                    memoryless_horizon=args.memoryless_horizon)
    print(json.dumps(out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from driftless.config import add_dataclass_flags
    from driftless.plan.stage import SequenceOptions

    p = sub.add_parser("plan", help="plan with Diffusion Forcing: Maze2D benchmark, compositional crosses",
                       description="Diffusion-Forcing planning: train sequence models on offline maze data, "
                                   "plan with MPC, goal guidance and Monte Carlo Tree Guidance.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ps = p.add_subparsers(dest="plan_verb", metavar="WHAT")

    t = ps.add_parser("train", help="train a sequence model on a maze dataset (from `driftless data maze`)")
    t.add_argument("--data", required=True, help=".npz maze dataset")
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    t.add_argument("--force", action="store_true", help="replace a checkpoint already in --out")
    add_dataclass_flags(t, SequenceOptions, only=("baseline",))
    t.add_argument("--preset", default="small", help="model size: debug | small | base (default small)")
    t.add_argument("--steps", type=int, default=4000, help="optimizer steps (default 4000)")
    t.add_argument("--batch", type=int, default=256, help="windows per step (default 256)")
    t.add_argument("--lr", type=float, default=3e-4)
    add_dataclass_flags(t, SequenceOptions, only=("frame_stack", "tokens"))
    t.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after this many minutes (the learning-rate decay follows the clock)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a model config field, e.g. width=256 or diffusion.weighting=uniform")
    t.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                   help="on a GPU: bf16 autocast (fast) or fp32 without TF32 matmuls (precise); CPU: fp32")
    t.add_argument("--compile", action="store_true", help="torch.compile the network for training")
    t.add_argument("--half", action="store_true", help="store the weights in float16 (half the size)")
    t.add_argument("--init-from", metavar="CKPT",
                   help="continue a checkpoint of the same configuration (its EMA weights; a fresh optimizer "
                        "and schedule): train over several sessions")
    t.add_argument("--seed", type=int, default=0)
    _device_flags(t, "CPU threads for torch (default 1)")
    t.set_defaults(plan_func=_train)

    m = ps.add_parser("maze", help="evaluate planners on Maze2D (D4RL-normalised return, mean ± s.e.)",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--maze", required=True, choices=["open", "umaze", "medium", "large"])
    m.add_argument("--checkpoint", help="sequence model folder (from `plan train`); not needed for controller/random")
    m.add_argument("--method", nargs="+", default=["df"],
                   choices=["df", "df-plain", "diffuser-actions", "diffuser-pd", "controller", "random"],
                   help="df: DF MPC + MCTG; df-plain: without MCTG; diffuser-*: full-sequence plan executed "
                        "with its own actions or a PD tracker; controller: D4RL's waypoint controller")
    m.add_argument("--multi-task", action="store_true", help="random goal per episode (else the maze's G cell)")
    m.add_argument("--episodes", type=int, default=100)
    m.add_argument("--batch", type=int, default=50, help="episodes run (and planned) together")
    m.add_argument("--guidance", type=float, default=None,
                   help=f"goal-guidance scale (default: the checkpoint's tuned one from `plan tune`, "
                        f"else {DEFAULT_GUIDANCE:g})")
    _planner_flags(m)
    m.add_argument("--seed", type=int, default=0, help="episode seed (0: the evaluation episodes)")
    _device_flags(m)
    m.add_argument("--json", help="write the summaries (a list) to this JSON file")
    m.add_argument("--plot", help="PNG of executed trajectories (one per method)")
    m.set_defaults(plan_func=_maze)

    u = ps.add_parser("tune", help="choose the goal-guidance scale on validation episodes; stored in the checkpoint",
                      description="Score each --guidance scale on validation episodes (--seed, not the evaluation "
                                  "seed 0) and store the best in the checkpoint's planner.json, which `plan maze` "
                                  "then uses unless given --guidance.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    u.add_argument("--maze", required=True, choices=["open", "umaze", "medium", "large"])
    u.add_argument("--checkpoint", required=True, help="sequence model folder (from `plan train`)")
    u.add_argument("--method", default="df", choices=["df", "df-plain"], help="planner the scale is chosen for")
    u.add_argument("--guidance", type=float, nargs="+", default=[1.5, 3.0, 6.0, 12.0], help="scales to score")
    u.add_argument("--multi-task", action="store_true", help="tune for random goals (stored apart)")
    u.add_argument("--episodes", type=int, default=50, help="validation episodes per scale")
    u.add_argument("--batch", type=int, default=50, help="episodes run (and planned) together")
    _planner_flags(u)
    u.add_argument("--seed", type=int, default=1, help="validation episode seed (0, the evaluation seed, is refused)")
    u.add_argument("--workers", type=int, default=1, help="processes scoring scales in parallel")
    _device_flags(u)
    u.add_argument("--json", help="also write the tuning record to this JSON file")
    u.set_defaults(plan_func=_tune)

    w = ps.add_parser("show", help="draw the planner's first plans from many starts, per guidance scale",
                      description="Plan once from each start (default: every open cell) towards the maze's goal "
                                  "for each --guidance scale and draw the plans; reports how many pass through "
                                  "a wall and how near the goal they end.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("--maze", required=True, choices=["open", "umaze", "medium", "large"])
    w.add_argument("--checkpoint", required=True, help="sequence model folder (from `plan train`)")
    w.add_argument("--out", required=True, help="PNG to write")
    w.add_argument("--guidance", type=float, nargs="+", default=None,
                   help="scales, one panel each (default: 0 and the checkpoint's tuned scale)")
    w.add_argument("--starts", default="", help="start positions x:y,x:y,... in centred maze coordinates; write "
                                                "--starts=-1:-1,... when the first is negative (default: every "
                                                "open cell's centre)")
    w.add_argument("--data", help="a maze dataset (.npz, ideally not the training one): also report how exactly the "
                                  "model places a token's positions, by noise level")
    w.add_argument("--multi-task", action="store_true", help=argparse.SUPPRESS)  # _guidance reads it
    _planner_flags(w)
    w.add_argument("--seed", type=int, default=0)
    _device_flags(w)
    w.set_defaults(plan_func=_show)

    c = ps.add_parser("cross", help="compositional generation: crosses with memory, V shapes without",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--out", required=True, help="PNG to write (a JSON summary is written beside it)")
    c.add_argument("--steps", type=int, default=1500, help="training steps of the tiny model")
    c.add_argument("--episodes", type=int, default=64, help="rollouts per mode")
    c.add_argument("--memoryless-horizon", type=int, default=8,
                   help="plan horizon (tokens) of memoryless MPC; each plan is executed whole")
    c.add_argument("--seed", type=int, default=0)
    _device_flags(c)
    c.set_defaults(plan_func=_cross)

    def dispatch(a: argparse.Namespace) -> int:
        if getattr(a, "plan_func", None) is None:
            p.print_help()
            return 2
        return a.plan_func(a)

    p.set_defaults(func=dispatch)


# ---- driftless data maze -----------------------------------------------------------------------
def _maze_data(args: argparse.Namespace) -> int:
    import numpy as np

    from driftless.plan.maze import generate_dataset, save_dataset

    names = MAZE_NAMES[1:] if args.maze == "all" else [args.maze]
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    for name in names:
        data = generate_dataset(name, args.steps, seed=args.seed, noise=args.noise, progress=not args.quiet)
        path = save_dataset(Path(args.out) / f"{name}.npz", data, name, args.seed, args.noise)
        print(json.dumps({"maze": name, "path": str(path), "steps": args.steps, "seed": args.seed,
                          "goal_switches": int(data["terminals"].sum()),
                          "reward_rate": round(float(np.mean(data["rewards"])), 4)}))
    return 0


def register_data(data_sub: argparse._SubParsersAction) -> None:
    """`driftless data maze` (called by driftless.cli with the `data` verb's sub-commands)."""
    p = data_sub.add_parser(
        "maze", help="generate a D4RL-style Maze2D dataset (waypoint controller on PointMaze)",
        description="One continuous stream of point-mass transitions per maze: D4RL's waypoint controller "
                    "steers to randomly chosen goal cells (a new goal when solved or after the episode "
                    "length), with Gaussian action noise. Writes OUT/<maze>.npz (observations, actions, "
                    "rewards, goals, next_observations, terminals). Deterministic by --seed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--maze", default="all", choices=MAZE_NAMES + ["all"], help="which maze (all: umaze, medium, large)")
    p.add_argument("--steps", type=int, default=1_000_000, help="transitions per maze (D4RL: 1M / 2M / 4M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.5, help="std of the Gaussian noise added to actions")
    p.add_argument("--out", default="data/maze", help="folder for <maze>.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_maze_data)
