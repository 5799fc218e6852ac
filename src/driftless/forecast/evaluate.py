"""Forecast evaluation: the Diffusion-Forcing model beside its baselines on one split.

Every forecaster is a function `(contexts (N, C, D), t0 (N,)) -> sample paths (N, S, H, D)`
scored by `driftless.forecast.metrics.evaluate_samples` on the dataset's test windows.

Baselines:

* `seasonal_naive`: repeats the last season of the context (GluonTS SeasonalNaivePredictor;
  falls back to the last value when the context is shorter than a season); one point path, so
  its CRPS equals its absolute error.
* `VARBaseline`: a vector autoregression (statsmodels) fitted on the standardised training
  series with the lag order chosen by AIC; forecasts are sampled by simulating the fitted
  recursion with Gaussian innovations of the fitted covariance.
* the teacher-forcing network (same `Forecaster` with `teacher_forcing=True`), and for the
  synthetic data the true law (`oracle`).

`fan_chart` draws predicted quantile bands of sample forecasts against the truth (matplotlib, Agg).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from driftless.forecast.data import ForecastDataset
from driftless.forecast.metrics import evaluate_samples

ForecastFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def seasonal_naive(contexts: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """(N, C, D) -> (N, 1, H, D): y_{C+h} = y_{C+h-season*ceil((h+1)/season)}."""
    contexts = np.asarray(contexts, dtype=np.float32)
    c = contexts.shape[1]
    if season < 1 or season > c:
        return np.repeat(contexts[:, None, -1:], horizon, axis=2)
    idx = c - season + (np.arange(horizon) % season)
    return contexts[:, None, idx]


class VARBaseline:
    """Vector autoregression with Gaussian innovations (statsmodels' VAR for the fit)."""

    def __init__(self, maxlags: int | None = None, ic: str | None = "aic", max_dim: int = 150):
        self.maxlags, self.ic, self.max_dim = maxlags, ic, max_dim

    def fit(self, train: np.ndarray) -> "VARBaseline":
        try:
            from statsmodels.tsa.api import VAR
        except ImportError as e:
            raise ValueError("the VAR baseline needs statsmodels: pip install 'driftless[forecast]'") from e
        train = np.asarray(train, dtype=np.float64)
        t, d = train.shape
        if d > self.max_dim:
            raise ValueError(f"VAR baseline skipped: {d} series exceed max_dim={self.max_dim} "
                             "(a dense VAR has D^2 coefficients per lag)")
        self.mean = train.mean(0)
        self.std = np.where(train.std(0) > 0, train.std(0), 1.0)
        z = (train - self.mean) / self.std
        maxlags = self.maxlags or max(1, min(12, (t - 1) // (3 * d + 1)))
        res = VAR(z).fit(maxlags=maxlags, ic=self.ic, trend="c")
        if res.k_ar == 0:
            res = VAR(z).fit(maxlags=1, trend="c")
        self.order = res.k_ar
        self.coefs = np.asarray(res.coefs)  # (p, D, D)
        self.intercept = np.asarray(res.intercept)  # (D,)
        sigma = np.asarray(res.sigma_u) + 1e-9 * np.eye(d)
        self.chol = np.linalg.cholesky(sigma)
        return self

    def sample(self, contexts: np.ndarray, horizon: int, num_samples: int = 100, seed: int = 0) -> np.ndarray:
        """(N, C, D) -> (N, S, H, D) simulated paths."""
        p = self.order
        ctx = (np.asarray(contexts, dtype=np.float64) - self.mean) / self.std
        if ctx.shape[1] < p:
            raise ValueError(f"VAR({p}) needs contexts of at least {p} steps, got {ctx.shape[1]}")
        rng = np.random.default_rng(seed)
        hist = np.repeat(ctx[:, None, -p:], num_samples, axis=1)  # (N, S, p, D), oldest first
        out = []
        for _ in range(horizon):
            y = self.intercept + sum(hist[:, :, -i - 1] @ self.coefs[i].T for i in range(p))
            y = y + rng.normal(size=y.shape) @ self.chol.T
            out.append(y)
            hist = np.concatenate([hist[:, :, 1:], y[:, :, None]], axis=2)
        return (np.stack(out, 2) * self.std + self.mean).astype(np.float32)


def model_forecaster(model, num_samples: int = 100, **sample_kw) -> ForecastFn:
    """Wrap a trained `Forecaster` as a ForecastFn (sample_kw: schedule, steps, context_level, eta, seed)."""
    return lambda ctx, t0: model.sample(ctx, t0, num_samples=num_samples, **sample_kw)


def oracle_forecaster(dataset: ForecastDataset, num_samples: int = 100, seed: int = 0) -> ForecastFn:
    """Paths from the true law of a synthetic dataset."""
    if dataset.process is None:
        raise ValueError(f"{dataset.name} has no known generating process")
    h = dataset.prediction_length
    return lambda ctx, t0: dataset.process.sample_forecast(ctx[:, -1], t0 + ctx.shape[1] - 1, h, num_samples, seed)


def baseline_forecasters(dataset: ForecastDataset, names: list[str], num_samples: int = 100,
                         seed: int = 0) -> tuple[dict[str, ForecastFn], dict[str, str]]:
    """Build the named baselines ('seasonal_naive', 'var', 'oracle'); returns (fns, skipped reasons)."""
    fns, skipped = {}, {}
    h = dataset.prediction_length
    for name in names:
        try:
            if name == "seasonal_naive":
                fns[name] = lambda ctx, t0: seasonal_naive(ctx, h, dataset.season)
            elif name == "var":
                var = VARBaseline().fit(dataset.train)
                fns[f"var({var.order})"] = lambda ctx, t0, var=var: var.sample(ctx, h, num_samples, seed)
            elif name == "oracle":
                fns[name] = oracle_forecaster(dataset, num_samples, seed)
            else:
                raise ValueError(f"unknown baseline {name!r}; expected seasonal_naive, var or oracle")
        except ValueError as e:
            if "unknown baseline" in str(e):
                raise
            skipped[name] = str(e)
    return fns, skipped


def history_length(dataset: ForecastDataset, context_length: int) -> int:
    """Steps of history handed to every forecaster: enough for the model's context, a season
    and a VAR of up to 12 lags (each forecaster uses the tail it needs)."""
    return max(context_length, dataset.season, 16)


def law_coverage(dataset: ForecastDataset, samples: np.ndarray, contexts: np.ndarray, t0: np.ndarray,
                 levels=(0.5, 0.8, 0.9)) -> dict[str, float]:
    """Probability that the true law (synthetic data) puts in each central sample interval,
    averaged over windows, steps and series: calibration without the noise of one realisation."""
    from scipy.stats import norm

    c, h = contexts.shape[1], dataset.prediction_length
    mean, cov = dataset.process.forecast_law(contexts[:, -1], t0 + c - 1, h)
    std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))  # (H, D)
    out = {}
    for level in levels:
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
        out[f"law_cov{int(round(level * 100))}"] = float(
            (norm.cdf((hi - mean) / std) - norm.cdf((lo - mean) / std)).mean())
    return out


def evaluate(dataset: ForecastDataset, forecasters: dict[str, ForecastFn], context_length: int,
             keep_samples: bool = False) -> dict[str, dict]:
    """Score each forecaster on the test windows: {name: metrics (+ 'seconds', + 'samples')}.

    Forecasters receive `history_length(dataset, context_length)` steps of history. With a known
    generating process, `law_cov50/80/90` (see `law_coverage`) are added."""
    contexts, targets, t0 = dataset.windows(history_length(dataset, context_length))
    results = {}
    for name, fn in forecasters.items():
        start = time.time()
        samples = fn(contexts, t0)
        metrics = evaluate_samples(samples, targets)
        if dataset.process is not None:
            metrics.update(law_coverage(dataset, samples, contexts, t0))
        metrics["seconds"] = time.time() - start
        metrics["num_samples"] = int(samples.shape[1])
        if keep_samples:
            metrics["samples"] = samples
        results[name] = metrics
    return results


def format_table(results: dict[str, dict], keys=("crps_sum", "crps", "nd", "nd_sum", "nrmse", "cov50", "cov90")) -> str:
    """Markdown table of metrics, one row per forecaster."""
    lines = ["| forecaster | " + " | ".join(keys) + " | seconds |", "|---" * (len(keys) + 2) + "|"]
    for name, m in results.items():
        cells = [f"{m[k]:.4f}" if isinstance(m.get(k), float) else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m.get('seconds', float('nan')):.1f} |")
    return "\n".join(lines)


# ---- fan charts --------------------------------------------------------------------------------
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
