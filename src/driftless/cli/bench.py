"""driftless bench train|generate"""

from __future__ import annotations

import argparse

from driftless.checkpoint import write_json
from driftless.config import add_dataclass_flags, dataclass_from_args
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

    from driftless.config import parse_overrides
    from driftless.eval.bench import TrainBenchConfig, bench_train
    from driftless.runtime import run_info

    if args.threads:
        torch.set_num_threads(args.threads)
    stages = _benchable_stages(world_only=True) if args.stage == "all" else [args.stage]
    results = []
    for stage in stages:
        cfg = dataclass_from_args(TrainBenchConfig, args, stage=stage,
                                  overrides=parse_overrides(args.set) if stage == args.stage else {})
        r = bench_train(cfg)
        results.append(r)
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{stage:9s} {r['parameters'] / 1e6:6.2f}M params  step {r['step_s']['median'] * 1e3:8.1f} ms "
              f"(IQR {r['step_s']['iqr'] * 1e3:.1f})  {r['frames_per_s']['median']:9.1f} frames/s  "
              f"{r['tokens_per_s']['median']:11.0f} tokens/s  {r['tflops']:8.3f} TFLOP/s  MFU {mfu}")
        if r["reference"]:
            ref_mfu = f"{r['reference_mfu']:.1%}" if r["reference_mfu"] is not None else "n/a"
            print(f"{'':9s} reference transformer {r['reference']['tflops']:8.3f} TFLOP/s  MFU {ref_mfu}"
                  f"  -> this model runs at {r['vs_reference']:.2f}x its TFLOP/s")
        if r["data"]:
            d = r["data"]
            print(f"{'':9s} data: {d['batch_s']['median'] * 1e3:8.1f} ms/batch ({d['frames_per_s']:.0f} frames/s) from "
                  f"{d['source']}: " + ("the data is the bottleneck" if r["data_bound"] else "faster than a step"))
        if r["profile"]:
            print(f"{'':9s} profile: {r['profile']['trace']}; top kernels per step:")
            for k in r["profile"]["top"][:8]:
                print(f"{'':11s}{k['ms_per_step']:8.2f} ms {k['share']:6.1%}  x{k['calls_per_step']:.0f}  {k['name'][:80]}")
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
    cfg = dataclass_from_args(GenerateBenchConfig, args, batch_sizes=batch_sizes, sampling=sampling,
                              precision="bf16" if args.bf16 else "fp32")
    r = bench_generate(cfg)
    for e in r["results"]:
        print(f"batch {e['batch']:4d}  {e['step_s']['median'] * 1e3:8.2f} ms/step (IQR {e['step_s']['iqr'] * 1e3:.2f})"
              f"  {e['fps_per_session']:8.2f} FPS per session  {e['fps_total']:9.2f} frames/s total"
              + ("  (CUDA graph)" if e.get("cuda_graph") else "")
              + (f"  (CUDA graph failed: {e['cuda_graph_error']})" if e.get("cuda_graph_error") else ""))
    device = default_device(args.device)
    write_json({"bench": "generate", "info": run_info(device), **r}, args.json)
    return 0


def _benchable_stages(world_only: bool = False) -> list[str]:
    """The stages with a synthetic batch; world_only: those `driftless train` trains (`--stage all`)."""
    from driftless.train.specs import all_stages

    return [name for name, spec in all_stages().items()
            if spec.synthetic_batch is not None and not (world_only and spec.verb is not None)]


def _default_clips() -> str:
    """'tokenizer 8, lam 16, dynamics its preset': each stage's default clip length."""
    from driftless.train.specs import all_stages

    return ", ".join(f"{name} {spec.clip_len or 'its preset'}" for name, spec in all_stages().items()
                     if spec.synthetic_batch is not None)


def register(sub) -> None:
    from driftless.eval.bench import GenerateBenchConfig, TrainBenchConfig

    p = sub.add_parser("bench", help="benchmark training throughput (MFU) and generation speed (FPS)",
                       description="Timed benchmarks with warm-up and repeats; medians and interquartile ranges.")
    verbs = p.add_subparsers(dest="bench_verb", metavar="WHAT", required=True)
    t = verbs.add_parser("train", help="training throughput of a model preset: frames/s, tokens/s, TFLOP/s, MFU",
                         description="Time training steps of a stage with the trainer's components on synthetic "
                                     "batches of the stage's shape.",
                         epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--stage", default=TrainBenchConfig.stage, choices=[*_benchable_stages(), "all"],
                   help="the training stage to time, or all of `driftless train`'s (default %(default)s)")
    add_dataclass_flags(t, TrainBenchConfig, only=("preset",))
    t.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override a model config field")
    add_dataclass_flags(t, TrainBenchConfig, only=("batch_size", "clip_len", "steps", "warmup", "precision", "compile",
                                                   "peak_tflops", "measure_peak", "reference", "profile", "data", "workers",
                                                   "data_on_device", "device"),
                        help={"clip_len": f"frames per clip (default: {_default_clips()})"})
    t.add_argument("--threads", type=int, help="torch CPU threads")
    add_dataclass_flags(t, TrainBenchConfig, only=("seed",))
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
    add_dataclass_flags(g, GenerateBenchConfig, only=("frames", "warmup", "repeats", "context"))
    g.add_argument("--steps", type=int, help="sampling steps per frame (default: the world's)")
    g.add_argument("--window", type=int, help="context window in frames (default: the model's)")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    add_dataclass_flags(g, GenerateBenchConfig, only=("device", "cuda_graphs"))
    g.add_argument("--threads", type=int, help="torch CPU threads")
    add_dataclass_flags(g, GenerateBenchConfig, only=("seed",))
    g.add_argument("--json", help="write the results to this JSON file")
    g.set_defaults(func=_generate)
