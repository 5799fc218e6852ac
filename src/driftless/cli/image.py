"""`driftless image train|sample|classifier|eval|plot`: MAR class-conditional image generation on
continuous tokens (one-frame videos through the tokenizer). See driftless.models.image."""

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
    import torch

    from driftless.cli.common import parse_overrides
    from driftless.config import override, to_dict
    from driftless.data.images import LatentBatches, cached_latents
    from driftless.models import registry
    from driftless.train.distributed import setup
    from driftless.train.trainer import TrainConfig, Trainer

    info = setup(args.device)
    if info.enabled:
        raise ValueError("driftless image train runs on one process (no torchrun)")
    tok = _load_tokenizer(args.tokenizer, str(info.device))
    out = Path(args.out)
    lat, labels, classes = cached_latents(args.data, tok, args.tokenizer, out / "latents-train.safetensors", None,
                                    args.max_per_class, str(info.device))
    val = []
    if args.val_data:
        vlat, vlab, _ = cached_latents(args.val_data, tok, args.tokenizer, out / "latents-val.safetensors", classes,
                                 None, str(info.device))
        g = torch.Generator().manual_seed(999)
        perm = torch.randperm(len(vlat), generator=g)
        val = [{"latents": vlat[perm[i:i + args.batch_size]], "labels": vlab[perm[i:i + args.batch_size]]}
               for i in range(0, min(len(vlat), args.batch_size * args.val_batches), args.batch_size)]
    derived = {"grid": list(tok.cfg.grid), "latent_dim": tok.cfg.latent_dim, "num_classes": len(classes),
               "class_names": list(classes)}
    overrides = parse_overrides(args.set)
    if args.order:
        overrides["order"] = args.order
    cfg = override(registry.preset("image", args.preset), {**derived, **overrides})
    torch.manual_seed(args.seed)
    model = registry.build("image", cfg)
    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                        warmup=args.warmup, weight_decay=args.weight_decay, ema_decay=args.ema_decay, seed=args.seed,
                        log_every=args.log_every, val_every=args.val_every if val else 0,
                        save_every=args.save_every, max_minutes=args.max_minutes, time_budget=args.time_budget)
    meta = {"preset": args.preset, "data": str(Path(args.data).resolve()), "overrides": overrides,
            "tokenizer": str(Path(args.tokenizer).resolve()), "train_images": len(lat)}
    trainer = Trainer(model, train, out, info, "image", to_dict(cfg), meta=meta)
    if args.resume:
        print(f"resumed from step {trainer.step}" if trainer.resume() else "no checkpoint to resume; starting fresh")
    batches = LatentBatches(lat, labels, args.batch_size, seed=args.seed)
    t0, c0 = time.time(), time.process_time()
    summary = trainer.fit(batches.stream, val)
    summary.update(checkpoint=str(out / "checkpoint"), cpu_seconds=round(time.process_time() - c0, 1),
                   wall_seconds=round(time.time() - t0, 1))
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


def generate_images(model, labels: list[int], ar_steps, diffusion_steps, temperature, cfg, cfg_schedule, seed,
                    batch_size: int = 64, device="cpu") -> tuple:
    """(uint8 images (N, h, w, 3), timing {"generate_s", "generate_cpu_s", "decode_s"}): wall and
    process-CPU seconds spent generating latents (CPU seconds are robust to a shared machine)."""
    import torch

    from tqdm.auto import tqdm

    g = torch.Generator(device=device).manual_seed(seed)
    timing, imgs = {"generate_s": 0.0, "generate_cpu_s": 0.0, "decode_s": 0.0}, []
    for i in tqdm(range(0, len(labels), batch_size), desc="generate", unit="batch", leave=False):
        t, c = time.time(), time.process_time()
        z = model.generate(labels[i:i + batch_size], ar_steps=ar_steps, diffusion_steps=diffusion_steps,
                           temperature=temperature, cfg_scale=cfg, cfg_schedule=cfg_schedule, generator=g,
                           device=device)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        timing["generate_s"] += time.time() - t
        timing["generate_cpu_s"] += time.process_time() - c
        t = time.time()
        imgs.append(model.decode(z).cpu())
        timing["decode_s"] += time.time() - t
    return torch.cat(imgs).numpy(), timing


def _speed(n: int, timing: dict, device: str) -> dict:
    import torch

    out = {"images_per_s": round(n / max(timing["generate_s"], 1e-9), 3), "seconds_decode": round(timing["decode_s"], 2)}
    if torch.device(device).type == "cpu":
        out.update(images_per_cpu_s=round(n / max(timing["generate_cpu_s"], 1e-9), 3), threads=torch.get_num_threads())
    return out


def save_grid(path: str | Path, images, labels: list[int], names: list[str], per_row: int | None = None,
              scale: int = 1, colors: int | None = None) -> Path:
    """A PNG with one row per class (its name on the left) and that class's samples across;
    `colors` quantises it to a palette of that many colours (smaller files for docs)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rows = list(dict.fromkeys(labels))
    cols = per_row or max(labels.count(c) for c in rows)
    h, w = images.shape[1:3]
    label_w = 72
    canvas = Image.new("RGB", (label_w + cols * w, len(rows) * h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, c in enumerate(rows):
        idx = [i for i, y in enumerate(labels) if y == c][:cols]
        for j, i in enumerate(idx):
            canvas.paste(Image.fromarray(np.asarray(images[i])), (label_w + j * w, r * h))
        draw.text((4, r * h + h // 2 - 6), names[c] if c >= 0 else "uncond", fill=(0, 0, 0))
    if scale != 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    if colors:
        canvas = canvas.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return Path(path)


def _sample(args) -> int:
    device = default_device(args.device)
    model = _load_image_model(args, device)
    labels = _class_labels(model, args.classes, args.per_class)
    imgs, timing = generate_images(model, labels, args.ar_steps, args.diffusion_steps, args.temperature,
                                   args.cfg, args.cfg_schedule, args.seed, args.batch_size, device)
    names = model.cfg.class_names or [str(i) for i in range(max(1, model.cfg.num_classes))]
    if args.out.endswith(".png"):
        save_grid(args.out, imgs, labels, names, colors=args.palette)
    else:
        from driftless.data.images import write_image_folder

        names_u = names + ["uncond"]
        write_image_folder(args.out, imgs, [c if c >= 0 else len(names) for c in labels], names_u, prefix="sample")
    steps = model.cfg.tokens if model.cfg.order == "raster" else (args.ar_steps or model.cfg.ar_steps)
    print(json.dumps({"out": args.out, "variant": model.cfg.order, "ar_steps": steps,
                      "diffusion_steps": args.diffusion_steps or model.cfg.diffloss.sampling_steps,
                      "temperature": args.temperature, "cfg": args.cfg, "images": len(imgs),
                      "seconds_generate": round(timing["generate_s"], 2), **_speed(len(imgs), timing, device),
                      "device": device}))
    return 0


def _classifier(args) -> int:
    from driftless.data.images import read_image_folder
    from driftless.eval.image_metrics import classify, save_classifier, train_classifier

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

    from driftless.data.images import read_image_folder
    from driftless.eval.image_metrics import classifier_metrics, fid_and_is, load_classifier, load_inception

    device = default_device(args.device)
    model = _load_image_model(args, device)
    clf = load_classifier(args.classifier, device)
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
        from driftless.data.images import encode_images

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
               **_speed(len(imgs), timing, device), **m}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_class_accuracy"}), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps({"checkpoint": str(args.checkpoint), **row}) + "\n")
    return 0


def plot_sweep(rows: list[dict], path: str | Path, ar_fixed: int = 16, diffusion_fixed: int = 50,
               speed: list[dict] | None = None) -> Path:
    """Quality vs AR steps (at `diffusion_fixed`), vs diffusion steps (at `ar_fixed`), and a
    speed/quality scatter, from `image eval` JSON rows (no-CFG, temperature-1 rows for the sweeps).
    Speed is images per CPU-second where measured (else per wall second); `speed` rows (from
    `image sample`) replace it for matching settings."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def key(r):
        return r["variant"], r["ar_steps"], r["diffusion_steps"], float(r["temperature"]), float(r["cfg"])

    fast = {key(r): r.get("images_per_cpu_s", r["images_per_s"]) for r in speed or []}
    rows = [{**r, "speed": fast.get(key(r), r.get("images_per_cpu_s", r.get("images_per_s")))}
            if r["variant"] in ("random", "raster") else r for r in rows]

    plain = [r for r in rows if r["variant"] == "random" and r["cfg"] == 1.0 and r["temperature"] == 1.0]
    ref = {r["variant"]: r for r in rows if r["variant"] in ("real_heldout", "tokenizer_reconstruction")}
    fig = Figure(figsize=(13.5, 3.6))
    axes = fig.subplots(1, 3)
    for ax, key, fixed, name in ((axes[0], "ar_steps", ("diffusion_steps", diffusion_fixed), "AR steps"),
                                 (axes[1], "diffusion_steps", ("ar_steps", ar_fixed), "diffusion steps")):
        sel = sorted((r for r in plain if r[fixed[0]] == fixed[1]), key=lambda r: r[key])
        xs = [r[key] for r in sel]
        for metric, color in (("accuracy", "C0"), ("precision", "C1"), ("recall", "C2")):
            ax.plot(xs, [r[metric] for r in sel], "o-", color=color, label=metric)
            if "tokenizer_reconstruction" in ref:
                ax.axhline(ref["tokenizer_reconstruction"][metric], color=color, ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{name} ({fixed[0].replace('_', ' ')} = {fixed[1]})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (dotted: tokenizer reconstructions)")
    axes[0].legend(loc="lower right", fontsize=8)
    ax = axes[2]
    for r in rows:
        if r["variant"] not in ("random", "raster"):
            continue
        color = "C0" if r["variant"] == "random" else "C3"
        hollow = dict(facecolors="none", edgecolors=color) if r["cfg"] == 1.0 else dict(color=color)
        ax.scatter(r["speed"], r["accuracy"], marker="o" if r["variant"] == "random" else "s", s=30, **hollow)
        tag = f"{r['ar_steps']}/{r['diffusion_steps']}" + (f" cfg{r['cfg']:g}" if r["cfg"] != 1.0 else "") + \
            (f" T{r['temperature']:g}" if r["temperature"] != 1.0 else "")
        ax.annotate(tag, (r["speed"], r["accuracy"]), fontsize=6.5, xytext=(3, 2), textcoords="offset points")
    if "tokenizer_reconstruction" in ref:
        ax.axhline(ref["tokenizer_reconstruction"]["accuracy"], color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("images per CPU-second, 1 thread (label: AR steps / diffusion steps)")
    ax.set_ylabel("class accuracy of generated images")
    ax.set_title("speed vs quality (o random, s raster; filled: CFG)", fontsize=9)
    ax.grid(alpha=0.3)
    FigureCanvasAgg(fig)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    return Path(path)


def _plot(args) -> int:
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
    t.add_argument("--tokenizer", required=True, help="tokenizer checkpoint folder (continuous KL latents)")
    t.add_argument("--out", required=True, help="run folder: checkpoint/, metrics.jsonl, latent caches")
    t.add_argument("--preset", default="small", help="debug | cpu | small | base (default small)")
    t.add_argument("--order", choices=["random", "raster"],
                   help="random: MAR, bidirectional (default); raster: causal next-token ablation")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config field (e.g. --set depth=8 --set diffloss.width=512)")
    t.add_argument("--max-per-class", type=int, help="use at most this many training images per class")
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
    t.add_argument("--resume", action="store_true")
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
