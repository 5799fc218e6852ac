"""Frame-quality metrics on uint8 or [0, 1] float frames laid out (..., H, W, C).

PSNR uses a peak of 255 for uint8 input and 1 for float input. SSIM follows Wang et al. (2004):
an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, computed per channel and
averaged (the scikit-image / TF `ssim` convention with `gaussian_weights=True`), valid region only.

Both always compute in float32, also when called under bf16 autocast (as training's validation
is): SSIM's variances are differences of nearly equal window means, which bf16 cancels into
noise (validation once logged SSIM 0.06 for frames whose true SSIM was 0.77). Training's
validation and `driftless eval` call these same functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _as_unit(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return t.float()


def _float32(fn):
    """Run a metric with autocast off (float32 arithmetic whatever the caller's autocast)."""

    def wrapped(a, b, *args, **kwargs):
        device = torch.as_tensor(a).device.type
        with torch.autocast(device_type=device, enabled=False):
            return fn(a, b, *args, **kwargs)

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


@_float32
def psnr(a, b, reduce: bool = True) -> torch.Tensor:
    """PSNR in dB between frames (..., H, W, C); per frame (...) unless reduce (mean over frames)."""
    x, y = _as_unit(a), _as_unit(b)
    if x.shape != y.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = ((x - y) ** 2).flatten(-3).mean(-1)
    out = -10 * torch.log10(mse.clamp(min=1e-10))
    return out.mean() if reduce else out


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


@_float32
def ssim(a, b, reduce: bool = True, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity between frames (..., H, W, C) on a [0, 1] scale."""
    x, y = _as_unit(a), _as_unit(b)
    if x.shape != y.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    lead = x.shape[:-3]
    h, w, c = x.shape[-3:]
    if h < window or w < window:
        raise ValueError(f"ssim needs frames of at least {window}x{window}, got {h}x{w}")
    x = x.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)  # (n*c, 1, h, w)
    y = y.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    kernel = _gaussian_window(window, sigma).to(x.device)[None, None]
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.conv2d(x, kernel), F.conv2d(y, kernel)
    sxx = F.conv2d(x * x, kernel) - mu_x**2
    syy = F.conv2d(y * y, kernel) - mu_y**2
    sxy = F.conv2d(x * y, kernel) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    per = (num / den).flatten(1).mean(1).reshape(-1, c).mean(1).reshape(lead)
    return per.mean() if reduce else per
