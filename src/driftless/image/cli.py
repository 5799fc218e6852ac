"""`driftless image train|sample|classifier|eval|plot`: MAR class-conditional image generation on
continuous tokens (one-frame videos through the tokenizer), see driftless.image.model;
`driftless data procgen-games`: the built-in image set (16 Procgen games, 64x64)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from driftless.runtime import default_device

EXAMPLES = """examples:
  driftless data procgen-games --out data/games/train --per-game 400
  driftless data procgen-games --out data/games/val --per-game 100 --split val
  driftless image train --data data/games/train --val-data data/games/val --tokenizer TOK --out runs/img \\
      --preset cpu --steps 2000 --batch-size 32
  driftless image sample --checkpoint runs/img --per-class 8 --ar-steps 16 --cfg 3 --out grid.png
  driftless image classifier --data data/games/train --val-data data/games/val --out runs/clf
  driftless image eval --checkpoint runs/img --real data/games/val --classifier runs/clf \\
      --ar-steps 1,4,16,64 --diffusion-steps 50 --json sweep.jsonl [--inception inception.safetensors]
"""


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from e


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from e


def _ckpt_dir(path: str) -> Path:
    p = Path(path)
    return p / "checkpoint" if (p / "checkpoint" / "config.json").exists() else p


def _load_tokenizer(path: str, device: str):
    from driftless.models.registry import load_model

    return load_model(path, device, kind="tokenizer")


def _train(args) -> int:
    from driftless.config import dataclass_from_args, parse_overrides
    from driftless.image.stage import ImageOptions
    from driftless.train.specs import StageArgs
    from driftless.train.stages import run_stage
    from driftless.train.trainer import TrainConfig

    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                        warmup=args.warmup, weight_decay=args.weight_decay, ema_decay=args.ema_decay, seed=args.seed,
                        log_every=args.log_every, val_every=args.val_every if args.val_data else 0,
                        save_every=args.save_every, max_minutes=args.max_minutes, time_budget=args.time_budget)
    run = StageArgs(kind="image", data=args.data, out=args.out, preset=args.preset, overrides=parse_overrides(args.set),
                    train=train, val_data=args.val_data, val_batches=args.val_batches, device=args.device,
                    resume=args.resume, force=args.force, options=dataclass_from_args(ImageOptions, args))
    t0, c0 = time.time(), time.process_time()
    summary = run_stage(run)  # the image stage (image/stage.py): latents, config, validation
    summary.update(cpu_seconds=round(time.process_time() - c0, 1), wall_seconds=round(time.time() - t0, 1))
    print(json.dumps(summary), flush=True)
    return 0 if summary["stopped"] != "nonfinite" else 3


def _load_image_model(args, device: str):
    from driftless import checkpoint
    from driftless.models.registry import load_model

    ckpt = _ckpt_dir(args.checkpoint)
    model = load_model(ckpt, device, kind="image")
    tok_path = args.tokenizer or checkpoint.read_header(ckpt).get("meta", {}).get("tokenizer")
    if not tok_path:
        raise ValueError(f"{ckpt} does not name its tokenizer: pass --tokenizer")
    model.attach_tokenizer(_load_tokenizer(tok_path, device))
    return model


def _class_labels(model, spec: str | None, per_class: int) -> list[int]:
    names = model.cfg.class_names or [str(i) for i in range(model.cfg.num_classes)]
    if model.cfg.num_classes == 0:
        return [-1] * per_class
    if spec in (None, "all"):
        ids = list(range(model.cfg.num_classes))
    else:
        ids = []
        for item in spec.split(","):
            item = item.strip()
            if item in names:
                ids.append(names.index(item))
            elif item.lstrip("-").isdigit() and -1 <= int(item) < model.cfg.num_classes:
                ids.append(int(item))
            else:
                raise ValueError(f"unknown class {item!r}; expected one of {names} or an index (-1: unconditional)")
    return [c for c in ids for _ in range(per_class)]


def _sample(args) -> int:
    from driftless.image.evaluate import generate_images, save_grid, speed_stats

    device = default_device(args.device)
    model = _load_image_model(args, device)
    labels = _class_labels(model, args.classes, args.per_class)
    imgs, timing = generate_images(model, labels, args.ar_steps, args.diffusion_steps, args.temperature,
                                   args.cfg, args.cfg_schedule, args.seed, args.batch_size, device)
    names = model.cfg.class_names or [str(i) for i in range(max(1, model.cfg.num_classes))]
    if args.out.endswith(".png"):
        save_grid(args.out, imgs, labels, names, colors=args.palette)
    else:
        from driftless.image.data import write_image_folder

        names_u = names + ["uncond"]
        write_image_folder(args.out, imgs, [c if c >= 0 else len(names) for c in labels], names_u, prefix="sample")
    steps = model.cfg.tokens if model.cfg.order == "raster" else (args.ar_steps or model.cfg.ar_steps)
    print(json.dumps({"out": args.out, "variant": model.cfg.order, "ar_steps": steps,
                      "diffusion_steps": args.diffusion_steps or model.cfg.diffloss.sampling_steps,
                      "temperature": args.temperature, "cfg": args.cfg, "images": len(imgs),
                      "seconds_generate": round(timing["generate_s"], 2), **speed_stats(len(imgs), timing, device),
                      "device": device}))
    return 0


def _classifier(args) -> int:
    from driftless.image.classifier import classify, save_classifier, train_classifier
    from driftless.image.data import read_image_folder

    ds = read_image_folder(args.data, size=args.size)
    model = train_classifier(ds.images, ds.labels, ds.classes, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, width=args.width, seed=args.seed)
    meta = {"data": str(Path(args.data).resolve()), "train_images": len(ds), "epochs": args.epochs}
    if args.val_data:
        val = read_image_folder(args.val_data, size=args.size, classes=ds.classes)
        pred, _ = classify(model, val.images)
        meta["val_accuracy"] = float((pred == val.labels).mean())
    save_classifier(args.out, model, meta=meta)
    print(json.dumps({"out": args.out, **{k: v for k, v in meta.items() if k != "data"}}))
    return 0


def _eval(args) -> int:
    import itertools

    import numpy as np

    from driftless.image.classifier import classifier_metrics
    from driftless.image.data import read_image_folder
    from driftless.image.evaluate import generate_images, speed_stats
    from driftless.image.inception import fid_and_is, load_inception
    from driftless.models.registry import load_model

    device = default_device(args.device)
    model = _load_image_model(args, device)
    clf = load_model(args.classifier, device, kind="image_classifier")
    names = model.cfg.class_names
    val = read_image_folder(args.real, size=model._tokenizer.cfg.resolution[0], classes=names)
    ref_idx, held_idx = [], []  # the reference set, and (with --reference) disjoint held-out frames
    for c in range(len(val.classes)):
        idx = np.flatnonzero(val.labels == c)
        held = idx[len(idx) - args.per_class:] if args.reference else idx[:0]
        rest = idx[:len(idx) - len(held)]
        ref_idx += list(rest[:args.real_per_class] if args.real_per_class else rest)
        held_idx += list(held)
    real = val.images[ref_idx]
    inception = load_inception(args.inception, device) if args.inception else None
    labels = _class_labels(model, args.classes, args.per_class)
    rows = []
    if args.reference:  # the ceiling: held-out real frames, and the same through the tokenizer and back
        from driftless.image.data import encode_images

        held = val.images[held_idx]
        recon = model.decode(encode_images(model._tokenizer, held, device=device).to(device)).cpu().numpy()
        for name, imgs in (("real_heldout", held), ("tokenizer_reconstruction", recon)):
            m = classifier_metrics(clf, real, imgs, val.labels[held_idx], k=args.k)
            if inception is not None:
                m.update(fid_and_is(real, imgs, inception))
            rows.append({"variant": name, "images": len(imgs), **m})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_class_accuracy"}), flush=True)
    combos = itertools.product(_ints(args.ar_steps) or [None], _ints(args.diffusion_steps) or [None],
                               _floats(args.temperature), _floats(args.cfg))
    for ar, ds, temp, cfg in combos:
        ar = None if model.cfg.order == "raster" else ar
        imgs, timing = generate_images(model, labels, ar, ds, temp, cfg, args.cfg_schedule, args.seed,
                                       args.batch_size, device)
        m = classifier_metrics(clf, real, imgs, np.asarray(labels), k=args.k)
        if inception is not None:
            m.update(fid_and_is(real, imgs, inception))
        ar_used = model.cfg.tokens if model.cfg.order == "raster" else (ar or model.cfg.ar_steps)
        row = {"variant": model.cfg.order, "ar_steps": ar_used, "diffusion_steps": ds or model.cfg.diffloss.sampling_steps,
               "temperature": temp, "cfg": cfg, "cfg_schedule": args.cfg_schedule, "images": len(imgs),
               **speed_stats(len(imgs), timing, device), **m}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_class_accuracy"}), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps({"checkpoint": str(args.checkpoint), **row}) + "\n")
    return 0


def _plot(args) -> int:
    from driftless.image.evaluate import plot_sweep

    rows = [json.loads(line) for f in args.json for line in open(f) if line.strip()]
    speed = [json.loads(line) for f in args.speed or [] for line in open(f) if line.strip()]
    print(plot_sweep(rows, args.out, args.ar_fixed, args.diffusion_fixed, speed))
    return 0


def _add_sampling(p: argparse.ArgumentParser, many: bool) -> None:
    lst = " (comma-separated list: every combination is evaluated)" if many else ""
    p.add_argument("--checkpoint", required=True, help="image run folder or its checkpoint/ folder")
    p.add_argument("--tokenizer", help="tokenizer checkpoint (default: the one the model was trained with)")
    p.add_argument("--classes", default="all", help="class names or indices, comma-separated (default: all)")
    p.add_argument("--per-class", type=int, default=8, help="images per class (default: 8)")
    p.add_argument("--ar-steps", default="" if many else None, type=str if many else int,
                   help="generation steps, 1..tokens (default: the model's; raster models always use one "
                        "token per step)" + lst)
    p.add_argument("--diffusion-steps", default="" if many else None, type=str if many else int,
                   help="diffusion-head sampling steps (default: the model's)" + lst)
    p.add_argument("--temperature", default="1.0" if many else 1.0, type=str if many else float,
                   help="noise scale of the diffusion sampler (default 1.0)" + lst)
    p.add_argument("--cfg", default="1.0" if many else 1.0, type=str if many else float,
                   help="classifier-free guidance scale, 1 = off (default 1.0)" + lst)
    p.add_argument("--cfg-schedule", default="linear", choices=["linear", "constant"],
                   help="linear: guidance grows with the revealed fraction (MAR); constant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="images generated together")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")


def register(sub) -> None:
    from driftless.config import add_dataclass_flags
    from driftless.image.stage import ImageOptions
    from driftless.train.trainer import TrainConfig

    p = sub.add_parser("image", help="MAR image generation: train, sample, evaluate",
                       description="Class-conditional image generation by masked autoregression over continuous "
                                   "tokens with a per-token diffusion loss (MAR), on a tokenizer's latents.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    isub = p.add_subparsers(dest="image_verb", metavar="COMMAND")

    d = TrainConfig()
    t = isub.add_parser("train", help="train an image model on an ImageFolder (latents precomputed once)",
                        description="Encode an ImageFolder once with the tokenizer (cached in OUT), then train the "
                                    "MAR image model with the shared trainer (EMA, cosine schedule, --resume).")
    t.add_argument("--data", required=True, help="ImageFolder: one sub-folder of images per class")
    t.add_argument("--val-data", help="held-out ImageFolder (same classes) for the validation loss")
    add_dataclass_flags(t, ImageOptions, only=("tokenizer",))
    t.add_argument("--out", required=True, help="run folder: checkpoint/, metrics.jsonl, latent caches")
    t.add_argument("--preset", default="small", help="debug | cpu | small | base (default small)")
    add_dataclass_flags(t, ImageOptions, only=("order",))
    t.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config field (e.g. --set depth=8 --set diffloss.width=512)")
    add_dataclass_flags(t, ImageOptions, only=("max_per_class",))
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--min-lr", type=float, default=d.min_lr)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--weight-decay", type=float, default=0.02)
    t.add_argument("--ema-decay", type=float, default=d.ema_decay)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=d.log_every)
    t.add_argument("--val-every", type=int, default=500)
    t.add_argument("--val-batches", type=int, default=4)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--max-minutes", type=float, default=0.0, help="stop and save after this many minutes")
    t.add_argument("--time-budget", type=float, default=0.0,
                   help="train this many minutes with the cosine schedule laid over time (--steps: upper bound)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--force", action="store_true",
                   help="start over in an --out folder that already holds a run (overwriting it)")
    t.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    t.set_defaults(func=_train)

    s = isub.add_parser("sample", help="generate images: a grid PNG or an ImageFolder",
                        description="Sample class-conditional images; OUT ending in .png writes a grid (one row per "
                                    "class), otherwise an ImageFolder of PNGs. Prints images/s.")
    _add_sampling(s, many=False)
    s.add_argument("--out", required=True, help="grid.png or a folder")
    s.add_argument("--palette", type=int, help="grid only: quantise to this many colours (smaller PNG)")
    s.set_defaults(func=_sample)

    c = isub.add_parser("classifier", help="train the evaluation classifier on real frames",
                        description="A small CNN trained on real ImageFolder frames; `image eval` reports its "
                                    "accuracy on generated images and precision/recall in its feature space.")
    c.add_argument("--data", required=True, help="ImageFolder of real training frames")
    c.add_argument("--val-data", help="held-out ImageFolder: report accuracy on it")
    c.add_argument("--out", required=True, help="checkpoint folder to write")
    c.add_argument("--size", type=int, default=64)
    c.add_argument("--epochs", type=int, default=6)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--lr", type=float, default=2e-3)
    c.add_argument("--width", type=int, default=32)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_classifier)

    e = isub.add_parser("eval", help="score generated images (classifier accuracy, precision/recall, FID/IS)",
                        description="Generate per-class images for every combination of the listed settings and "
                                    "score them against real held-out frames: accuracy of the real-frame "
                                    "classifier, precision/recall and Fréchet distance in its features, and "
                                    "FID / Inception Score when --inception weights are given.")
    _add_sampling(e, many=True)
    e.add_argument("--real", required=True, help="ImageFolder of real held-out frames (the reference)")
    e.add_argument("--real-per-class", type=int, help="reference frames per class (default: all)")
    e.add_argument("--classifier", required=True, help="checkpoint from `driftless image classifier`")
    e.add_argument("--inception", help="Inception weights (.safetensors or TorchScript); nothing is downloaded")
    e.add_argument("--k", type=int, default=3, help="neighbours for precision/recall (default 3)")
    e.add_argument("--reference", action="store_true",
                   help="also score the tokenizer's reconstructions of real frames (the ceiling)")
    e.add_argument("--json", help="append one JSON line per setting to this file")
    e.set_defaults(func=_eval)

    pl = isub.add_parser("plot", help="plot quality vs AR / diffusion steps and speed from `image eval` JSON",
                         description="Three panels: classifier accuracy / precision / recall vs AR steps and vs "
                                     "diffusion steps, and class accuracy vs images/s.")
    pl.add_argument("--json", nargs="+", required=True, help="JSON-lines files written by `image eval --json`")
    pl.add_argument("--out", required=True, help="PNG to write")
    pl.add_argument("--speed", nargs="+", help="JSON lines printed by `image sample` whose images/s replace "
                                               "the eval rows' for the same settings")
    pl.add_argument("--ar-fixed", type=int, default=16, help="AR steps of the diffusion-steps sweep (default 16)")
    pl.add_argument("--diffusion-fixed", type=int, default=50, help="diffusion steps of the AR sweep (default 50)")
    pl.set_defaults(func=_plot)


# ---- driftless data procgen-games --------------------------------------------------------------
_GAMES_EPILOG = """\
examples:
  driftless data procgen-games --out data/procgen-games/train --per-game 400
  driftless data procgen-games --out data/procgen-games/val --per-game 100 --split val

Writes an ImageFolder (one folder per game, PNG files named <split>-NNNNN.png) that
`driftless image train --data` reads. Levels of the train / val / test splits are disjoint
(seeds [0, 10000), [10000, 10500), [10500, 11000)). Re-running skips finished games."""


def _procgen_games(args: argparse.Namespace) -> int:
    from driftless.image.data import GAMES, build_procgen_games

    games = GAMES if args.games in (None, "all") else tuple(g.strip() for g in args.games.split(",") if g.strip())
    summary = build_procgen_games(args.out, per_game=args.per_game, split=args.split, stride=args.stride,
                                  envs=args.envs, seed=args.seed, mode=args.mode, games=games,
                                  progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def register_data(data_sub: argparse._SubParsersAction) -> None:
    """`driftless data procgen-games` (called by driftless.cli with the `data` verb's sub-commands)."""
    p = data_sub.add_parser(
        "procgen-games", help="make the 16-Procgen-games image set (64x64 frames, one class per game)",
        description="Run a uniform random agent in each of the 16 Procgen games and keep one 64x64 frame every "
                    "--stride steps of each of --envs environments (random phase per environment), until "
                    "--per-game frames per game are collected. Written as an ImageFolder of PNGs.",
        epilog=_GAMES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.set_defaults(func=_procgen_games)
