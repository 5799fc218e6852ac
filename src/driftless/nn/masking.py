"""Masking for masked generative models (MAR, MaskGIT): how many tokens to mask in training, which
ones, and how many stay masked after each generation step. Knows nothing of video: a "group" is
any set of `num_tokens` tokens masked together (a frame, an image).

* mask ratios: `truncated_normal` (MAR: N(1, 0.25^2) on [0.7, 1]), `uniform_ratios` (Genie /
  MaskGIT training: U(0.5, 1)), and `keep_some_unmasked` (ratio 0 for a share of the groups);
* which tokens: `random_order` (a random permutation per group), `random_masks` (ceil(ratio * n)
  tokens of every group, at random);
* inference: `cosine_mask_counts` (MAR's and MaskGIT's cosine unmasking schedule), `gumbel`
  (noise for sampling by argmax and for MaskGIT's confidence ranking).
"""

from __future__ import annotations

import math

import torch


# ---- mask ratios -----------------------------------------------------------------------------------
def truncated_normal(shape: tuple[int, ...], mean: float, std: float, low: float, high: float,
                     device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Samples of N(mean, std^2) restricted to [low, high], by inverting the normal CDF.

    MAR's mask ratio, N(1, std^2) on [low, 1], is `truncated_normal((n,), 1.0, std, low, 1.0, device,
    generator)` (the image model's and the MAR frame model's)."""
    a = torch.special.ndtr(torch.tensor((low - mean) / std, dtype=torch.float64))
    b = torch.special.ndtr(torch.tensor((high - mean) / std, dtype=torch.float64))
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    x = mean + std * torch.special.ndtri(a + (b - a) * u)
    return x.clamp(low, high).float()


def truncated_normal_mean(mean: float, std: float, low: float, high: float) -> float:
    """Mean of N(mean, std^2) restricted to [low, high]."""
    a, b = (low - mean) / std, (high - mean) / std
    pdf = lambda v: math.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)
    cdf = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))
    return mean + std * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))


def uniform_ratios(shape: tuple[int, ...], low: float, high: float, device=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask ratios drawn uniformly from [low, high)."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def keep_some_unmasked(ratios: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Set each group's ratio to 0 (nothing masked) with probability `prob`."""
    if prob <= 0:
        return ratios
    clean = torch.rand(ratios.shape, generator=generator, device=ratios.device) < prob
    return torch.where(clean, torch.zeros_like(ratios), ratios)


# ---- which tokens ------------------------------------------------------------------------------------
def random_order(shape: tuple[int, ...], num_tokens: int, device=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation of range(num_tokens) for every group: int64 (*shape, num_tokens)."""
    return torch.rand(shape + (num_tokens,), generator=generator, device=device).argsort(-1)


def random_masks(ratios: torch.Tensor, num_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """ratios (...) in [0, 1] -> bool masks (..., num_tokens) with ceil(ratio * n) True at random
    positions of every group."""
    n_mask = torch.ceil(ratios * num_tokens - 1e-6).clamp(0, num_tokens).long()  # (...)
    ranks = random_order(ratios.shape, num_tokens, ratios.device, generator).argsort(-1)  # (..., n)
    return ranks < n_mask.unsqueeze(-1)


# ---- inference -----------------------------------------------------------------------------------------
def cosine_mask_counts(num_tokens: int, steps: int) -> list[int]:
    """Tokens still masked after each of `steps` generation steps (MAR's and MaskGIT's cosine
    schedule): floor(n * cos(pi/2 * (i+1)/steps)), at least one token revealed per step, at
    least one kept masked until the last step, 0 after it. steps is capped at num_tokens."""
    if num_tokens < 1 or steps < 1:
        raise ValueError(f"the unmasking schedule needs num_tokens >= 1 and steps >= 1, got {num_tokens}, {steps}")
    steps = min(steps, num_tokens)
    counts, masked = [], num_tokens
    for i in range(steps):
        if i == steps - 1:
            masked = 0
        else:
            want = math.floor(num_tokens * math.cos(math.pi / 2 * (i + 1) / steps))
            masked = max(1, min(masked - 1, want))
        counts.append(masked)
    return counts


def gumbel(shape: tuple[int, ...], device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise: argmax(logits + gumbel) is a categorical draw."""
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))
