"""Bottlenecks: a vector quantizer (VQ-VAE with dead-code reset), a product of them (codes that are
tuples) and a diagonal Gaussian (KL).

Both take vectors in the last axis and return the bottlenecked vectors, a regularisation loss
and a dict of scalar statistics for logging.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def code_usage(idx: torch.Tensor, num_codes: int, training: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Code indices (...) -> (counts (num_codes,), their shares, perplexity ()). In training the
    counts are over every rank's batch (all ranks step together); in eval mode a single rank may run
    alone (validation, encoding, evaluation on rank 0): no collective then."""
    counts = torch.bincount(idx.reshape(-1), minlength=num_codes).float()
    if training and dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    probs = counts / counts.sum().clamp(min=1)
    return counts, probs, torch.exp(-(probs * torch.log(probs + 1e-10)).sum())


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with a straight-through gradient.

    * codes and inputs are L2-normalised before matching (cosine distance), which keeps the
      codebook well used;
    * loss = codebook term + beta * commitment term (VQ-VAE);
    * a code whose running share of assignments falls under `dead_fraction / num_codes` (i.e.
      used that many times less than under uniform use) is re-initialised from a random input
      vector of a training batch, identically on every rank under DDP. The training forward
      only records the candidates (a buffer); the owner applies them between steps with
      `apply_dead_code_reset()` (its `after_train_step`), so the codebook is never rewritten
      inside a compiled step and the step stays one graph.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        normalize: bool = True,
        usage_decay: float = 0.99,
        dead_fraction: float = 0.03,
    ):
        super().__init__()
        self.num_codes = num_codes
        self.dim = dim
        self.beta = beta
        self.normalize = normalize
        self.usage_decay = usage_decay
        self.dead_threshold = dead_fraction / num_codes
        self.codebook = nn.Parameter(torch.randn(num_codes, dim) / dim**0.5)
        # running fraction of assignments per code; starts uniform so nothing is "dead" at step 0
        self.register_buffer("usage", torch.full((num_codes,), 1.0 / num_codes))
        # a replacement for every code from the last training batch, and whether there is one yet
        self.register_buffer("candidates", torch.zeros(num_codes, dim), persistent=False)
        self.register_buffer("has_candidates", torch.zeros((), dtype=torch.bool), persistent=False)

    def codes(self) -> torch.Tensor:
        cb = self.codebook
        return F.normalize(cb, dim=-1) if self.normalize else cb

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """What the codes are matched against: z (..., dim) L2-normalised (or as it is)."""
        return F.normalize(z, dim=-1) if self.normalize else z

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: (...) int64 -> code vectors (..., dim)."""
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):
            raise ValueError(f"code indices must lie in [0, {self.num_codes}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self.codes()[indices]

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., dim) -> nearest code index (...)."""
        flat = z.reshape(-1, self.dim).float()
        if self.normalize:
            flat = F.normalize(flat, dim=-1)
        cb = self.codes().float()
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None]
        return dist2.argmin(dim=1).reshape(z.shape[:-1])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """z: (..., dim) -> (z_q (..., dim), indices (...), loss (), stats)."""
        idx = self.quantize(z)
        zf = F.normalize(z.float(), dim=-1) if self.normalize else z.float()
        q = self.codes()[idx].float()
        loss = F.mse_loss(q, zf.detach()) + self.beta * F.mse_loss(zf, q.detach())
        z_q = (zf + (q - zf).detach()).to(z.dtype)

        counts, probs, perplexity = code_usage(idx, self.num_codes, self.training)
        if self.training:
            with torch.no_grad():
                self.usage.mul_(self.usage_decay).add_(probs, alpha=1 - self.usage_decay)
                flat = zf.reshape(-1, self.dim)
                if flat.shape[0]:
                    pick = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
                    self.candidates.copy_(flat[pick].to(self.candidates.dtype))
                    self.has_candidates.fill_(True)
        stats = {
            "vq_perplexity": perplexity.detach(),
            "vq_usage": (counts > 0).float().mean().detach(),
        }
        return z_q, idx, loss, stats

    # Codebook rewrites run eagerly, outside the training forward's graph: traced, the write
    # became an in-place update of a parameter the compiled backward had saved, and the step
    # after the VQ warm-up failed ("modified by an inplace operation"; tests/test_trainer.py).
    @torch.compiler.disable
    @torch.no_grad()
    def init_kmeans(self, flat: torch.Tensor, iters: int = 20) -> None:
        """Set the codebook to k-means centres of `flat` (n, dim) (k-means++ seeding; cosine
        k-means when the codebook is normalised); identical on every rank under DDP."""
        x = F.normalize(flat.float(), dim=-1) if self.normalize else flat.float()
        k = self.num_codes
        if x.shape[0] < k:
            x = x.repeat((k + x.shape[0] - 1) // x.shape[0], 1)
        centres = x[torch.randint(0, x.shape[0], (1,), device=x.device)]
        for _ in range(1, k):
            d2 = torch.cdist(x, centres).min(dim=1).values ** 2
            pick = torch.multinomial(d2 / d2.sum() if d2.sum() > 0 else torch.ones_like(d2), 1)
            centres = torch.cat([centres, x[pick]])
        for _ in range(iters):
            assign = torch.cdist(x, centres).argmin(dim=1)
            for j in range(k):
                members = x[assign == j]
                if len(members):
                    c = members.mean(0)
                    centres[j] = F.normalize(c, dim=-1) if self.normalize else c
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(centres, src=0)
        self.codebook.data.copy_(centres.to(self.codebook.dtype))
        self.usage.fill_(1.0 / k)

    @torch.compiler.disable
    @torch.no_grad()
    def apply_dead_code_reset(self) -> None:
        """Replace every dead code by its candidate from the last training batch (rank 0's under
        DDP: every rank must call this at the same point). No host sync: a mask decides."""
        cand = self.candidates.to(self.codebook.dtype)
        if dist.is_available() and dist.is_initialized():
            cand = cand.contiguous()
            dist.broadcast(cand, src=0)
        # (a skipped, non-finite step leaves non-finite candidates: never copied in)
        dead = (self.usage < self.dead_threshold) & self.has_candidates & torch.isfinite(cand).all(dim=1)  # (K,)
        self.codebook.data.copy_(torch.where(dead[:, None], cand, self.codebook.data))
        self.usage.copy_(torch.where(dead, torch.full_like(self.usage, 1.0 / self.num_codes), self.usage))
        self.has_candidates.fill_(False)


class ProductQuantizer(nn.Module):
    """Codes that are tuples: the vector's `dim` is cut into len(sizes) equal parts, each matched by
    its own `VectorQuantizer` of sizes[i] codes, and a code's index is its tuple in mixed radix (the
    first part most significant), so there are prod(sizes) codes and one index still names one code.
    A latent action of CoinRun is two things at once, a direction (left / none / right) and a vertical
    motion (standing, jumping, falling); one flat codebook of 16 spent most codes on the vertical ones
    and left "jump to the left" and "jump to the right" sharing one (docs/benchmarks.md 2.19). The
    same interface as `VectorQuantizer` (project, quantize, forward, lookup, init_kmeans,
    apply_dead_code_reset)."""

    def __init__(self, sizes: tuple[int, ...] | list[int], dim: int, **vq_args):
        super().__init__()
        sizes = tuple(int(k) for k in sizes)
        if len(sizes) < 2 or min(sizes) < 2:
            raise ValueError(f"a product code needs at least two parts of at least 2 codes each, got {list(sizes)}")
        if dim % len(sizes):
            raise ValueError(f"the vector's {dim} dimensions do not split into {len(sizes)} equal parts")
        self.sizes, self.dim, self.part = sizes, dim, dim // len(sizes)
        self.num_codes = math.prod(sizes)
        self.parts = nn.ModuleList(VectorQuantizer(k, self.part, **vq_args) for k in sizes)
        self.radix = tuple(math.prod(sizes[i + 1:]) for i in range(len(sizes)))  # place value of each part

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return z.split(self.part, dim=-1)  # (..., dim) -> parts (..., part)

    def combine(self, digits: list[torch.Tensor]) -> torch.Tensor:
        """Per-part indices [(...)] -> code indices (...)."""
        return sum(d * r for d, r in zip(digits, self.radix))

    def digits(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """Code indices (...) -> per-part indices [(...)], the first part first."""
        return [(indices // r) % k for r, k in zip(self.radix, self.sizes)]

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """What the codes are matched against: each part L2-normalised (..., dim)."""
        return torch.cat([vq.project(p) for vq, p in zip(self.parts, self._split(z))], dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: (...) int64 -> code vectors (..., dim)."""
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):
            raise ValueError(f"code indices must lie in [0, {self.num_codes}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return torch.cat([vq.lookup(d) for vq, d in zip(self.parts, self.digits(indices))], dim=-1)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., dim) -> nearest code index (...) (each part's nearest code)."""
        return self.combine([vq.quantize(p) for vq, p in zip(self.parts, self._split(z))])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """z: (..., dim) -> (z_q (..., dim), indices (...), loss (), stats): each part's VQ, the losses
        averaged; statistics of the whole code, and each part's perplexity."""
        outs = [vq(p) for vq, p in zip(self.parts, self._split(z))]
        idx = self.combine([o[1] for o in outs])
        loss = sum(o[2] for o in outs) / len(outs)
        counts, _, perplexity = code_usage(idx, self.num_codes, self.training)
        stats = {"vq_perplexity": perplexity.detach(),
                 "vq_usage": (counts > 0).float().mean().detach(),
                 **{f"vq_perplexity_{i}": o[3]["vq_perplexity"] for i, o in enumerate(outs)}}
        return torch.cat([o[0] for o in outs], dim=-1), idx, loss, stats

    def init_kmeans(self, flat: torch.Tensor, iters: int = 20) -> None:
        """Each part's codebook from k-means of that part of `flat` (n, dim)."""
        for vq, p in zip(self.parts, self._split(flat)):
            vq.init_kmeans(p, iters=iters)

    def apply_dead_code_reset(self) -> None:
        for vq in self.parts:
            vq.apply_dead_code_reset()


class DiagonalGaussian(nn.Module):
    """KL bottleneck: moments (..., 2*dim) -> sample (..., dim), KL to N(0, I) per element."""

    def __init__(self, logvar_min: float = -30.0, logvar_max: float = 20.0):
        super().__init__()
        self.logvar_min = logvar_min
        self.logvar_max = logvar_max

    def forward(self, moments: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
        mean, logvar = moments.float().chunk(2, dim=-1)
        logvar = logvar.clamp(self.logvar_min, self.logvar_max)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        stats = {"kl": kl.detach(), "latent_std": mean.detach().std()}
        return z.to(moments.dtype), kl, stats
