"""Fan charts: predicted quantile bands of sample forecasts against the truth (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BANDS = ((0.05, 0.95), (0.25, 0.75))
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def fan_chart(path: str | Path, history: np.ndarray, target: np.ndarray, samples: dict[str, np.ndarray] | np.ndarray,
              dims: list[int] | None = None, names: list[str] | None = None, title: str | None = None,
              bands=BANDS, max_dims: int = 3) -> Path:
    """Write a PNG: one row per forecaster, one column per series plus the sum over all series.

    history (C, D) and target (H, D) are the observed values before and during the forecast;
    samples (S, H, D), or {forecaster name: (S, H, D)}, are drawn as a median line with shaded
    quantile bands (5-95 % and 25-75 % by default). `dims` picks series (default: the first
    `max_dims`); the last column is the sum over all series (what CRPS-sum scores).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = np.asarray(history, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if history.ndim != 2 or target.ndim != 2 or history.shape[1] != target.shape[1]:
        raise ValueError(f"history (C, D) and target (H, D) must share D, got {history.shape} and {target.shape}")
    groups = samples if isinstance(samples, dict) else {"forecast": samples}
    if not groups:
        raise ValueError("fan_chart needs at least one forecaster's samples")
    for name, s in groups.items():
        if np.ndim(s) != 3 or np.shape(s)[1:] != target.shape:
            raise ValueError(f"samples of {name!r} must be (S, {target.shape[0]}, {target.shape[1]}), got {np.shape(s)}")
    d = target.shape[1]
    dims = list(range(min(d, max_dims))) if dims is None else list(dims)
    if any(not 0 <= i < d for i in dims):
        raise ValueError(f"dims must lie in [0, {d}), got {dims}")
    panels = [(i, names[i] if names else f"series {i}") for i in dims] + [(None, "sum of all series")]
    c, h = history.shape[0], target.shape[0]
    t_hist, t_fut = np.arange(-c, 0), np.arange(h)
    fig, axes = plt.subplots(len(groups), len(panels), figsize=(3.6 * len(panels), 2.4 * len(groups)),
                             squeeze=False)
    for r, ((name, s), color) in enumerate(zip(groups.items(), COLORS * len(groups))):
        s = np.asarray(s, dtype=np.float64)
        for ax, (dim, label) in zip(axes[r], panels):
            pick = (lambda a: a.sum(-1)) if dim is None else (lambda a, j=dim: a[..., j])
            ax.plot(t_hist, pick(history), color="black", lw=1)
            ax.plot(t_fut, pick(target), color="black", lw=1.5, label="truth")
            ps = pick(s)  # (S, H)
            for lo, hi in bands:
                qlo, qhi = np.quantile(ps, [lo, hi], axis=0)
                ax.fill_between(t_fut, qlo, qhi, color=color, alpha=0.25, lw=0)
            ax.plot(t_fut, np.median(ps, axis=0), color=color, lw=1.2, label="median")
            ax.axvline(-0.5, color="grey", lw=0.6, ls=":")
            ax.set_title(f"{name}: {label}" if len(groups) > 1 else label, fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title + f"  (bands: {', '.join(f'{int(a*100)}-{int(b*100)}%' for a, b in bands)})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
