"""Generating and showing images for evaluation: timed generation (images per second and per
CPU-second), class grids, and the quality / speed sweep plot of `driftless image eval` rows."""

from __future__ import annotations

import time
from pathlib import Path


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


def speed_stats(n: int, timing: dict, device: str) -> dict:
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
