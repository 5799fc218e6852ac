"""Forecast metrics against closed-form values for Gaussians and GluonTS's definitions."""

import numpy as np
import pytest
from scipy.stats import norm

from driftless.forecast import metrics as fm


def _crps_by_integration(mu, sigma, y):
    # definition: integral of (F(x) - 1[x >= y])^2 dx, on a fine grid
    x = np.linspace(mu - 12 * sigma, mu + 12 * sigma, 200001)
    f = norm.cdf(x, mu, sigma)
    return np.trapz((f - (x >= y)) ** 2, x)


@pytest.mark.parametrize("mu,sigma,y", [(0.0, 1.0, 0.0), (1.0, 2.0, -1.5), (-3.0, 0.5, -2.2)])
def test_gaussian_closed_form_matches_definition(mu, sigma, y):
    assert fm.crps_gaussian(mu, sigma, y) == pytest.approx(_crps_by_integration(mu, sigma, y), rel=1e-4)


def test_sample_crps_converges_to_closed_form():
    rng = np.random.default_rng(0)
    mu, sigma = 2.0, 1.5
    ys = np.array([-1.0, 2.0, 4.5])
    samples = rng.normal(mu, sigma, size=(200_000, 1))
    got = fm.crps_samples(samples, ys, axis=0)  # (S, 1) samples broadcast against 3 observations
    want = fm.crps_gaussian(mu, sigma, ys)
    np.testing.assert_allclose(got, want, rtol=0.01)
    # the O(S log S) spread term equals the naive pairwise mean
    small = rng.normal(size=(50,))
    pair = np.abs(small[:, None] - small[None, :]).mean()
    naive = np.abs(small - 0.3).mean() - 0.5 * pair
    assert fm.crps_samples(small, 0.3) == pytest.approx(naive, rel=1e-12)


def test_quantile_loss_integral_is_crps():
    """2 * integral_0^1 QL_q(F^-1(q), y) dq = CRPS; GluonTS's 19 quantiles approximate it."""
    mu, sigma, y = 0.5, 1.3, 1.7
    crps = float(fm.crps_gaussian(mu, sigma, y))

    def approx(qs):
        return np.mean([fm.quantile_loss(y, mu + sigma * norm.ppf(q), q) for q in qs])

    fine = (np.arange(2000) + 0.5) / 2000
    assert approx(fine) == pytest.approx(crps, rel=2e-3)
    assert approx(fm.QUANTILES) == pytest.approx(crps, rel=0.08)
    assert len(fm.QUANTILES) == 19 and fm.QUANTILES[0] == 0.05 and fm.QUANTILES[-1] == 0.95


def test_crps_sum_of_independent_gaussians():
    """Summed series of independent Gaussians is N(sum mu, sum sigma^2): compare with its quantiles."""
    rng = np.random.default_rng(1)
    n, h, d, s = 3, 5, 4, 20000
    mu = rng.uniform(5, 10, size=(n, h, d))
    sigma = rng.uniform(0.5, 2.0, size=(d,))
    target = mu + sigma * rng.normal(size=(n, h, d))
    samples = mu[:, None] + sigma * rng.normal(size=(n, s, h, d))
    got = fm.crps_sum(samples, target)
    mu_s, sd_s, y_s = mu.sum(-1), np.sqrt((sigma**2).sum()), target.sum(-1)
    qf = np.stack([mu_s + sd_s * norm.ppf(q) for q in fm.QUANTILES])
    want = fm.mean_weighted_quantile_loss(qf, y_s)
    assert got == pytest.approx(want, rel=0.02)
    # and it approximates the exact Gaussian CRPS of the sum, normalised by sum |y|
    exact = fm.crps_gaussian(mu_s, sd_s, y_s).sum() / np.abs(y_s).sum()
    assert got == pytest.approx(exact, rel=0.1)


def test_point_forecast_crps_equals_nd():
    rng = np.random.default_rng(2)
    target = rng.uniform(1, 5, size=(4, 6, 3))
    point = target + rng.normal(size=target.shape)
    samples = point[:, None]
    per_dim = fm.crps_per_dim(samples, target)
    for j in range(3):
        assert per_dim[j] == pytest.approx(fm.nd(point[..., j], target[..., j]), rel=1e-12)


def test_coverage_and_evaluate_samples():
    rng = np.random.default_rng(3)
    target = rng.normal(size=(50, 10, 2)) + 10
    good = rng.normal(size=(50, 400, 10, 2)) + 10
    narrow = 0.3 * rng.normal(size=(50, 400, 10, 2)) + 10
    assert fm.coverage(good, target, 0.8) == pytest.approx(0.8, abs=0.04)
    assert fm.coverage(narrow, target, 0.8) < 0.45
    m_good, m_narrow = fm.evaluate_samples(good, target), fm.evaluate_samples(narrow, target)
    assert m_good["crps"] < m_narrow["crps"] and m_good["energy_crps"] < m_narrow["energy_crps"]
    assert set(m_good) >= {"crps", "crps_sum", "nd", "nd_sum", "mse", "nrmse", "cov50", "cov80", "cov90"}


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="samples"):
        fm.crps_sum(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="disagree"):
        fm.crps_sum(np.zeros((2, 5, 3, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="sigma"):
        fm.crps_gaussian(0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="level"):
        fm.coverage(np.zeros((1, 2, 1, 1)), np.zeros((1, 1, 1)), 1.5)
