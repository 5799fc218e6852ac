"""Diffusion-Forcing forecaster for multivariate time series.

One token per time step: x_t is the vector of all D series at step t, normalised per series
(`scaling`: training-set mean/std by default, as the Diffusion Forcing code; or the context
window's mean/std, or its mean |x| as TimeGrad; with window statistics their values are fed
to the network too). A small causal network (GRU, or transformer with rotary positions)
reads, at every step, the noisy token, an embedding of its own noise level and Fourier
features of the seasons' phase, and predicts the token's v-target (`GaussianDiffusion`). Causality means the output at step t depends on tokens <= t
only, so one pass trains every token of the window at its own level (Diffusion Forcing).

Training levels (`train_levels`):

* `independent`: every token's level is drawn uniformly from [1, K] (Diffusion Forcing as
  published);
* `mixed` (default): as `independent`, but with probability `prefix_prob` a prefix of random
  length is held at small levels [0, context_level]: still one independent level per token,
  drawn from a distribution that puts more mass on the states autoregressive sampling visits.

`teacher_forcing=True` gives the baseline with the same network: a clean prefix (level 0), one
noised token after it (the only one in the loss), later tokens fully noised (unseen by the
causal model).

Sampling follows a Diffusion-Forcing scheduling matrix (`driftless.diffusion.scheduling`):
autoregressive (default), pyramid or full_sequence, with the context tokens held at
`diffusion.context_level` (0 for the teacher-forcing model: clean history). The evenly spaced
level ladder is warped to `K * u ** ladder_power` so that more steps fall at low noise, and
`cached_denoiser` makes sampling exact but cheap (finished prefixes are not recomputed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from driftless.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from driftless.diffusion.scheduling import SCHEDULE_KINDS, sample_matrix, schedule_matrix, with_context
from driftless.nn.attention import Attention
from driftless.nn.embeddings import ScalarEmbedding

BACKBONES = ("transformer", "gru")
SCALINGS = ("global", "standard", "mean")
TRAIN_LEVELS = ("mixed", "independent")


@dataclass
class ForecasterConfig:
    target_dim: int = 0  # D: set from the data before the model is built
    context_length: int = 24
    prediction_length: int = 24
    backbone: str = "transformer"  # transformer | gru
    width: int = 128
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    seasons: tuple[int, ...] = ()  # periods (in steps) whose phase is embedded, e.g. (24, 168)
    harmonics: int = 3  # Fourier features per season
    # global: (x - mean) / std of the training series (as the Diffusion Forcing code);
    # standard: (x - mean) / std of the context window; mean: x / mean|x| of the context (TimeGrad)
    scaling: str = "global"
    global_mean: list[float] | None = None  # per-series statistics for scaling="global" (set by training)
    global_std: list[float] | None = None
    scale_features: bool = True  # feed asinh(loc / scale) and log(scale) of every series
    clip: float = 20.0  # bound on normalised values
    teacher_forcing: bool = False  # baseline: clean history, only the next token noised
    train_levels: str = "mixed"  # mixed | independent (see module docstring)
    prefix_prob: float = 0.5
    schedule: str = "autoregressive"  # default sampling schedule
    pyramid_lag: float = 0.5  # pyramid: each column starts lag * steps rows after the previous one
    ladder_power: float = 2.0  # sampling levels K * (u ** power) for a uniform u ladder (2: DDIM's "quadratic")
    diffusion: DiffusionConfig = field(default_factory=lambda: _diffusion())

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.train_levels not in TRAIN_LEVELS:
            raise ValueError(f"train_levels must be one of {TRAIN_LEVELS}, got {self.train_levels!r}")
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule must be one of {SCHEDULE_KINDS}, got {self.schedule!r}")
        if self.context_length < 1 or self.prediction_length < 1:
            raise ValueError(f"context_length and prediction_length must be >= 1, "
                             f"got {self.context_length}, {self.prediction_length}")
        self.seasons = tuple(int(p) for p in self.seasons)
        if any(p < 2 for p in self.seasons):
            raise ValueError(f"season periods must be >= 2 steps, got {self.seasons}")

    @property
    def window(self) -> int:
        return self.context_length + self.prediction_length


def _diffusion(levels: int = 1000, steps: int = 20, context_level: int = 15) -> DiffusionConfig:
    # v-prediction, sigmoid schedule (as Diffusion Forcing's video models); eta = 1 (ancestral
    # steps) because deterministic DDIM steps shrink the predictive spread when steps are few
    return DiffusionConfig(levels=levels, schedule="sigmoid", prediction="v", sampling_steps=steps,
                           context_level=context_level, eta=1.0)


PRESETS: dict[str, ForecasterConfig] = {
    # tests: trains in seconds on one CPU core
    "debug": ForecasterConfig(context_length=8, prediction_length=4, backbone="gru", width=32, depth=1,
                              diffusion=_diffusion(levels=100, steps=20, context_level=2)),
    # CPU experiments (macrodata, synthetic)
    "small": ForecasterConfig(backbone="gru", width=64, depth=2, diffusion=_diffusion()),
    "small_transformer": ForecasterConfig(backbone="transformer", width=64, depth=2, heads=4, diffusion=_diffusion()),
    # GluonTS datasets on an accelerator
    "base": ForecasterConfig(backbone="transformer", width=128, depth=3, heads=4, diffusion=_diffusion()),
    "base_gru": ForecasterConfig(backbone="gru", width=128, depth=2, diffusion=_diffusion()),
}


@dataclass
class ForecasterCheckpointConfig:
    """The "config" of a forecaster checkpoint (kind "forecaster"): the model's config and, as a
    record, the `ForecastTrainConfig` it was trained with."""

    model: ForecasterConfig = field(default_factory=ForecasterConfig)
    train: dict | None = None


def build(cfg: "ForecasterConfig | ForecasterCheckpointConfig") -> "Forecaster":
    """A Forecaster from its config or a checkpoint's config (the registry's entry point)."""
    return Forecaster(cfg.model if isinstance(cfg, ForecasterCheckpointConfig) else cfg)


def preset(name: str, **overrides) -> ForecasterConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown forecaster preset {name!r}; expected one of {sorted(PRESETS)}")
    from driftless.config import override

    return override(PRESETS[name], overrides)  # always a fresh copy (models write to their config)


class _Block(nn.Module):
    """Pre-norm causal self-attention + MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, rotary=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h), causal=True)
        return h + self.mlp(self.norm2(h))


class Forecaster(nn.Module):
    def __init__(self, cfg: ForecasterConfig):
        super().__init__()
        if cfg.target_dim < 1:
            raise ValueError("ForecasterConfig.target_dim must be set to the number of series (>= 1)")
        self.cfg = cfg
        self.diffusion = GaussianDiffusion(cfg.diffusion)
        d, w = cfg.target_dim, cfg.width
        self.in_proj = nn.Linear(d, w)
        self.level_emb = ScalarEmbedding(w)
        self.use_feats = cfg.scale_features and cfg.scaling != "global"  # global scaling: constant features
        self.cond_proj = nn.Linear(2 * d, w) if self.use_feats else None
        n_season = 2 * cfg.harmonics * len(cfg.seasons)
        self.season_proj = nn.Linear(n_season, w) if n_season else None
        if cfg.backbone == "transformer":
            self.blocks = nn.ModuleList([_Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
            self.gru = None
        else:
            self.blocks = nn.ModuleList()
            self.gru = nn.GRU(w, w, num_layers=cfg.depth, batch_first=True)
        self.set_global_stats(cfg.global_mean, cfg.global_std)
        self.out_norm = nn.LayerNorm(w, elementwise_affine=False)
        self.out_mod = nn.Linear(w, 2 * w)  # adaLN from the token's own level
        self.out = nn.Linear(w, d)
        for layer in (self.out_mod, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------ normalisation

    def set_global_stats(self, mean, std) -> None:
        """Per-series statistics used by scaling="global" (kept in the config, so in checkpoints)."""
        d = self.cfg.target_dim
        if mean is None or std is None:
            mean_t, std_t = torch.zeros(d), torch.ones(d)
        else:
            mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32))
            std_t = torch.as_tensor(np.asarray(std, dtype=np.float32))
            if mean_t.shape != (d,) or std_t.shape != (d,):
                raise ValueError(f"global statistics must have shape ({d},), got {tuple(mean_t.shape)}, "
                                 f"{tuple(std_t.shape)}")
            std_t = torch.where(std_t > 0, std_t, torch.ones_like(std_t))
            self.cfg.global_mean, self.cfg.global_std = mean_t.tolist(), std_t.tolist()
        device = self.in_proj.weight.device
        self.register_buffer("g_mean", mean_t.to(device), persistent=False)
        self.register_buffer("g_std", std_t.to(device), persistent=False)

    def fit_global_stats(self, series: np.ndarray) -> None:
        series = np.asarray(series, dtype=np.float64)
        self.set_global_stats(series.mean(0), series.std(0))

    def scaler(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (b, C, D) raw -> loc, scale (b, D)."""
        if self.cfg.scaling == "global":
            b = context.shape[0]
            return self.g_mean.expand(b, -1), self.g_std.expand(b, -1)
        mean_abs = context.abs().mean(1)
        if self.cfg.scaling == "mean":
            return torch.zeros_like(mean_abs), mean_abs.clamp(min=1e-6)
        loc = context.mean(1)
        std = context.std(1, unbiased=False)
        return loc, torch.maximum(std, (0.01 * mean_abs).clamp(min=1e-6))

    def scale_feats(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # (b, D), (b, D) -> (b, 2D)
        return torch.cat([torch.asinh(loc / scale), scale.log().clamp(-20, 20)], dim=-1)

    def _season_feats(self, t0: torch.Tensor, length: int) -> torch.Tensor:
        # t0 (b,) absolute index of the first token -> (b, T, 2 * harmonics * seasons)
        t = (t0[:, None] + torch.arange(length, device=t0.device)[None]).double()  # (b, T)
        k = torch.arange(1, self.cfg.harmonics + 1, device=t0.device, dtype=torch.float64)
        feats = []
        for period in self.cfg.seasons:
            ang = 2 * math.pi * (t % period)[..., None] / period * k  # (b, T, harmonics)
            feats += [ang.sin(), ang.cos()]
        return torch.cat(feats, -1).float()

    # ------------------------------------------------------------ the network

    def _embed(self, x: torch.Tensor, levels: torch.Tensor, feats: torch.Tensor | None,
               t0: torch.Tensor | None, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Token inputs (b, T, w) and level embeddings (b, T, w); x holds steps start.. of the window."""
        b, t, _ = x.shape
        emb = self.level_emb(levels.float() / self.diffusion.levels)  # (b, T, w)
        h = self.in_proj(x) + emb
        if self.cond_proj is not None:
            if feats is None:
                raise ValueError("this forecaster needs per-series scale features (b, 2D)")
            h = h + self.cond_proj(feats)[:, None]
        if self.season_proj is not None:
            t0 = torch.zeros(b, dtype=torch.long, device=x.device) if t0 is None else t0
            h = h + self.season_proj(self._season_feats(t0 + start, t))
        return h, emb

    def _head(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.out_mod(emb).chunk(2, dim=-1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)

    def forward(self, x: torch.Tensor, levels: torch.Tensor, feats: torch.Tensor | None = None,
                t0: torch.Tensor | None = None) -> torch.Tensor:
        """x (b, T, D) noisy normalised tokens, levels (b, T) -> model output (b, T, D)."""
        h, emb = self._embed(x, levels, feats, t0)
        if self.gru is not None:
            h, _ = self.gru(h)
        for block in self.blocks:
            h = block(h)
        return self._head(h, emb)

    def cached_denoiser(self, matrix: torch.Tensor, feats: torch.Tensor | None, t0: torch.Tensor | None):
        """An exact, faster `denoise(x, levels)` for `sample_matrix` following `matrix`.

        The current row is recognised from the levels. Outputs are only needed for columns that
        change in this row; by causality nothing after the last of them matters, and every
        column before the first unfinished one is final (it already sits at its last-row level
        and will not change), so the GRU's hidden state after that prefix is computed once and
        reused. Columns whose output is not needed are returned as zeros (sample_matrix keeps
        them unchanged). Transformers only skip the tail.
        """
        rows = matrix.to(next(self.parameters()).device)
        final = rows[-1]
        cache = {"end": 0, "state": None}

        def denoise(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
            k = levels[0]
            m = int(torch.nonzero((rows[:-1] == k).all(1))[0, 0])  # current row
            change = torch.nonzero(rows[m + 1] != rows[m])[:, 0]
            last = int(change[-1]) + 1
            out = torch.zeros_like(x)
            if self.gru is None:
                out[:, :last] = self(x[:, :last], levels[:, :last], feats, t0)
                return out
            unfinished = torch.nonzero(k != final)[:, 0]
            first = int(unfinished[0]) if len(unfinished) else x.shape[1]
            first = min(first, int(change[0]))
            if first > cache["end"]:  # extend the cached prefix state with newly final columns
                s0 = cache["end"]
                h, _ = self._embed(x[:, s0:first], levels[:, s0:first], feats, t0, start=s0)
                _, cache["state"] = self.gru(h, cache["state"])
                cache["end"] = first
            s0 = cache["end"]
            h, emb = self._embed(x[:, s0:last], levels[:, s0:last], feats, t0, start=s0)
            h, _ = self.gru(h, cache["state"])
            out[:, s0:last] = self._head(h, emb)
            return out

        return denoise

    # ------------------------------------------------------------ training

    def _levels(self, b: int, t: int, device, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token training levels (b, T) and loss mask (b, T)."""
        K, c = self.diffusion.levels, self.cfg.diffusion.context_level
        pos = torch.arange(t, device=device)[None]  # (1, T)
        if self.cfg.teacher_forcing:
            p = torch.randint(1, t, (b, 1), device=device, generator=gen)  # the one noised token
            k_p = torch.randint(1, K + 1, (b, 1), device=device, generator=gen)
            levels = torch.where(pos < p, 0, torch.where(pos == p, k_p, K))
            return levels, (pos == p).float()
        levels = torch.randint(1, K + 1, (b, t), device=device, generator=gen)
        if self.cfg.train_levels == "mixed":
            use = torch.rand(b, 1, device=device, generator=gen) < self.cfg.prefix_prob
            boundary = torch.randint(1, t, (b, 1), device=device, generator=gen)
            low = torch.randint(0, c + 1, (b, t), device=device, generator=gen)
            levels = torch.where(use & (pos < boundary), low, levels)
        return levels, torch.ones(b, t, device=device)

    def loss(self, window: torch.Tensor, t0: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """window (b, C + H, D) raw values -> scalar diffusion loss (mean over loss tokens)."""
        b, t, d = window.shape
        if t < 2 or d != self.cfg.target_dim:
            raise ValueError(f"expected windows (b, T >= 2, {self.cfg.target_dim}), got {tuple(window.shape)}")
        loc, scale = self.scaler(window[:, : self.cfg.context_length])
        z = ((window - loc[:, None]) / scale[:, None]).clamp(-self.cfg.clip, self.cfg.clip)
        feats = self.scale_feats(loc, scale) if self.use_feats else None
        levels, mask = self._levels(b, t, window.device, generator)
        noise = torch.randn(z.shape, device=z.device, generator=generator)
        xk = self.diffusion.q_sample(z, levels, noise)
        out = self(xk, levels, feats, t0)
        per_token = self.diffusion.loss(out, z, noise, levels)  # (b, T)
        return (per_token * mask).sum() / mask.sum()

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """For the Trainer: batch {"window" (b, C + H, D) raw values, "t0" (b,) index of its first step}."""
        return self.loss(batch["window"], batch.get("t0")), {}

    # ------------------------------------------------------------ sampling

    def matrix(self, schedule: str | None = None, steps: int | None = None,
               context_level: int | None = None) -> torch.Tensor:
        """Scheduling matrix (M + 1, C + H) with the context columns held at the context level."""
        cfg = self.cfg
        kind = schedule or cfg.schedule
        steps = steps or cfg.diffusion.sampling_steps
        if context_level is None:
            context_level = 0 if cfg.teacher_forcing else cfg.diffusion.context_level
        K = self.diffusion.levels
        m = schedule_matrix(kind, cfg.prediction_length, steps, K, uncertainty=cfg.pyramid_lag * steps)
        # warp the evenly spaced ladder so that more steps fall at low noise (monotone, keeps 0 and K)
        m = torch.round(K * (m.double() / K) ** cfg.ladder_power).long()
        m = torch.unique_consecutive(m, dim=0)  # rounding can merge two rows at the low end
        return with_context(m, cfg.context_length, context_level)

    @torch.no_grad()
    def sample(self, context, t0=None, num_samples: int = 100, schedule: str | None = None,
               steps: int | None = None, context_level: int | None = None, eta: float | None = None,
               seed: int = 0, batch_size: int = 2048, cached: bool = True) -> np.ndarray:
        """Sample future paths. context (N, C', D) raw values (the last C steps are used), t0 (N,)
        time index of the context's first step -> paths (N, S, H, D) as numpy float32.

        `cached=False` runs the full network on every row (reference for `cached_denoiser`)."""
        cfg = self.cfg
        device = next(self.parameters()).device
        ctx = torch.as_tensor(np.asarray(context, dtype=np.float32), device=device)
        if ctx.dim() != 3 or ctx.shape[2] != cfg.target_dim or ctx.shape[1] < cfg.context_length:
            raise ValueError(f"context must be (N, >= {cfg.context_length}, {cfg.target_dim}), got {tuple(ctx.shape)}")
        shift = ctx.shape[1] - cfg.context_length
        ctx = ctx[:, shift:]
        n = ctx.shape[0]
        t0 = torch.zeros(n, dtype=torch.long) if t0 is None else torch.as_tensor(np.asarray(t0)).long() + shift
        mat = self.matrix(schedule, steps, context_level)
        ctx_level = int(mat[0, 0]) if cfg.context_length else 0
        gen = torch.Generator(device=device).manual_seed(seed)
        loc, scale = self.scaler(ctx)
        feats = self.scale_feats(loc, scale)
        z_ctx = ((ctx - loc[:, None]) / scale[:, None]).clamp(-cfg.clip, cfg.clip)
        # every (window, sample) pair is one sequence: (N * S, ...)
        idx = torch.arange(n, device=device).repeat_interleave(num_samples)
        out = []
        for chunk in idx.split(max(1, batch_size)):
            zc, f, tt = z_ctx[chunk], feats[chunk], t0.to(device)[chunk]
            kc = torch.full(zc.shape[:2], ctx_level, device=device, dtype=torch.long)
            noisy_ctx = self.diffusion.q_sample(zc, kc, torch.randn(zc.shape, device=device, generator=gen))
            future = torch.randn((len(chunk), cfg.prediction_length, cfg.target_dim), device=device, generator=gen)
            x = torch.cat([noisy_ctx, future], 1)  # (b, C + H, D)

            f = f if self.use_feats else None
            if cached:
                denoise = self.cached_denoiser(mat, f, tt)
            else:
                def denoise(xx, kk, f=f, tt=tt):
                    return self(xx, kk, f, tt)
            x = sample_matrix(denoise, self.diffusion, x, mat, eta=eta, generator=gen)
            out.append(x[:, cfg.context_length:].clamp(-cfg.clip, cfg.clip))
        z = torch.cat(out)  # (N * S, H, D)
        paths = z * scale[idx][:, None] + loc[idx][:, None]
        return paths.reshape(n, num_samples, cfg.prediction_length, cfg.target_dim).cpu().numpy().astype(np.float32)
