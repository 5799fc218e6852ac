"""driftless train world|tokenizer|lam|dynamics|latents"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from driftless.config import add_dataclass_flags, dataclass_from_args, parse_overrides
from driftless.runtime import default_device
from driftless.train.specs import StageArgs, StageSpec, all_stages, get_stage
from driftless.train.trainer import TrainConfig

EXAMPLES = """examples:
  driftless train world --game coinrun --out runs/coinrun --budget 30      (everything: data to evaluated world)
  driftless train world --data data/coinrun-train --out runs/w --preset debug   (a smoke test, seconds)
  driftless train tokenizer --data data/coinrun-train --val-data data/coinrun-val --preset small --out runs/tok
  driftless train lam --data data/coinrun-train --preset small --out runs/lam
  driftless train latents --data data/coinrun-train --tokenizer runs/tok/checkpoint --lam runs/lam/checkpoint --out data/lat-train
  driftless train dynamics --data data/lat-train --preset small --out runs/dyn
  torchrun --nproc-per-node 2 -m driftless train tokenizer ...     (DDP: same flags)
  any stage: --resume continues exactly where the last checkpoint left off; an OUT folder that
  already holds a run is refused unless --resume (continue it) or --force (start it over)
"""


TRAIN_FLAGS_LEFT_OUT = ("beta1", "beta2", "max_nonfinite")  # TrainConfig fields kept at their defaults


def _add_stage_flags(p: argparse.ArgumentParser, spec: StageSpec) -> None:
    """The flags of one stage: where data and run go, the model (preset, --set), every field of
    TrainConfig, how to run, then the stage's own options."""
    default_clip = f"default {spec.clip_len}" if spec.clip_len else "default: from the preset"
    add_dataclass_flags(p, StageArgs, only=("data", "val_data", "out", "preset"), help={"data": spec.data_help})
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a model config field, dotted for nested (e.g. --set backbone.depth=8)")
    add_dataclass_flags(p, TrainConfig, exclude=TRAIN_FLAGS_LEFT_OUT)
    add_dataclass_flags(p, StageArgs, only=("clip_len", "device", "workers", "data_on_device", "resume", "force",
                                             "init_from"),
                        help={"clip_len": f"frames per training clip ({default_clip})"})
    if spec.options is not None:
        add_dataclass_flags(p, spec.options)


def _run(args: argparse.Namespace) -> int:
    from driftless.train.distributed import cleanup
    from driftless.train.stages import run_stage

    spec = get_stage(args.stage)
    options = dataclass_from_args(spec.options, args) if spec.options is not None else None
    try:
        summary = run_stage(dataclass_from_args(StageArgs, args, kind=args.stage, overrides=parse_overrides(args.set),
                                                train=dataclass_from_args(TrainConfig, args), options=options))
    finally:
        cleanup()  # under torchrun: leave the process group
    if summary.get("rank", 0) == 0 or "ranks_in_sync" in summary:
        # one write per line: under torchrun every rank shares this stdout, and print() writes the
        # text and its newline separately, so two ranks' summaries could land on one line
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
    return 0 if summary["stopped"] != "nonfinite" else 3


def _run_latents(args: argparse.Namespace) -> int:
    import torch

    from driftless.checkpoint import refuse_overwrite
    from driftless.data.latents import build_latent_cache
    from driftless.data.store import EpisodeStore
    from driftless.models.registry import load_model

    refuse_overwrite(args.out, args.force, "latent cache")
    device = default_device(args.device)
    tok = load_model(args.tokenizer, device, kind="tokenizer")
    if tok.cfg.latent_mean is None:
        raise ValueError(f"{args.tokenizer} has no latent statistics yet; finish its training first")
    lam = load_model(args.lam, device, kind="lam") if args.lam else None
    store = EpisodeStore(args.data)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        out = build_latent_cache(store, tok, args.out, lam=lam, chunk=args.chunk, batch_size=args.batch_size,
                                 device=device, tokenizer_path=args.tokenizer, lam_path=args.lam or "")
    print(f"latent cache written to {out} ({store.num_frames} frames)")
    return 0


WORLD_EXAMPLES = """examples:
  driftless train world --game coinrun --out runs/coinrun --budget 30
  driftless train world --game ninja --out runs/ninja --budget 30 --max-minutes 9   (then the same again, to continue)
  driftless train world --data data/coinrun-train --out runs/w2 --init-from runs/coinrun/world --budget 30
  driftless train world --game bigfish --out /tmp/smoke --preset debug          (the whole pipeline in seconds)
  torchrun --nproc-per-node 4 -m driftless train world --game coinrun --out runs/c4 --budget 30
      (DDP: the same flags; tokenizer, LAM and dynamics train on all 4 GPUs, batch sizes per GPU;
      data, latents, world build and evaluation run on rank 0; --budget counts wall-clock minutes)

OUT holds tokenizer/, lam/, latents/, dynamics/, world/, eval.json and run.json (what is done, where
the current stage is, minutes spent). The same command again continues an interrupted or stopped run
at the stage and step where it stopped; different settings for an existing OUT are refused (--force
starts over). --budget 0 (the debug preset's default) trains fixed step counts: an interrupted run
then ends with the same world as an uninterrupted one. A stage stopped under torchrun continues on
another process count only if that count divides its global batch (processes x batch). See
docs/training.md.
"""


def _run_world(args: argparse.Namespace) -> int:
    from driftless.cli.evaluate import _summary
    from driftless.train.world_plan import WorldRunConfig
    from driftless.train.world_run import PeerFailed, RunFailed, train_world

    try:
        result = train_world(dataclass_from_args(WorldRunConfig, args, overrides=parse_overrides(args.set)))
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except PeerFailed as e:  # under torchrun: rank 0 failed and said why; this rank exits as it does
        return e.code
    if result is None:  # under torchrun, a rank other than 0: rank 0 reports
        return 0
    if result["state"] == "done" and result.get("eval"):
        print("\n".join(_summary(json.loads(Path(result["eval"]).read_text()))))
    sys.stdout.write(json.dumps(result) + "\n")  # one write: a line of its own beside other ranks' output
    sys.stdout.flush()
    return 0


def _add_world(stages) -> None:
    from driftless.train.world_plan import WorldRunConfig

    wp = stages.add_parser("world", help="the whole pipeline in one command: data, tokenizer, LAM, latents, dynamics, "
                                         "world build, evaluation (a --budget of minutes, resumable)",
                           description="Train a world from an episode store (or a Procgen game) to a built and "
                                       "evaluated world folder: tokenizer, LAM, latent cache, dynamics, world "
                                       "build, evaluation, each stage alone on the device (or the trained ones on "
                                       "every GPU of a torchrun), within a --budget of minutes, resumable where it "
                                       "stopped.",
                           epilog=WORLD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(wp, WorldRunConfig, exclude=("overrides",))
    wp.add_argument("--set", action="append", metavar="STAGE.KEY=VALUE", default=[],
                    help="override a stage's model config field (e.g. --set tokenizer.bottleneck=vq, "
                         "--set dynamics.backbone.depth=8)")
    wp.set_defaults(func=_run_world)


def _elsewhere() -> str:
    """The stages that other verbs train (the showcases'), for the epilog."""
    lines = [f"  {name:12s} {spec.verb}" for name, spec in all_stages().items() if spec.verb is not None]
    return "\nstages trained by their own verbs:\n" + "\n".join(lines) + "\n" if lines else ""


def register(sub) -> None:
    p = sub.add_parser("train", help="train a world in one command (train world), or one stage of it",
                       description="One trainer for every stage: CPU, one GPU, or torchrun DDP with the same flags.",
                       epilog=EXAMPLES + _elsewhere(), formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    _add_world(stages)
    for name, spec in all_stages().items():
        if spec.verb is not None:  # a showcase's stage: trained by its own verb
            continue
        sp = stages.add_parser(name, help=spec.help, description=spec.help)
        _add_stage_flags(sp, spec)
        sp.set_defaults(func=_run)
    lp = stages.add_parser("latents", help="encode a store with a trained tokenizer (and LAM) for dynamics training",
                           description="Encode every frame of an episode store once, with the tokenizer's "
                                       "normalised latents and the LAM's actions, into a latent cache.")
    lp.add_argument("--data", required=True, help="episode store folder")
    lp.add_argument("--tokenizer", required=True, help="tokenizer checkpoint folder")
    lp.add_argument("--lam", help="LAM checkpoint folder (latent actions for each transition)")
    lp.add_argument("--out", required=True, help="latent cache folder to write")
    lp.add_argument("--force", action="store_true", help="replace a latent cache already in --out")
    lp.add_argument("--chunk", type=int, default=16, help="frames encoded together (the causal window)")
    lp.add_argument("--batch-size", type=int, default=64)
    lp.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    lp.set_defaults(func=_run_latents)
