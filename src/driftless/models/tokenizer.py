"""ST-ViViT video tokenizer: frames <-> continuous (KL) or vector-quantized latent tokens.

Encoder and decoder are ST-transformers, so both are causal in time: the latent of frame t
may use frames <= t and never later ones, and decoding frame t uses latents <= t. Each frame
is cut into p x p patches; each patch becomes one token with `latent_dim` channels.

* `bottleneck="kl"` (default): a diagonal Gaussian posterior with a small KL penalty; the
  posterior mean is the latent at inference. Continuous tokens reconstruct far better than VQ
  ones (MAR) and are what the Diffusion-Forcing dynamics model denoises.
* `bottleneck="vq"`: Genie's baseline, a codebook with usage/perplexity logging and dead-code
  reset; its code indices feed the MaskGIT dynamics baseline.

`encode` returns normalised latents: the per-channel mean and std measured on training data
after training (`fit_latent_stats`) are stored in the config and removed/restored here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from driftless.models.common import pixels_to_unit, unit_to_pixels
from driftless.nn.attention import KVCache
from driftless.nn.embeddings import patchify, sincos_2d, unpatchify
from driftless.nn.quantize import DiagonalGaussian, VectorQuantizer
from driftless.nn.st_transformer import STConfig, STTransformer


@dataclass
class TokenizerConfig:
    resolution: tuple[int, int] = (64, 64)
    patch: int = 8
    latent_dim: int = 16
    bottleneck: str = "kl"  # kl | vq
    kl_weight: float = 1e-4
    codebook_size: int = 1024
    vq_beta: float = 0.25
    encoder: STConfig = field(default_factory=lambda: STConfig(dim=160, depth=2, heads=4))
    decoder: STConfig = field(default_factory=lambda: STConfig(dim=160, depth=4, heads=4))
    head_ratio: int = 2  # pixel readout: Linear(dim, ratio*dim) -> GELU -> Linear(.., p*p*3); 0 = linear
    # > 0: the readout gives head_conv features per pixel instead of RGB, refined per frame at full
    # resolution by a residual conv3x3-GELU-conv3x3 block and turned into RGB by a 1x1 conv (the
    # patch seams a linear readout leaves are what it can fix); 0 = RGB straight from the readout
    head_conv: int = 0
    latent_mean: list[float] | None = None  # per-channel statistics of training latents
    latent_std: list[float] | None = None

    def __post_init__(self) -> None:
        if self.head_conv < 0:
            raise ValueError(f"tokenizer head_conv must be >= 0 (0: no convolutional head), got {self.head_conv}")
        if self.bottleneck not in ("kl", "vq"):
            raise ValueError(f"tokenizer bottleneck must be 'kl' or 'vq', got {self.bottleneck!r}")
        h, w = self.resolution
        if h % self.patch or w % self.patch:
            raise ValueError(f"resolution {h}x{w} is not divisible by patch {self.patch}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.resolution[0] // self.patch, self.resolution[1] // self.patch

    @property
    def tokens_per_frame(self) -> int:
        g = self.grid
        return g[0] * g[1]


PRESETS: dict[str, TokenizerConfig] = {
    "debug": TokenizerConfig(
        patch=8, latent_dim=4,
        encoder=STConfig(dim=32, depth=1, heads=2), decoder=STConfig(dim=32, depth=1, heads=2), head_ratio=1,
    ),
    # ships inside the package: ~2.6M parameters, 64 tokens x 16 channels per 64x64 frame. The
    # temporal window is the training clip length (8): longer spans were never seen in training
    "small": TokenizerConfig(
        patch=8, latent_dim=16,
        encoder=STConfig(dim=160, depth=2, heads=4, temporal_window=8),
        decoder=STConfig(dim=160, depth=4, heads=4, temporal_window=8), head_ratio=2,
    ),
    # GPU quality: 256 tokens x 8 channels per frame (patch 4, as Genie)
    "base": TokenizerConfig(
        patch=4, latent_dim=8,
        encoder=STConfig(dim=384, depth=6, heads=6, temporal_window=8),
        decoder=STConfig(dim=384, depth=8, heads=6, temporal_window=8), head_ratio=2,
    ),
}


class Tokenizer(nn.Module):
    kind = "tokenizer"

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        p, c = cfg.patch, cfg.latent_dim
        patch_dim = p * p * 3
        gh, gw = cfg.grid
        self.embed = nn.Linear(patch_dim, cfg.encoder.dim)
        self.register_buffer("pos_enc", sincos_2d(gh, gw, cfg.encoder.dim), persistent=False)
        self.encoder = STTransformer(cfg.encoder)
        if cfg.bottleneck == "kl":
            self.to_latent = nn.Linear(cfg.encoder.dim, 2 * c)
            self.gaussian = DiagonalGaussian()
        else:
            self.to_latent = nn.Linear(cfg.encoder.dim, c)
            self.vq = VectorQuantizer(cfg.codebook_size, c, beta=cfg.vq_beta)
        self.from_latent = nn.Linear(c, cfg.decoder.dim)
        self.register_buffer("pos_dec", sincos_2d(gh, gw, cfg.decoder.dim), persistent=False)
        self.decoder = STTransformer(cfg.decoder)
        d = cfg.decoder.dim
        k = cfg.head_conv
        out_dim = p * p * (k or 3)
        if cfg.head_ratio:
            self.head = nn.Sequential(nn.Linear(d, cfg.head_ratio * d), nn.GELU(approximate="tanh"),
                                      nn.Linear(cfg.head_ratio * d, out_dim))
        else:
            self.head = nn.Linear(d, out_dim)
        if k:
            self.refine = nn.Sequential(nn.Conv2d(k, k, 3, padding=1), nn.GELU(approximate="tanh"),
                                        nn.Conv2d(k, k, 3, padding=1))
            nn.init.zeros_(self.refine[2].weight)  # starts as the plain per-pixel readout
            nn.init.zeros_(self.refine[2].bias)
            self.to_rgb = nn.Conv2d(k, 3, 1)
        mean = torch.tensor(cfg.latent_mean) if cfg.latent_mean is not None else torch.zeros(c)
        std = torch.tensor(cfg.latent_std) if cfg.latent_std is not None else torch.ones(c)
        self.register_buffer("latent_mean", mean.float(), persistent=False)
        self.register_buffer("latent_std", std.float(), persistent=False)
        for m in (self.embed, self.to_latent, self.from_latent):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- encoder -----------------------------------------------------------------------
    def _encode_features(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, t, h, w, 3) in [-1, 1] -> (b, t, s, enc_out)
        tokens = self.embed(patchify(x, self.cfg.patch)) + self.pos_enc  # (b, t, s, d)
        return self.to_latent(self.encoder(tokens))

    def _bottleneck(self, feats: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        if self.cfg.bottleneck == "kl":
            z, kl, stats = self.gaussian(feats, sample=sample)
            return z, kl * self.cfg.kl_weight, stats
        z, _, loss, stats = self.vq(feats)
        return z, loss, stats

    # ---- decoder -----------------------------------------------------------------------
    def _decode_raw(self, z: torch.Tensor, caches: list[KVCache] | None = None, start: int = 0,
                    window: int | None = None) -> torch.Tensor:
        # z: (b, t, s, c) raw latents -> (b, t, h, w, 3) in [-1, 1] (unclamped)
        tokens = self.from_latent(z) + self.pos_dec  # (b, t, s, d)
        tokens = self.decoder(tokens, start=start, caches=caches, commit=caches is not None, window=window)
        height, width = self.cfg.resolution
        out = unpatchify(self.head(tokens), self.cfg.patch, height, width)  # (b, t, h, w, k or 3)
        if not self.cfg.head_conv:
            return out
        b = out.shape[0]
        x = rearrange(out, "b t h w k -> (b t) k h w")
        x = self.to_rgb(x + self.refine(x))  # (b*t, 3, h, w)
        return rearrange(x, "(b t) c h w -> b t h w c", b=b)

    # ---- training ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """x: (b, t, h, w, 3) in [-1, 1] -> reconstruction, regulariser loss, stats."""
        z, reg, stats = self._bottleneck(self._encode_features(x), sample=self.training)
        return self._decode_raw(z), reg, stats

    def after_train_step(self) -> None:
        """Called by the Trainer after each update, outside compiled code: the VQ bottleneck's
        dead codes are replaced here, not inside the step (`VectorQuantizer`)."""
        if self.cfg.bottleneck == "vq":
            self.vq.apply_dead_code_reset()

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        x = pixels_to_unit(batch["frames"])
        recon, reg, stats = self(x)
        mse = F.mse_loss(recon.float(), x.float())
        loss = mse + reg
        psnr = -10 * torch.log10(mse.detach() / 4 + 1e-12)  # [-1,1] range -> [0,1] range
        return loss, {"mse": mse.detach(), "psnr": psnr, "reg": reg.detach(), **stats}

    # ---- public inference API ------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std + self.latent_mean

    @torch.no_grad()
    def encode_raw(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (b, t, h, w, 3) -> un-normalised latents (b, t, s, c) (posterior mean / code)."""
        z, _, _ = self._bottleneck(self._encode_features(pixels_to_unit(frames)), sample=False)
        return z

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (b, t, h, w, 3) -> normalised latents (b, t, s, c)."""
        return self.normalize(self.encode_raw(frames).float())

    @torch.no_grad()
    def reconstruct(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (b, t, h, w, 3) -> uint8 reconstruction through the posterior mean (or code)."""
        return unit_to_pixels(self._decode_raw(self.encode_raw(frames)))

    @torch.no_grad()
    def encode_indices(self, frames: torch.Tensor) -> torch.Tensor:
        """VQ only: uint8 (b, t, h, w, 3) -> code indices (b, t, s)."""
        if self.cfg.bottleneck != "vq":
            raise ValueError("encode_indices needs a VQ tokenizer (bottleneck='vq')")
        return self.vq.quantize(self._encode_features(pixels_to_unit(frames)))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """normalised latents (b, t, s, c) -> uint8 frames (b, t, h, w, 3)."""
        return unit_to_pixels(self._decode_raw(self.denormalize(z.float())))

    @torch.no_grad()
    def decode_step(self, z: torch.Tensor, caches: list[KVCache], start: int, window: int) -> torch.Tensor:
        """One new frame of normalised latents (b, 1, s, c) -> uint8 (b, 1, h, w, 3), using and
        extending the decoder's KV caches (frames before `start`)."""
        return unit_to_pixels(self._decode_raw(self.denormalize(z.float()), caches, start, window))

    @torch.no_grad()
    def fit_latent_stats(self, frame_batches) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of latents over an iterable of uint8 (b, t, h, w, 3) batches;
        stores them in the model and its config."""
        c = self.cfg.latent_dim
        n, s1, s2 = 0, torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        for frames in frame_batches:
            z = self.encode_raw(frames).double().reshape(-1, c).cpu()
            n += z.shape[0]
            s1 += z.sum(0)
            s2 += (z**2).sum(0)
        if n == 0:
            raise ValueError("fit_latent_stats got no frames")
        mean = s1 / n
        std = (s2 / n - mean**2).clamp(min=1e-8).sqrt()
        self.cfg.latent_mean = [float(v) for v in mean]
        self.cfg.latent_std = [float(v) for v in std]
        self.latent_mean.copy_(mean.float())
        self.latent_std.copy_(std.float())
        return self.cfg.latent_mean, self.cfg.latent_std
