"""PNG figures of an evaluation (matplotlib's Agg canvas; no display, no global pyplot state).

    psnr_vs_horizon(result, path)       rollout PSNR/SSIM per step, random actions, copy-last, Delta_t
    drift_vs_horizon(result, path)      drift measures vs frame index, real reference bands; the
                                        same-level distances to the context with the band of real
                                        long episodes (percentile shading)
    frame_strip(rows, labels, path)     rows of frames side by side (real / generated ...)
    write_all(result, artifacts, dir)   every figure an evaluation has data for (controls strips: eval/controls.py)
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from driftless.checkpoint import atomic_write_bytes


def _save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def psnr_vs_horizon(result: dict, path: str | Path, title: str | None = None) -> Path:
    """PSNR and SSIM vs horizon step for the protocol's actions, random actions and the
    copy-last-frame baseline; a third panel with Delta_t PSNR when there are actions."""
    r = result["rollout"]
    steps = np.arange(1, len(r["psnr_per_step"]) + 1)
    delta = result.get("delta")
    fig = Figure(figsize=(14 if delta else 10, 3.8))
    axes = fig.subplots(1, 3 if delta else 2)
    label = f"{r['actions']} actions" if r["actions"] != "none" else "generated"
    for ax, key, name in ((axes[0], "psnr_per_step", "PSNR (dB)"), (axes[1], "ssim_per_step", "SSIM")):
        ax.plot(steps, r[key], "o-", label=label)
        if "random_actions" in r:
            ax.plot(steps, r["random_actions"][key], "s--", label="random actions")
        ax.plot(steps, r["copy_last"][key], ":", color="grey", label="copy last context frame")
        ax.set_xlabel("horizon step t (frames after the context)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if delta:
        ax = axes[2]
        colors = ["C3" if t == delta["t"] else "C7" for t in steps]
        ax.bar(steps, delta["per_step"], color=colors)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("horizon step t")
        ax.set_ylabel("Δ_t PSNR (dB)")
        ax.set_title(f"Δ_{delta['t']} PSNR = {delta['delta_psnr']:+.3f} dB", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title or f"rollout: {r['context']} context frame(s), {r['clips']} clips")
    return _save(fig, path)


def drift_vs_horizon(result: dict, path: str | Path, title: str | None = None) -> Path:
    """Four panels of the drift curves (mean and interquartile band over rollouts) with the
    held-out real frames' median and collapse thresholds; with same-level results two more:
    palette and layout distance to the rollout's context, the real long episodes' 50th-90th
    percentile shaded (their median dashed)."""
    d = result["drift"]
    x = np.asarray(d["horizon"])
    ref, thr = d["reference"], d["reference"]["thresholds"]
    panels = [("nn_psnr", "NN-PSNR to real bank (dB)", [ref["nn_psnr_median"]], [thr["nn_psnr_min"]]),
              ("color_tv", "colour histogram distance", [ref["color_tv_median"]], [thr["color_tv_max"]]),
              ("sharpness", "sharpness (RMS gradient)", [ref["sharpness_median"]],
               [thr["sharpness_min"], thr["sharpness_max"]]),
              ("collapsed", "fraction of collapsed frames", [ref["collapse_rate"]], [])]
    sl = d.get("same_level") or {}
    same = bool(sl.get("available"))
    fig = Figure(figsize=(16 if same else 11, 7))
    axes = fig.subplots(2, 3 if same else 2).reshape(-1)
    if same:  # the two same-level panels go last: reorder to nn_psnr, color_tv, palette / sharpness, collapsed, layout
        axes = [axes[0], axes[1], axes[3], axes[4], axes[2], axes[5]]
    for ax, (key, name, medians, lines) in zip(axes, panels):
        c = d["curves"][key]
        ax.plot(x, c["mean"], color="C0", label="generated (mean)")
        ax.fill_between(x, c["q25"], c["q75"], color="C0", alpha=0.2, label="interquartile")
        for m in medians:
            ax.axhline(m, color="C2", ls="--", label="real frames")
        for t in lines:
            ax.axhline(t, color="C3", ls=":", label="collapse threshold")
        ax.set_xlabel("frames generated")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8)
    if same:
        pct = f"p{sl['percentile']:g}"
        for ax, key, name in ((axes[4], "palette_tv", "palette distance to the context (TV)"),
                              (axes[5], "layout_rmse", "low-res layout distance to the context")):
            c, band = sl["curves"][key], sl["band"][key]
            ax.plot(x, c["mean"], color="C0", label="generated (mean)")
            ax.fill_between(x, c["q25"], c["q75"], color="C0", alpha=0.2, label="interquartile")
            lo = np.array([np.nan if v is None else v for v in band["p50"]], dtype=float)
            hi = np.array([np.nan if v is None else v for v in band[pct]], dtype=float)
            ax.fill_between(x, lo, hi, color="C2", alpha=0.25, label=f"real long episodes, p50-{pct}")
            ax.plot(x, lo, color="C2", ls="--", lw=0.8)
            ax.plot(x, hi, color="C2", ls=":", lw=0.8)
            ax.set_xlabel("frames generated")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        score = sl["summary"].get("same_level_score")
        if score is not None:
            axes[4].set_title(f"same-level score {score:.2f} (frames inside real {pct}, last "
                              f"{sl['window']}; real play ~{sl['percentile'] / 100:.2f})", fontsize=8)
    s = d["summary"]
    fig.suptitle(title or f"drift: {s['rollouts']} rollouts x {s['frames']} frames, random actions "
                          f"(drift {s['drift_db']:.2f} dB, collapsed at end {s['collapse_rate_last']:.0%})")
    return _save(fig, path)


def frame_strip(rows, labels: list[str], path: str | Path, col_labels: list[str] | None = None,
                scale: float = 1.0, title: str | None = None, gap: int = 2) -> Path:
    """rows: list of uint8 (T, H, W, 3) (same H, W; shorter rows are padded white), drawn as one
    mosaic with row labels on the left and column labels on top."""
    rows = [np.asarray(r) for r in rows]
    if not rows or any(r.ndim != 4 or r.dtype != np.uint8 or r.shape[-1] != 3 for r in rows):
        raise ValueError("frame_strip needs a non-empty list of uint8 (T, H, W, 3) rows")
    if len(labels) != len(rows):
        raise ValueError(f"frame_strip needs one label per row, got {len(labels)} for {len(rows)} rows")
    t_max = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[1:3]
    mosaic = np.full((len(rows) * (h + gap) - gap, t_max * (w + gap) - gap, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        if r.shape[1:3] != (h, w):
            raise ValueError(f"every row needs {h}x{w} frames, row {i} has {r.shape[1]}x{r.shape[2]}")
        for j in range(r.shape[0]):
            mosaic[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = r[j]
    inch = 0.75 * scale * max(h, w) / 64
    fig = Figure(figsize=(t_max * inch + 1.4, len(rows) * inch + 0.6))
    ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(len(rows))], labels, fontsize=7)
    if col_labels is not None:
        ax.xaxis.tick_top()
        ax.set_xticks([j * (w + gap) + w / 2 for j in range(min(t_max, len(col_labels)))],
                      col_labels[:t_max], fontsize=7)
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9, pad=14 if col_labels is not None else 4)
    return _save(fig, path, dpi=100)


def write_all(result: dict, artifacts: dict, out_dir: str | Path) -> list[str]:
    """Write every figure the evaluation has data for into out_dir; returns the paths."""
    out = Path(out_dir)
    written = []
    if result.get("rollout"):
        written.append(psnr_vs_horizon(result, out / "psnr_vs_horizon.png"))
    strips = artifacts.get("strips") or {}
    if strips:
        n_ctx = result["rollout"]["context"]
        cols = [f"ctx {i + 1}" for i in range(n_ctx)] + [f"t={t}" for t in range(1, result["rollout"]["horizon"] + 1)]
        rows, labels = [], []
        for k in range(strips["real"].shape[0]):
            for key, name in (("real", "real"), ("generated", result["rollout"]["actions"]),
                              ("random_actions", "random")):
                if key in strips:
                    rows.append(strips[key][k])
                    labels.append(f"clip {k} {name}" if key == "real" else name)
        written.append(frame_strip(rows, labels, out / "rollout_strip.png", col_labels=cols,
                                   title="real vs generated (context frames first)"))
    if result.get("drift"):
        written.append(drift_vs_horizon(result, out / "drift_vs_horizon.png"))
        strip = artifacts.get("drift_strip")
        if strip is not None and len(strip):
            steps = artifacts.get("drift_strip_steps", [])
            cols = ["context" if s == 0 else f"{s}" for s in steps]
            rows, labels = list(strip), [f"rollout {i}" for i in range(len(strip))]
            real = artifacts.get("drift_real_strip")
            if real is not None and len(real):
                rows.append(np.asarray(real))
                labels.append("real, one level")
            written.append(frame_strip(rows, labels, out / "drift_strip.png", col_labels=cols,
                                       title="long rollouts with random actions (frame index above)"))
    if result.get("controls", {}).get("available"):
        from driftless.eval.controls import write_strips

        written += write_strips(result, artifacts, out)
    return [str(p) for p in written]
