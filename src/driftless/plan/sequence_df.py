"""A low-dimensional Diffusion-Forcing sequence model over token vectors.

Tokens are flat vectors x_t (e.g. a maze step [a_t, r_t, o_{t+1}], several steps stacked into
one token). The model is a transformer over [cond, x_1, ..., x_T] where `cond` (e.g. the
current observation) is a clean prefix token; every token carries its own noise level, embedded
and applied through adaLN-Zero modulation, so one forward pass denoises all tokens at their own
levels (Diffusion Forcing). With `causal=True` token t sees the prefix and tokens <= t only.

Training noise (`noise`):
* `independent`: a level per token, uniform in [0, K] (Diffusion Forcing);
* `full_sequence`: one level per sequence (ordinary sequence diffusion, the Diffuser-like
  baseline when paired with `causal=False`);
* `teacher_forcing`: clean tokens before a random split point, one shared level after it.

Data are normalised inside the model with per-dimension statistics stored as buffers, so a
checkpoint is self-contained: `normalize` / `unnormalize` map between data units and the
model's space and are differentiable (guidance takes gradients through them). `save` writes a
checkpoint of kind "sequence_df", which `driftless.models.registry.load_model` loads; training
is `driftless.plan.train.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from driftless import checkpoint
from driftless.config import to_dict
from driftless.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from driftless.nn.attention import Attention
from driftless.nn.embeddings import ScalarEmbedding

NOISE_MODES = ("independent", "full_sequence", "teacher_forcing")


@dataclass
class SequenceDFConfig:
    token_dim: int = 70  # D: features per token
    cond_dim: int = 4  # features of the clean prefix (0: no prefix)
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    causal: bool = True
    noise: str = "independent"
    max_tokens: int = 128  # longest training window (informational: positions are rotary)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        levels=1000, schedule="cosine", prediction="x0", sampling_steps=20, context_level=0))
    meta: dict = field(default_factory=dict)  # free-form provenance (dataset, frame stack, layout)

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {self.noise!r}")
        for name in ("token_dim", "width", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"SequenceDFConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.cond_dim < 0:
            raise ValueError(f"SequenceDFConfig.cond_dim must be >= 0, got {self.cond_dim}")


PRESETS: dict[str, SequenceDFConfig] = {
    "debug": SequenceDFConfig(width=32, depth=2, heads=2),
    "small": SequenceDFConfig(width=128, depth=4, heads=4),
    "base": SequenceDFConfig(width=256, depth=6, heads=8),
}


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, rotary=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, causal: bool) -> torch.Tensor:
        # x, c: (b, L, dim)
        s1, b1, g1, s2, b2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1 * self.attn(_modulate(self.norm1(x), b1, s1), causal=causal)
        return x + g2 * self.mlp(_modulate(self.norm2(x), b2, s2))


class SequenceDF(nn.Module):
    kind = "sequence_df"

    def __init__(self, cfg: SequenceDFConfig):
        super().__init__()
        self.cfg = cfg
        self.diffusion = GaussianDiffusion(cfg.diffusion)
        w = cfg.width
        self.token_in = nn.Linear(cfg.token_dim, w)
        self.cond_in = nn.Linear(cfg.cond_dim, w) if cfg.cond_dim else None
        self.level_emb = ScalarEmbedding(w)
        self.blocks = nn.ModuleList([_Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.out = nn.Linear(w, cfg.token_dim)
        for name, dim in (("token", cfg.token_dim), ("cond", cfg.cond_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:  # adaLN-Zero: blocks start as the identity
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        for lin in (self.final_ada[-1], self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ---- normalisation -------------------------------------------------------------------
    def set_stats(self, token_mean, token_std, cond_mean=None, cond_std=None) -> None:
        def put(buf: torch.Tensor, values, name: str) -> None:
            t = torch.as_tensor(values, dtype=torch.float32).flatten()
            if t.numel() != buf.numel():
                raise ValueError(f"{name} needs {buf.numel()} values, got {t.numel()}")
            buf.copy_(t)

        put(self.token_mean, token_mean, "token_mean")
        put(self.token_std, token_std, "token_std")
        if self.cfg.cond_dim and cond_mean is not None:
            put(self.cond_mean, cond_mean, "cond_mean")
            put(self.cond_std, cond_std, "cond_std")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.token_mean) / self.token_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.token_std + self.token_mean

    def normalize_cond(self, c: torch.Tensor) -> torch.Tensor:
        return (c - self.cond_mean) / self.cond_std

    # ---- network ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, levels: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (b, T, D) noisy normalised tokens, levels (b, T) in [0, K], cond (b, cond_dim)
        normalised -> (b, T, D) output in the diffusion's parametrisation."""
        if x.dim() != 3 or x.shape[-1] != self.cfg.token_dim:
            raise ValueError(f"tokens must have shape (b, T, {self.cfg.token_dim}), got {tuple(x.shape)}")
        if levels.shape != x.shape[:2]:
            raise ValueError(f"levels must have shape {tuple(x.shape[:2])}, got {tuple(levels.shape)}")
        h = self.token_in(x.float())  # (b, T, w)
        c = self.level_emb(levels.float() / self.diffusion.levels)  # (b, T, w)
        if self.cond_in is not None:
            if cond is None or cond.shape != (x.shape[0], self.cfg.cond_dim):
                raise ValueError(f"this model needs cond of shape ({x.shape[0]}, {self.cfg.cond_dim})")
            h = torch.cat([self.cond_in(cond.float())[:, None], h], dim=1)  # (b, 1+T, w)
            c0 = self.level_emb(torch.zeros(x.shape[0], 1, device=x.device))
            c = torch.cat([c0, c], dim=1)
        for blk in self.blocks:
            h = blk(h, c, self.cfg.causal)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.out(_modulate(self.norm(h), shift, scale))
        return out[:, 1:] if self.cond_in is not None else out

    def denoiser(self, cond: torch.Tensor | None):
        """DenoiseFn for `sample_matrix`: (x (b', T, D), levels) -> output; cond is tiled when
        b' is a multiple of its batch (MCTG evaluates several futures at once)."""

        def fn(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
            c = cond
            if c is not None and x.shape[0] != c.shape[0]:
                c = c.repeat(x.shape[0] // c.shape[0], 1)
            return self(x, levels, c)

        return fn

    # ---- training ------------------------------------------------------------------------
    def training_levels(self, b: int, t: int, device, generator=None) -> torch.Tensor:
        K = self.diffusion.levels
        gdev = generator.device if generator is not None else device
        if self.cfg.noise == "independent":
            return torch.randint(0, K + 1, (b, t), generator=generator, device=gdev).to(device)
        shared = torch.randint(1, K + 1, (b, 1), generator=generator, device=gdev).to(device).expand(b, t)
        if self.cfg.noise == "full_sequence":
            return shared
        split = torch.randint(0, t, (b, 1), generator=generator, device=gdev).to(device)  # teacher forcing
        return torch.where(torch.arange(t, device=device)[None] < split, torch.zeros_like(shared), shared)

    def loss(self, x0: torch.Tensor, cond: torch.Tensor | None, generator=None) -> torch.Tensor:
        """x0 (b, T, D), cond (b, cond_dim) in data units -> scalar diffusion loss."""
        x0 = self.normalize(x0)
        cond = self.normalize_cond(cond) if cond is not None and self.cfg.cond_dim else None
        b, t = x0.shape[:2]
        k = self.training_levels(b, t, x0.device, generator)
        gdev = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=gdev).to(x0.device)
        xk = self.diffusion.q_sample(x0, k, noise)
        return self.diffusion.loss(self(xk, k, cond), x0, noise, k).mean()

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """For the Trainer: batch {"x0" (b, T, D), "cond" (b, cond_dim) or None} in data units."""
        return self.loss(batch["x0"], batch.get("cond")), {}


def save(model: SequenceDF, directory: str | Path, meta: dict | None = None, half: bool = False) -> Path:
    """Write a checkpoint folder; `half` stores the network in float16 (statistics stay float32)."""
    state = model.state_dict()
    if half:
        state = {k: v if k.endswith(("_mean", "_std")) else v.half() for k, v in state.items()}
    return checkpoint.save(directory, SequenceDF.kind, to_dict(model.cfg), state, meta=meta)
