"""Guidance: reward gradients, MCTG and inpainting for scheduling-matrix samplers; the
classifier-free combination of two predictions (CFG on the action, history guidance).

Every helper returns a `guide(x0_hat, x, levels) -> x0_corrected` callback for
`driftless.diffusion.scheduling.sample_matrix`; none knows what the tokens mean. A reward is a
differentiable function of the clean-token estimate, `reward_fn(x0_hat (b, T, ...)) -> (b,)`,
higher is better (a goal is a reward: minus the distance to it).

* `reward_guide(..., mode="noisy")`: classifier guidance. The gradient of the reward of the
  denoiser's estimate is taken with respect to the *noisy* tokens x_k, through the denoiser, and
  added to the estimate as x0 <- x0 + scale * sigma_k^2 / alpha_k * grad (the x0 form of
  eps <- eps - sigma_k * grad). With a causal denoiser the reward of later tokens reaches
  earlier ones only through the network, which is what makes guidance of the next token
  depend on its futures.
* Monte Carlo Tree Guidance (Diffusion Forcing, Chen et al. 2024): with `samples=K > 1` the
  gradient is averaged over K futures: sample 1 is the current noisy plan, samples 2..K
  re-draw every still-noisy token from the forward process around the current estimate,
  x_k' = alpha_k x0_hat + sigma_k eps'. Each copy's gradient is applied to the real tokens
  (straight-through), so a token is pushed the way that is good on average over futures
  rather than for one. K = 1 is plain guidance, exactly.
* `reward_guide(..., mode="x0")`: the cheap variant: gradient of the reward at the estimate
  itself, x0 <- x0 + scale * sigma_k^2 * grad_x0 (no pass through the denoiser; no MCTG).
* `inpaint_guide(mask, values)`: replace masked entries of the estimate (Diffuser's way of
  conditioning on a start or goal state).

Classifier-free combinations (the video frame models call them on the denoiser's output, in its
parametrisation; the combination is linear, so it is the same on x0, eps or v):

* `free_guidance(cond, uncond, scale)` = uncond + scale * (cond - uncond): classifier-free
  guidance (Ho & Salimans 2022) on the action (`cfg_scale`, the unconditional prediction takes
  the null action) and history guidance (`history_guidance`, the unconditional prediction sees
  the past fully noised: "History-guided video diffusion", Song et al. 2025). Scale 1 returns
  `cond` itself, bit for bit.
* `check_guidance_scale(name, value)`: a finite number in [0, MAX_GUIDANCE], else ValueError.
"""

from __future__ import annotations

from typing import Callable

import math
import numbers

import torch

from driftless.diffusion.gaussian import GaussianDiffusion, expand_like

MAX_GUIDANCE = 100.0  # far beyond any useful guidance scale, and finite in bfloat16 products

Guide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
RewardFn = Callable[[torch.Tensor], torch.Tensor]
GUIDANCE_MODES = ("noisy", "x0")


def mctg_inputs(x: torch.Tensor, x0: torch.Tensor, levels: torch.Tensor, diffusion: GaussianDiffusion,
                samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(samples * b, T, ...) noisy plans: copy 0 is x, copies 1.. re-draw every token whose level
    is > 0 around the estimate x0 at its own level. Built as x + detached offsets, so the
    gradient of every copy flows back to x unchanged."""
    if samples < 1:
        raise ValueError(f"MCTG needs at least 1 sample, got {samples}")
    if samples == 1:
        return x
    a, s = diffusion.schedule.alpha_sigma(levels)
    a, s = expand_like(a, x), expand_like(s, x)
    eps = torch.randn((samples - 1,) + tuple(x.shape), generator=generator, device="cpu").to(x.device)
    alt = a * x0.detach() + s * eps  # (K-1, b, T, ...)
    noisy = expand_like(levels > 0, x)
    alt = torch.where(noisy, alt, x.detach())
    offsets = torch.cat([torch.zeros_like(x)[None], alt - x.detach()], dim=0)  # (K, b, T, ...)
    return (x[None] + offsets).flatten(0, 1)  # (K*b, T, ...)


def reward_guide(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    diffusion: GaussianDiffusion,
    reward_fn: RewardFn,
    scale: float,
    samples: int = 1,
    mode: str = "noisy",
    generator: torch.Generator | None = None,
    min_alpha: float = 0.05,
    alpha_power: float = 1.0,
) -> Guide:
    """Reward-gradient guidance, with MCTG when samples > 1 (see the module docstring).

    `denoise(x, levels)` must accept a batch of samples * b (the MCTG copies of b plans).
    `min_alpha` bounds the sigma^2 / alpha factor at the noisiest levels; `alpha_power` p
    uses sigma^2 / alpha^p instead (p = 1: classifier guidance; p = 0 weakens guidance at the
    noisiest levels, letting the model settle on a feasible plan before the reward refines it).
    """
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"guidance mode must be one of {GUIDANCE_MODES}, got {mode!r}")
    if samples < 1:
        raise ValueError(f"MCTG needs at least 1 sample, got {samples}")
    if mode == "x0" and samples > 1:
        raise ValueError("MCTG (samples > 1) needs mode='noisy': futures act through the denoiser")

    def guide(x0: torch.Tensor, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if scale == 0:
            return x0
        a, s = diffusion.schedule.alpha_sigma(levels)
        a, s = expand_like(a, x0), expand_like(s, x0)
        with torch.enable_grad():
            if mode == "x0":
                leaf = x0.detach().float().requires_grad_(True)
                grad = torch.autograd.grad(reward_fn(leaf).sum(), leaf)[0]
                return x0 + scale * s**2 * grad
            leaf = x.detach().float().requires_grad_(True)
            inputs = mctg_inputs(leaf, x0, levels, diffusion, samples, generator)
            lv = levels.repeat((samples,) + (1,) * (levels.dim() - 1))
            est, _ = diffusion.predict(denoise(inputs, lv), inputs, lv)
            total = reward_fn(est).sum() / samples  # mean over futures, summed over the batch
            if not total.requires_grad:  # the estimate does not depend on the noisy tokens
                return x0
            grad = torch.autograd.grad(total, leaf, allow_unused=True)[0]
            if grad is None:
                return x0
        return x0 + scale * s**2 / a.clamp(min=min_alpha) ** alpha_power * grad

    return guide


def inpaint_guide(mask: torch.Tensor, values: torch.Tensor) -> Guide:
    """Set the estimate to `values` where `mask` is true (both broadcastable to the tokens)."""

    def guide(x0: torch.Tensor, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.to(x0.device), values.to(x0.device, x0.dtype), x0)

    return guide


def chain(*guides: Guide | None) -> Guide | None:
    """Apply several guides in order; None entries are skipped (None if all are)."""
    active = [g for g in guides if g is not None]
    if not active:
        return None

    def guide(x0: torch.Tensor, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        for g in active:
            x0 = g(x0, x, levels)
        return x0

    return guide


def free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free combination uncond + scale * (cond - uncond); `cond` itself at scale 1."""
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def check_guidance_scale(name: str, value) -> float:
    """A guidance scale as a float: a finite real number in [0, MAX_GUIDANCE] (1 = off), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or not 0.0 <= float(value) <= MAX_GUIDANCE:
        raise ValueError(f"{name} must be a finite number in [0, {MAX_GUIDANCE:g}] (1 = off), got {value!r}")
    return float(value)
