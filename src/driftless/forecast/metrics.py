"""Probabilistic forecast metrics: CRPS (exact and GluonTS's quantile approximation), CRPS-sum,
ND, MSE, NRMSE and interval coverage.

Conventions: `samples` has shape (N, S, H, D) (test windows, sample paths, horizon, series) and
`target` (N, H, D). All functions take numpy arrays (or anything `np.asarray` accepts).

How GluonTS scores a multivariate forecast (the numbers TimeGrad and Diffusion Forcing report):

* the forecast's quantiles at q in {0.05, 0.10, ..., 0.95} are taken from the sample paths
  with `np.quantile` (linear interpolation);
* the quantile loss of one series is QL_q = 2 * sum_t |(y_t - yhat_q,t) * (1[y_t <= yhat_q,t] - q)|
  summed over the forecast steps of every test window, and the weighted quantile loss is
  wQL_q = QL_q / sum_t |y_t| (same sums); `mean_wQuantileLoss` averages wQL_q over the 19 q;
* **CRPS** is `mean_wQuantileLoss` computed per series and averaged over series (GluonTS's
  MultivariateEvaluator aggregates per-dimension metrics with a mean);
* **CRPS-sum** is `mean_wQuantileLoss` of the summed series: targets and every sample path are
  summed over the D series first (GluonTS's `m_sum_mean_wQuantileLoss`).

Because 2 * integral_0^1 QL_q dq is the CRPS, the 19-quantile average approximates the CRPS
divided by sum |y|; `crps_samples` / `crps_gaussian` give the exact per-point values.
"""

from __future__ import annotations

import math

import numpy as np

QUANTILES = tuple(round(q, 2) for q in np.arange(1, 20) / 20.0)  # 0.05 .. 0.95, as GluonTS


def _check(samples, target) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(samples, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if s.ndim != 4 or y.ndim != 3:
        raise ValueError(f"expected samples (N, S, H, D) and target (N, H, D), got {s.shape} and {y.shape}")
    if (s.shape[0],) + s.shape[2:] != y.shape:
        raise ValueError(f"samples {s.shape} and target {y.shape} disagree on (N, H, D)")
    if s.shape[1] < 1:
        raise ValueError("samples need at least one path along axis 1")
    return s, y


# ---------------------------------------------------------------- exact CRPS of one distribution

def crps_gaussian(mu, sigma, y) -> np.ndarray:
    """Closed-form CRPS of N(mu, sigma^2) at y (elementwise, broadcasting)."""
    from scipy.stats import norm

    mu, sigma, y = (np.asarray(a, dtype=np.float64) for a in (mu, sigma, y))
    if np.any(sigma <= 0):
        raise ValueError("crps_gaussian needs sigma > 0")
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def crps_samples(samples, y, axis: int = 0) -> np.ndarray:
    """Exact CRPS of the empirical distribution of `samples` (along `axis`) at y.

    CRPS = E|X - y| - 0.5 E|X - X'|; the second term is computed from the sorted samples in
    O(S log S): E|X - X'| = 2 / S^2 * sum_i (2i - S - 1) x_(i).
    """
    x = np.moveaxis(np.asarray(samples, dtype=np.float64), axis, 0)  # (S, ...)
    y = np.asarray(y, dtype=np.float64)
    s = x.shape[0]
    term1 = np.abs(x - y[None]).mean(0)
    xs = np.sort(x, axis=0)
    w = (2 * np.arange(1, s + 1) - s - 1).reshape((s,) + (1,) * (x.ndim - 1))
    term2 = (w * xs).sum(0) * 2 / s**2
    return term1 - 0.5 * term2


# ---------------------------------------------------------------- GluonTS quantile approximation

def quantile_loss(target, forecast_q, q: float) -> float:
    """GluonTS's QuantileLoss: 2 * sum |(y - yhat_q) * (1[y <= yhat_q] - q)| over all entries."""
    y = np.asarray(target, dtype=np.float64)
    f = np.asarray(forecast_q, dtype=np.float64)
    return float(2 * np.sum(np.abs((f - y) * ((y <= f) - q))))


def sample_quantiles(samples, quantiles=QUANTILES, axis: int = 1) -> np.ndarray:
    """Quantiles over the sample axis: (Q, ...rest) with np.quantile's linear interpolation."""
    return np.quantile(np.asarray(samples, dtype=np.float64), list(quantiles), axis=axis)


def mean_weighted_quantile_loss(q_forecasts: np.ndarray, target, quantiles=QUANTILES) -> float:
    """mean over q of sum QL_q / sum |y|; q_forecasts: (Q, ...target shape)."""
    y = np.asarray(target, dtype=np.float64)
    denom = np.abs(y).sum()
    if denom == 0:
        raise ValueError("weighted quantile loss is undefined: the target is all zeros")
    return float(np.mean([quantile_loss(y, q_forecasts[i], q) / denom for i, q in enumerate(quantiles)]))


def crps_quantile(samples, target, quantiles=QUANTILES) -> float:
    """GluonTS `mean_wQuantileLoss` pooled over all entries (one series or all, as given)."""
    s, y = _check(samples, target)
    return mean_weighted_quantile_loss(sample_quantiles(s, quantiles), y, quantiles)


def crps_per_dim(samples, target, quantiles=QUANTILES) -> np.ndarray:
    """(D,) GluonTS `mean_wQuantileLoss` of each series over all windows and steps (NaN where the
    series' target is all zeros)."""
    s, y = _check(samples, target)
    qf = sample_quantiles(s, quantiles)  # (Q, N, H, D)
    out = np.full(y.shape[-1], np.nan)
    for d in range(y.shape[-1]):
        if np.abs(y[..., d]).sum() > 0:
            out[d] = mean_weighted_quantile_loss(qf[..., d], y[..., d], quantiles)
    return out


def crps_sum(samples, target, quantiles=QUANTILES) -> float:
    """CRPS-sum: `mean_wQuantileLoss` of the series summed over D (GluonTS m_sum_mean_wQuantileLoss)."""
    s, y = _check(samples, target)
    return crps_quantile(s.sum(-1, keepdims=True), y.sum(-1, keepdims=True), quantiles)


# ---------------------------------------------------------------- point and interval metrics

def nd(point, target) -> float:
    """Normalised deviation sum |y - yhat| / sum |y| (GluonTS uses the median as yhat)."""
    p = np.asarray(point, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    denom = np.abs(y).sum()
    if denom == 0:
        raise ValueError("ND is undefined: the target is all zeros")
    return float(np.abs(y - p).sum() / denom)


def mse(point, target) -> float:
    p = np.asarray(point, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    return float(np.mean((y - p) ** 2))


def nrmse(point, target) -> float:
    """sqrt(MSE) / mean |y| (GluonTS's NRMSE)."""
    y = np.asarray(target, dtype=np.float64)
    return float(math.sqrt(mse(point, y)) / max(np.abs(y).mean(), 1e-12))


def coverage(samples, target, level: float = 0.8) -> float:
    """Fraction of targets inside the central `level` interval of the sample paths."""
    if not 0 < level < 1:
        raise ValueError(f"coverage level must lie in (0, 1), got {level}")
    s, y = _check(samples, target)
    lo, hi = sample_quantiles(s, ((1 - level) / 2, (1 + level) / 2))
    return float(np.mean((y >= lo) & (y <= hi)))


def evaluate_samples(samples, target, quantiles=QUANTILES) -> dict[str, float]:
    """All metrics of a sample forecast, GluonTS names in brackets.

    crps (mean_wQuantileLoss, mean over series), crps_sum (m_sum_mean_wQuantileLoss),
    nd (ND with the median, mean over series), nd_sum, mse (mean forecast), nrmse,
    energy_crps (exact sample CRPS averaged over all points, unnormalised), cov50, cov80, cov90.
    """
    s, y = _check(samples, target)
    median = np.median(s, axis=1)
    mean = s.mean(1)
    per_dim_nd = [nd(median[..., d], y[..., d]) for d in range(y.shape[-1]) if np.abs(y[..., d]).sum() > 0]
    return {
        "crps": float(np.nanmean(crps_per_dim(s, y, quantiles))),
        "crps_sum": crps_sum(s, y, quantiles),
        "nd": float(np.mean(per_dim_nd)),
        "nd_sum": nd(np.median(s.sum(-1), axis=1), y.sum(-1)),
        "mse": mse(mean, y),
        "nrmse": nrmse(mean, y),
        "energy_crps": float(crps_samples(s, y, axis=1).mean()),
        "cov50": coverage(s, y, 0.5),
        "cov80": coverage(s, y, 0.8),
        "cov90": coverage(s, y, 0.9),
    }
