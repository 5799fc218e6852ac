"""Variance-preserving noise schedules over discrete levels k in [0, K].

Level 0 is the clean signal (alpha = 1, sigma = 0) and level K the (almost) pure noise; in
Diffusion Forcing terms, level 0 is "fully visible" and level K "fully masked". A noisy value
is x_k = alpha_k * x_0 + sigma_k * eps with alpha_k^2 + sigma_k^2 = 1.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "sigmoid", "linear")


def alpha_bar(t: torch.Tensor, kind: str) -> torch.Tensor:
    """Signal fraction alpha_k^2 at continuous time t = k / K in [0, 1]."""
    t = t.double()
    if kind == "cosine":
        # Nichol & Dhariwal (2021), offset s = 0.008
        s = 0.008
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        out = f / math.cos(s / (1 + s) * math.pi / 2) ** 2
    elif kind == "sigmoid":
        # Jabri et al. (2022) sigmoid schedule, start -3, end 3, tau 1 (as used by Diffusion Forcing)
        start, end, tau = -3.0, 3.0, 1.0
        v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
        out = (-torch.sigmoid((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    elif kind == "linear":
        # DDPM's linear betas 1e-4 .. 0.02 expressed in continuous time
        b0, b1 = 0.1, 20.0
        out = torch.exp(-(b0 * t + 0.5 * (b1 - b0) * t**2))
    else:
        raise ValueError(f"unknown noise schedule {kind!r}; expected one of {SCHEDULES}")
    return out.clamp(1e-6, 1.0)


class NoiseSchedule:
    """Tabulated alpha/sigma for integer levels 0..K (floats are linearly interpolated)."""

    def __init__(self, kind: str = "sigmoid", levels: int = 1000):
        if levels < 1:
            raise ValueError(f"a noise schedule needs at least 1 level, got {levels}")
        self.kind = kind
        self.levels = levels
        ab = alpha_bar(torch.linspace(0, 1, levels + 1), kind)
        ab[0] = 1.0
        self.alphas = ab.sqrt().float()  # (K+1,)
        self.sigmas = (1 - ab).sqrt().float()  # (K+1,)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """alphas, sigmas on `device`, copied there once (no host-to-device copy per call)."""
        if device.type == "cpu":
            return self.alphas, self.sigmas
        cached = self._on_device.get(device)
        if cached is None:
            cached = self._on_device[device] = (self.alphas.to(device), self.sigmas.to(device))
        return cached

    def alpha_sigma(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k: integer or float levels (any shape) -> alpha, sigma of the same shape."""
        a, s = self._tables(k.device)
        if not k.dtype.is_floating_point:
            return a[k], s[k]
        k = k.clamp(0, self.levels)
        lo = k.floor().long()
        hi = (lo + 1).clamp(max=self.levels)
        w = k - lo
        return a[lo] * (1 - w) + a[hi] * w, s[lo] * (1 - w) + s[hi] * w

    def snr(self, k: torch.Tensor) -> torch.Tensor:
        a, s = self.alpha_sigma(k)
        return a**2 / s.clamp(min=1e-12) ** 2
