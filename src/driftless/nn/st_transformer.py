"""The ST-transformer (Genie): spatial attention within a frame, causal temporal attention
across frames, then one feed-forward layer.

Tokens are laid out as (b, t, s, d): batch, time, spatial tokens of one frame, width. Spatial
attention costs O(t * s^2), linear in the number of frames; temporal attention is causal, so
frame t's outputs never depend on frames after t.

Optional per-frame conditioning (e.g. the diffusion noise level of each frame plus its action)
modulates every block through adaptive LayerNorm with zero-initialised gates (DiT's adaLN-Zero).
For inference, `forward` can take one new frame at a time with a list of per-layer KV caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from driftless.nn.attention import Attention, KVCache, StaticKVCache


@dataclass
class STConfig:
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    cond_dim: int = 0  # 0: no per-frame conditioning
    qk_norm: bool = True
    # frames a position attends to in time, itself included (0: all earlier frames). Set it to the
    # training clip length: attention spans never seen in training (a 256-frame clip through a
    # tokenizer trained on 8-frame clips) cost it 6 dB by frame 256; within the span it is flat
    temporal_window: int = 0
    # per_block: each block projects the condition to its 9 modulations (DiT adaLN-Zero);
    # shared: one projection for all blocks plus a learned per-block offset table
    # (PixArt's adaLN-single), ~9*dim^2 fewer parameters per block
    adaln: str = "per_block"

    def __post_init__(self) -> None:
        if self.adaln not in ("per_block", "shared"):
            raise ValueError(f"adaln must be 'per_block' or 'shared', got {self.adaln!r}")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x: (b, t, s, d); shift/scale: (b, t, d)
    return x * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class STBlock(nn.Module):
    compile_region = True  # the Trainer compiles each block, not the whole model (train/trainer.py)

    def __init__(self, cfg: STConfig):
        super().__init__()
        d = cfg.dim
        affine = cfg.cond_dim == 0
        self.norm_s = nn.LayerNorm(d, elementwise_affine=affine, eps=1e-6)
        self.spatial = Attention(d, cfg.heads, qk_norm=cfg.qk_norm)
        self.norm_t = nn.LayerNorm(d, elementwise_affine=affine, eps=1e-6)
        self.temporal = Attention(d, cfg.heads, qk_norm=cfg.qk_norm, rotary=True)
        self.norm_m = nn.LayerNorm(d, elementwise_affine=affine, eps=1e-6)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.conditioned = cfg.cond_dim > 0
        self.temporal_window = cfg.temporal_window
        self.ada = None
        self.ada_table = None
        if cfg.cond_dim and cfg.adaln == "per_block":
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_dim, 9 * d))
        elif cfg.cond_dim:
            self.ada_table = nn.Parameter(torch.zeros(9, d))

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        commit: bool = False,
        window: int | None = None,
    ) -> torch.Tensor:
        # x: (b, t, s, d); cond: (b, t, cond_dim) or None; positions: (t,) frame indices
        b = x.shape[0]
        mods: tuple[torch.Tensor, ...] | None = None
        if self.conditioned:
            if cond is None:
                raise ValueError("this ST-transformer is conditioned: pass cond of shape (b, t, cond_dim)")
            if self.ada is not None:
                mods = self.ada(cond).chunk(9, dim=-1)  # 9 x (b, t, d): shift, scale, gate per sublayer
            else:  # cond already holds the shared projection (b, t, 9*d)
                mods = (cond + self.ada_table.flatten()).chunk(9, dim=-1)

        def pre(norm: nn.Module, i: int) -> torch.Tensor:
            h = norm(x)
            return h if mods is None else modulate(h, mods[i], mods[i + 1])

        def gate(i: int, y: torch.Tensor) -> torch.Tensor:
            return y if mods is None else mods[i + 2].unsqueeze(2) * y

        # spatial: the tokens of one frame attend to each other
        h = rearrange(pre(self.norm_s, 0), "b t s d -> (b t) s d")
        h = rearrange(self.spatial(h), "(b t) s d -> b t s d", b=b)
        x = x + gate(0, h)
        # temporal: each spatial position attends to itself in this and earlier frames
        h = rearrange(pre(self.norm_t, 3), "b t s d -> (b s) t d")
        h = self.temporal(h, causal=True, positions=positions, cache=cache, commit=commit, window=window,
                          span=self.temporal_window)
        x = x + gate(3, rearrange(h, "(b s) t d -> b t s d", b=b))
        # one feed-forward
        x = x + gate(6, self.mlp(pre(self.norm_m, 6)))
        return x


class STTransformer(nn.Module):
    """A stack of ST blocks with a final norm. Input and output: (b, t, s, dim)."""

    def __init__(self, cfg: STConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList([STBlock(cfg) for _ in range(cfg.depth)])
        affine = cfg.cond_dim == 0
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=affine, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_dim, 2 * cfg.dim)) if cfg.cond_dim else None
        self.shared_ada = None
        if cfg.cond_dim and cfg.adaln == "shared":
            self.shared_ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_dim, 9 * cfg.dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # adaLN-Zero: every residual branch starts as the identity
        for blk in self.blocks:
            if blk.ada is not None:
                nn.init.zeros_(blk.ada[-1].weight)
                nn.init.zeros_(blk.ada[-1].bias)
        for head in (self.final_ada, self.shared_ada):
            if head is not None:
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)

    def new_cache(self, static: bool = False, window: int | None = None) -> list[KVCache] | list[StaticKVCache]:
        """One KV cache per block; `static`: device-side bookkeeping for CUDA-graph capture;
        `window`: the most past frames the caches keep, whatever a call's window (None: no limit
        of their own)."""
        return [StaticKVCache(window) if static else KVCache(window) for _ in self.blocks]

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        start: int = 0,
        caches: list[KVCache] | None = None,
        commit: bool = False,
        window: int | None = None,
    ) -> torch.Tensor:
        """x: (b, t, s, d) -> (b, t, s, d).

        `start` is the absolute index of x's first frame (for the temporal rotary embedding), an
        int or a 0-d device tensor.
        With `caches` (one per block) the frames in x attend to the cached earlier frames;
        `commit` appends their keys/values, keeping at most `window` frames per cache (and no more
        than the span, `temporal_window` - 1, nor the caches' own window).
        """
        if x.dim() != 4:
            raise ValueError(f"ST-transformer expects tokens (b, t, s, d), got shape {tuple(x.shape)}")
        if caches is not None:
            limits = [w for w in (window, self.cfg.temporal_window - 1 if self.cfg.temporal_window else None,
                                  caches[0].window if caches else None) if w is not None]
            window = min(limits) if limits else None
        if isinstance(start, torch.Tensor):  # a device counter (CUDA-graph sessions)
            positions = start + torch.arange(x.shape[1], device=x.device)
        else:
            positions = torch.arange(start, start + x.shape[1], device=x.device)
        block_cond = self.shared_ada(cond) if self.shared_ada is not None else cond
        for i, blk in enumerate(self.blocks):
            cache = caches[i] if caches is not None else None
            x = blk(x, block_cond, positions, cache=cache, commit=commit, window=window)
        x = self.norm(x)
        if self.final_ada is not None:
            shift, scale = self.final_ada(cond).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return x
