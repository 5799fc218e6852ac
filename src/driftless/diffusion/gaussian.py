"""Gaussian diffusion with per-token noise levels: the one place that knows the parametrisation.

`GaussianDiffusion` owns forward noising, the training loss (v / epsilon / x0 prediction with
SNR-based weights) and the DDIM update between two levels. Every model that denoises (video
dynamics, the maze planner, the forecaster) uses it; levels may differ per token, which is all
that Diffusion Forcing needs from the diffusion side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from driftless.diffusion.schedules import NoiseSchedule

PREDICTIONS = ("v", "eps", "x0")
WEIGHTINGS = ("min_snr", "uniform")


@dataclass
class DiffusionConfig:
    levels: int = 1000  # K: training noise levels
    schedule: str = "sigmoid"  # cosine | sigmoid | linear
    prediction: str = "v"  # v | eps | x0
    weighting: str = "min_snr"  # min_snr (Hang et al. 2023) | uniform
    min_snr_gamma: float = 5.0
    sampling_steps: int = 10  # DDIM steps per token at inference
    context_level: int = 15  # small noise level that context tokens are held at when sampling
    eta: float = 0.0  # DDIM stochasticity: 0 deterministic, 1 DDPM-like

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not 0 <= self.context_level <= self.levels:
            raise ValueError(f"context_level must lie in [0, {self.levels}], got {self.context_level}")


class NoiseTape:
    """Given noise handed out in order in place of random draws: pass one where a sampler takes
    a `generator`, and each of its draws (`randn`) takes the next tensor instead. An exported
    graph gets its noise as inputs this way (export/onnx.py), so that it can be fed exactly the
    noise a seeded `torch.Generator` would draw."""

    def __init__(self, tensors) -> None:
        self.tensors = list(tensors)
        self.taken = 0

    def draw(self, shape) -> torch.Tensor:
        if self.taken >= len(self.tensors):
            raise ValueError(f"the noise tape is used up: {len(self.tensors)} draw(s) given")
        t = self.tensors[self.taken]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"noise draw {self.taken} has shape {tuple(t.shape)}, the sampler wants {tuple(shape)}")
        self.taken += 1
        return t


def randn(shape, device, generator: torch.Generator | NoiseTape | None = None) -> torch.Tensor:
    """Standard normal noise of `shape`: drawn from `generator`, or the next tensor of a `NoiseTape`."""
    if isinstance(generator, NoiseTape):
        return generator.draw(shape)
    return torch.randn(shape, device=device, generator=generator)


def expand_like(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # a: (b, t) per-token scalars -> broadcastable to like: (b, t, ...)
    return a.reshape(a.shape + (1,) * (like.dim() - a.dim()))


class GaussianDiffusion:
    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.schedule = NoiseSchedule(cfg.schedule, cfg.levels)

    @property
    def levels(self) -> int:
        return self.cfg.levels

    def sample_levels(self, shape: tuple[int, ...], device, generator: torch.Generator | None = None,
                      low: int = 1) -> torch.Tensor:
        """Independent uniform levels in [low, K] for every token (Diffusion Forcing)."""
        return torch.randint(low, self.levels + 1, shape, device=device, generator=generator)

    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise x0 (b, t, ...) to per-token levels k (b, t)."""
        a, s = self.schedule.alpha_sigma(k)
        return expand_like(a, x0) * x0 + expand_like(s, x0) * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.cfg.prediction == "eps":
            return noise
        if self.cfg.prediction == "x0":
            return x0
        a, s = self.schedule.alpha_sigma(k)
        return expand_like(a, x0) * noise - expand_like(s, x0) * x0

    def loss_weight(self, k: torch.Tensor) -> torch.Tensor:
        """Per-token weight on the parametrisation's MSE so that all three weigh x0 errors alike."""
        if self.cfg.weighting == "uniform":
            return torch.ones_like(k, dtype=torch.float32)
        snr = self.schedule.snr(k)
        clipped = snr.clamp(max=self.cfg.min_snr_gamma)
        if self.cfg.prediction == "eps":
            return clipped / snr.clamp(min=1e-8)
        if self.cfg.prediction == "x0":
            return clipped
        return clipped / (snr + 1)

    def loss(self, model_out: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, k: torch.Tensor,
             token_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted MSE per k entry: (b, t) (mean over the rest). `token_weight` (b, t, s) weighs the
        tokens of x0 (b, t, s, c) within that mean (a weighted mean: weights need not sum to anything)."""
        err = (model_out.float() - self.target(x0, noise, k).float()) ** 2
        if token_weight is not None:
            err = err.mean(-1)  # (b, t, s)
            w = token_weight.float()
            err = (err * w).sum(-1) / w.sum(-1).clamp(min=1e-8)
        else:
            err = err.reshape(err.shape[: k.dim()] + (-1,)).mean(-1)
        return err * self.loss_weight(k)

    def predict(self, model_out: torch.Tensor, xk: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from the model output at levels k."""
        a, s = self.schedule.alpha_sigma(k)
        a, s = expand_like(a, xk), expand_like(s, xk)
        out, xk = model_out.float(), xk.float()
        if self.cfg.prediction == "v":
            x0 = a * xk - s * out
            eps = s * xk + a * out
        elif self.cfg.prediction == "eps":
            eps = out
            x0 = (xk - s * eps) / a.clamp(min=1e-4)
        else:
            x0 = out
            eps = (xk - a * x0) / s.clamp(min=1e-4)
        return x0, eps

    def ddim_step(
        self,
        x0: torch.Tensor,
        eps: torch.Tensor,
        k_to: torch.Tensor,
        k_from: torch.Tensor,
        eta: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Move from level k_from to k_to (per token, k_to <= k_from) given x0/eps estimates."""
        eta = self.cfg.eta if eta is None else eta
        a_to, s_to = self.schedule.alpha_sigma(k_to)
        a_from, s_from = self.schedule.alpha_sigma(k_from)
        a_to, s_to = expand_like(a_to, x0), expand_like(s_to, x0)
        if eta > 0:
            a_from, s_from = expand_like(a_from, x0), expand_like(s_from, x0)
            ratio = (s_to**2 / s_from.clamp(min=1e-8) ** 2) * (1 - a_from**2 / a_to.clamp(min=1e-8) ** 2)
            std = eta * ratio.clamp(min=0).sqrt()
            noise = randn(x0.shape, x0.device, generator)
            return a_to * x0 + (s_to**2 - std**2).clamp(min=0).sqrt() * eps + std * noise
        return a_to * x0 + s_to * eps
