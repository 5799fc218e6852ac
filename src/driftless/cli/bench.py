"""driftless bench train|generate"""

from __future__ import annotations

import argparse

from driftless.cli.common import write_json
from driftless.runtime import default_device

EPILOG_TRAIN = """\
reports: step time (median, IQR over --steps timed steps after --warmup), frames/s, tokens/s,
FLOPs per step (FlopCounterMode, forward + backward), achieved TFLOP/s, MFU against the
device's dense peak (H100 SXM bf16: 989 TFLOP/s; CPU: --peak-tflops or --measure-peak), peak memory.

examples:
  driftless bench train --stage dynamics --preset small --batch-size 32 --json bench_dyn.json
  driftless bench train --stage all --preset debug --device cpu --measure-peak
"""

EPILOG_GENERATE = """\
reports, per batch size: seconds per generated frame (median, IQR over --repeats x --frames
steps, each after filling the context window), frames/s per session and in total, reset time,
peak memory.

examples:
  driftless bench generate runs/world --batch-sizes 1,16,64 --device cuda --json bench_gen.json
  driftless bench generate debug --device cpu --frames 16 --repeats 3
  driftless bench generate random:small --batch-sizes 1,16 --device cuda    (speed needs no trained weights)
"""


def _train(args: argparse.Namespace) -> int:
    import torch

    from driftless.cli.common import parse_overrides
    from driftless.eval.bench import TrainBenchConfig, bench_train
    from driftless.runtime import run_info

    if args.threads:
        torch.set_num_threads(args.threads)
    stages = _benchable_stages() if args.stage == "all" else [args.stage]
    results = []
    for stage in stages:
        cfg = TrainBenchConfig(stage=stage, preset=args.preset, batch_size=args.batch_size, clip_len=args.clip_len,
                               steps=args.steps, warmup=args.warmup, device=args.device, precision=args.precision,
                               compile=args.compile, peak_tflops=args.peak_tflops, measure_peak=args.measure_peak,
                               seed=args.seed, overrides=parse_overrides(args.set) if stage == args.stage else {})
        r = bench_train(cfg)
        results.append(r)
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{stage:9s} {r['parameters'] / 1e6:6.2f}M params  step {r['step_s']['median'] * 1e3:8.1f} ms "
              f"(IQR {r['step_s']['iqr'] * 1e3:.1f})  {r['frames_per_s']['median']:9.1f} frames/s  "
              f"{r['tokens_per_s']['median']:11.0f} tokens/s  {r['tflops']:8.3f} TFLOP/s  MFU {mfu}")
    device = default_device(args.device)
    write_json({"bench": "train", "info": run_info(device), "results": results}, args.json)
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from driftless.eval.bench import GenerateBenchConfig, bench_generate
    from driftless.runtime import run_info

    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = {k: v for k, v in (("steps", args.steps), ("window", args.window)) if v is not None}
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        raise ValueError(f"--batch-sizes expects comma-separated integers, got {args.batch_sizes!r}") from None
    cfg = GenerateBenchConfig(world=args.world, batch_sizes=batch_sizes, frames=args.frames, warmup=args.warmup,
                              repeats=args.repeats, context=args.context, device=args.device,
                              precision="bf16" if args.bf16 else "fp32", seed=args.seed, sampling=sampling)
    r = bench_generate(cfg)
    for e in r["results"]:
        print(f"batch {e['batch']:4d}  {e['step_s']['median'] * 1e3:8.2f} ms/step (IQR {e['step_s']['iqr'] * 1e3:.2f})"
              f"  {e['fps_per_session']:8.2f} FPS per session  {e['fps_total']:9.2f} frames/s total")
    device = default_device(args.device)
    write_json({"bench": "generate", "info": run_info(device), **r}, args.json)
    return 0


def _benchable_stages() -> list[str]:
    from driftless.train.specs import all_stages

    return [name for name, spec in all_stages().items() if spec.synthetic_batch is not None]


def _default_clips() -> str:
    """'tokenizer 8, lam 16, dynamics its preset': each stage's default clip length."""
    from driftless.train.specs import all_stages

    return ", ".join(f"{name} {spec.clip_len or 'its preset'}" for name, spec in all_stages().items()
                     if spec.synthetic_batch is not None)


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark training throughput (MFU) and generation speed (FPS)",
                       description="Timed benchmarks with warm-up and repeats; medians and interquartile ranges.")
    verbs = p.add_subparsers(dest="bench_verb", metavar="WHAT", required=True)
    t = verbs.add_parser("train", help="training throughput of a model preset: frames/s, tokens/s, TFLOP/s, MFU",
                         description="Time training steps of a stage with the trainer's components on synthetic "
                                     "batches of the stage's shape.",
                         epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--stage", default="tokenizer", choices=[*_benchable_stages(), "all"],
                   help="the training stage to time, or all of them (default %(default)s)")
    t.add_argument("--preset", default="debug", help="model preset: debug | small | base (default debug)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override a model config field")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--clip-len", type=int, help=f"frames per clip (default: {_default_clips()})")
    t.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    t.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    t.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    t.add_argument("--compile", action="store_true", help="torch.compile the model, as train --compile")
    t.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (overrides the table)")
    t.add_argument("--measure-peak", action="store_true", help="on CPU: measure the peak with a fp32 matmul")
    t.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", help="write the results to this JSON file")
    t.set_defaults(func=_train)
    g = verbs.add_parser("generate", help="generation speed of a world at batch 1 and batched",
                         description="Time world.step (one frame per session per call) after reset and a full "
                                     "context window, for each batch size.",
                         epilog=EPILOG_GENERATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("world", nargs="?", default="debug",
                   help="world folder, shipped name, or random:PRESET (random weights of the debug | small | base "
                        "presets; 'debug' = random:debug, the default)")
    g.add_argument("--batch-sizes", default="1,16", help="comma-separated sessions per step (default 1,16)")
    g.add_argument("--frames", type=int, default=32, help="timed frames per repeat (default 32)")
    g.add_argument("--warmup", type=int, default=8, help="untimed frames of a first session (default 8)")
    g.add_argument("--repeats", type=int, default=5, help="sessions timed per batch size (default 5)")
    g.add_argument("--context", type=int, default=1, help="context frames at reset")
    g.add_argument("--steps", type=int, help="sampling steps per frame (default: the world's)")
    g.add_argument("--window", type=int, help="context window in frames (default: the model's)")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    g.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", help="write the results to this JSON file")
    g.set_defaults(func=_generate)
