"""PSNR / SSIM against values known in closed form and an independent loop implementation."""

import math

import numpy as np
import pytest
import torch

from driftless.eval.metrics import psnr, ssim


def test_psnr_identical_frames_hit_the_cap():
    x = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    per = psnr(x, x, reduce=False)
    assert per.shape == (3,)
    assert torch.allclose(per, torch.full((3,), 100.0))  # mse clamped at 1e-10


def test_psnr_constant_offset_is_exact():
    x = np.random.default_rng(1).integers(0, 200, size=(2, 4, 12, 12, 3), dtype=np.uint8)
    y = x + 10  # no wrap: x < 200
    expected = 20 * math.log10(255 / 10)  # 28.13 dB
    per = psnr(x, y, reduce=False)
    assert per.shape == (2, 4)
    assert torch.allclose(per, torch.full_like(per, expected), atol=1e-4)
    assert abs(float(psnr(x, y)) - expected) < 1e-4


def test_psnr_gaussian_noise_matches_sigma():
    g = torch.Generator().manual_seed(0)
    x = torch.full((4, 64, 64, 3), 0.5)
    for sigma in (0.01, 0.05, 0.1):
        y = x + sigma * torch.randn(x.shape, generator=g)  # float frames: peak 1, no clipping at 0.5 +- 4 sigma
        assert abs(float(psnr(x, y)) - (-20 * math.log10(sigma))) < 0.1


def test_psnr_uint8_and_float_agree():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    b = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    assert torch.allclose(psnr(a, b), psnr(torch.from_numpy(a).float() / 255, torch.from_numpy(b).float() / 255))


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(np.zeros((2, 16, 16, 3), np.uint8), np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


def test_ssim_identical_is_one_and_constant_images_follow_the_luminance_term():
    x = np.random.default_rng(3).integers(0, 256, size=(2, 20, 20, 3), dtype=np.uint8)
    assert torch.allclose(ssim(x, x, reduce=False), torch.ones(2), atol=1e-6)
    a, b = torch.full((16, 16, 3), 0.5), torch.full((16, 16, 3), 0.6)
    c1 = 0.01**2  # zero variance: the structure term is c2 / c2 = 1
    expected = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)
    # float32 cancellation in E[xy] - E[x]E[y] over c2 = 9e-4 leaves ~2e-4 of error
    assert abs(float(ssim(a, b)) - expected) < 1e-3


def _ssim_loop(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """Direct per-window SSIM (Wang et al. 2004) with a Gaussian window, valid region, mean of channels."""
    c = np.arange(size) - (size - 1) / 2
    g = np.exp(-(c**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    h, wd, ch = x.shape
    vals = []
    for k in range(ch):
        for i in range(h - size + 1):
            for j in range(wd - size + 1):
                px, py = x[i:i + size, j:j + size, k], y[i:i + size, j:j + size, k]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
                cov = (w * px * py).sum() - mx * my
                vals.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_a_direct_window_loop():
    rng = np.random.default_rng(4)
    x = rng.random((16, 18, 3))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    ours = float(ssim(torch.from_numpy(x).float(), torch.from_numpy(y).float()))
    assert abs(ours - _ssim_loop(x, y)) < 1e-4


def test_ssim_falls_with_noise_and_is_negative_for_an_inverted_image():
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.random((2, 32, 32, 3))).float()
    values = [float(ssim(x, (x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)))
              for s in (0.0, 0.05, 0.2, 0.5)]
    assert values[0] > 0.999 and all(a > b for a, b in zip(values, values[1:]))
    assert float(ssim(x, 1 - x)) < 0


def _smooth_pair():
    """Deterministic smooth RGB frames and a noisy copy (48 x 40)."""
    rng = np.random.default_rng(2026)
    yy, xx = np.mgrid[0:48, 0:40]
    a = np.stack([127 + 100 * np.sin(xx / 5.0 + c) * np.cos(yy / 7.0) for c in range(3)], -1)
    b = a + rng.normal(0, 12, a.shape)
    return np.clip(a, 0, 255).astype(np.uint8), np.clip(b, 0, 255).astype(np.uint8)


# computed once with scikit-image 0.26: structural_similarity(a, b, channel_axis=-1,
# gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255) and
# peak_signal_noise_ratio(a, b, data_range=255)
SKIMAGE_SSIM = 0.8012285798507103
SKIMAGE_PSNR = 26.532803514966695


def test_psnr_and_ssim_match_scikit_image():
    a, b = (torch.from_numpy(x) for x in _smooth_pair())
    assert float(ssim(a, b)) == pytest.approx(SKIMAGE_SSIM, abs=1e-5)
    assert float(psnr(a, b)) == pytest.approx(SKIMAGE_PSNR, abs=1e-4)


def test_metrics_ignore_bf16_autocast():
    """Validation runs under bf16 autocast; SSIM computed in bf16 there read 0.06 for good
    reconstructions (and above 1 here): the metrics must not follow autocast."""
    a, b = (torch.from_numpy(x) for x in _smooth_pair())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, p = float(ssim(a, b)), float(psnr(a, b))
    assert s == pytest.approx(SKIMAGE_SSIM, abs=1e-5) and p == pytest.approx(SKIMAGE_PSNR, abs=1e-4)
