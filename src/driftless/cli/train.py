"""driftless train tokenizer|lam|dynamics|latents"""

from __future__ import annotations

import argparse
import json
import sys

from driftless.cli.common import parse_overrides
from driftless.runtime import default_device
from driftless.train.trainer import TrainConfig

STAGE_HELP = {
    "tokenizer": "train the ST-ViViT video tokenizer (KL by default; --set bottleneck=vq for the VQ baseline)",
    "lam": "train the latent action model on pixel clips",
    "dynamics": "train the dynamics model on a latent cache (see `train latents`); --frame-model picks "
                "forcing (default), mar or maskgit",
}

EXAMPLES = """examples:
  driftless train tokenizer --data data/coinrun-train --val-data data/coinrun-val --preset small --out runs/tok
  driftless train lam --data data/coinrun-train --preset small --out runs/lam
  driftless train latents --data data/coinrun-train --tokenizer runs/tok/checkpoint --lam runs/lam/checkpoint --out data/lat-train
  driftless train dynamics --data data/lat-train --preset small --out runs/dyn
  torchrun --nproc-per-node 2 -m driftless train tokenizer ...     (DDP: same flags)
  any stage: --resume continues exactly where the last checkpoint left off
"""


def _add_common(p: argparse.ArgumentParser, kind: str) -> None:
    d = TrainConfig()
    p.add_argument("--data", required=True,
                   help="episode store folder" + (" or latent cache folder" if kind == "dynamics" else
                                                  ", or coinrun-stream[:split] for live Procgen environments"))
    p.add_argument("--val-data", help="held-out store (or latent cache) for periodic validation")
    p.add_argument("--out", required=True, help="run folder: checkpoint/, metrics.jsonl, val/ images")
    p.add_argument("--preset", default="small", help="model size preset: debug | small | base (default small)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a model config field, dotted for nested (e.g. --set backbone.depth=8)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per step per process")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--clip-len", type=int, help="frames per training clip (default: tokenizer 8, lam 16, "
                                                  "dynamics from its preset)")
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on with CUDA, off on the CPU)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop and save after this many minutes (train in chunks; continue with --resume)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="train for this many minutes, laying the cosine schedule over time instead of "
                        "steps (--steps becomes an upper bound); useful when jobs share a GPU")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop and save after this many steps of this invocation (the schedule still "
                        "spans --steps; continue with --resume)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log scalars for TensorBoard under OUT/tensorboard (pip install tensorboard)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if it exists")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from the (EMA) weights of this checkpoint folder, with a fresh optimizer "
                        "(fine-tuning, or continuing a run whose optimizer state was not kept)")
    if kind == "dynamics":
        p.add_argument("--actions", default="lam", choices=["lam", "true", "none"],
                       help="condition on LAM actions (default), the data's true actions, or nothing")
        p.add_argument("--teacher-forcing", action="store_true",
                       help="train the teacher-forcing variant (clean history, noisy next frame)")
        p.add_argument("--frame-model", choices=["forcing", "mar", "maskgit"],
                       help="how a frame is modelled (same as --set frame_model=...): forcing = the backbone "
                            "denoises the whole frame (default); mar = sets of tokens with a per-token diffusion "
                            "head; maskgit = Genie's baseline over VQ codes (needs a latent cache of a VQ tokenizer)")


def _run(args: argparse.Namespace) -> int:
    from driftless.train.stages import StageArgs, run_stage

    overrides = parse_overrides(args.set)
    if getattr(args, "teacher_forcing", False):
        overrides["teacher_forcing"] = True
    if getattr(args, "frame_model", None):
        overrides["frame_model"] = args.frame_model
    if args.stage == "dynamics" and overrides.get("frame_model") == "maskgit":
        _maskgit_codebook(args.data, overrides)
    train = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr, warmup=args.warmup,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay, seed=args.seed,
        precision=args.precision, compile=args.compile, log_every=args.log_every, val_every=args.val_every,
        save_every=args.save_every, max_minutes=args.max_minutes,
        time_budget=args.time_budget, stop_after=args.stop_after, tensorboard=args.tensorboard)
    summary = run_stage(StageArgs(
        kind=args.stage, data=args.data, out=args.out, preset=args.preset, overrides=overrides, train=train,
        clip_len=args.clip_len, val_data=args.val_data, workers=args.workers, device=args.device,
        resume=args.resume, actions=getattr(args, "actions", "lam"), init_from=args.init_from))
    if summary.get("rank", 0) == 0 or "ranks_in_sync" in summary:
        # one write per line: under torchrun every rank shares this stdout, and print() writes the
        # text and its newline separately, so two ranks' summaries could land on one line
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
    return 0 if summary["stopped"] != "nonfinite" else 3


def _maskgit_codebook(data: str, overrides: dict) -> None:
    """MaskGIT predicts the VQ tokenizer's codes: take the codebook size from the latent cache."""
    from driftless.data.latents import LatentCache

    size = LatentCache(data).meta.get("codebook_size")
    if size is None:
        raise ValueError(f"frame_model=maskgit trains on VQ code indices, but {data} is a latent cache of a KL "
                         f"tokenizer (no indices.npy): build one with `driftless train latents --tokenizer "
                         f"<VQ tokenizer checkpoint>`")
    given = overrides.setdefault("maskgit.codebook_size", int(size))
    if int(given) != int(size):
        raise ValueError(f"maskgit.codebook_size={given} does not match the cache's VQ codebook ({size} codes)")


def _run_latents(args: argparse.Namespace) -> int:
    import torch

    from driftless.data.latents import build_latent_cache
    from driftless.data.store import EpisodeStore
    from driftless.models.registry import load_model

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


def register(sub) -> None:
    p = sub.add_parser("train", help="train a tokenizer, latent action model or dynamics model",
                       description="One trainer for every stage: CPU, one GPU, or torchrun DDP with the same flags.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for kind, text in STAGE_HELP.items():
        sp = stages.add_parser(kind, help=text, description=text)
        _add_common(sp, kind)
        sp.set_defaults(func=_run)
    lp = stages.add_parser("latents", help="encode a store with a trained tokenizer (and LAM) for dynamics training",
                           description="Encode every frame of an episode store once, with the tokenizer's "
                                       "normalised latents and the LAM's actions, into a latent cache.")
    lp.add_argument("--data", required=True, help="episode store folder")
    lp.add_argument("--tokenizer", required=True, help="tokenizer checkpoint folder")
    lp.add_argument("--lam", help="LAM checkpoint folder (latent actions for each transition)")
    lp.add_argument("--out", required=True, help="latent cache folder to write")
    lp.add_argument("--chunk", type=int, default=16, help="frames encoded together (the causal window)")
    lp.add_argument("--batch-size", type=int, default=64)
    lp.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    lp.set_defaults(func=_run_latents)
