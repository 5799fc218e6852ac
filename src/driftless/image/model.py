"""MAR image model: masked autoregression over a still image's continuous tokens with a per-token
diffusion loss (Li et al., 2024, "Autoregressive Image Generation without Vector Quantization").

An image is a one-frame video: the tokenizer turns a 64x64 frame into s = 64 continuous tokens of
C = 16 channels (normalised latents); this model generates those tokens and the tokenizer's
decoder turns them back into pixels.

    sequence = [buffer tokens (class embedding) | s image tokens (Linear(C -> d) or the mask token)]
             + learned positions                                        # (b, buffer + s, d)
    z        = transformer(sequence)[:, buffer:]                         # (b, s, d), one z per token
    loss     = DiffLoss(target token | z) on the tokens to predict       # driftless.diffusion.diffloss

Two orders, the same backbone, for the paper's key ablation:

* ``order="random"`` (MAR): bidirectional attention; training masks a random subset of tokens
  (ratio from a truncated normal on [0.7, 1], MAR's) and predicts it; sampling reveals tokens in
  a random order over `ar_steps` steps, how many still masked after step i following
  cos(pi/2 (i + 1) / steps), several tokens per step.
* ``order="raster"``: causal attention within the frame, teacher-forced next-token prediction in
  raster order (input slot j holds token j-1; the last buffer slot predicts token 0); sampling is
  one token per step with a key/value cache.

Classifier-free guidance: the class embedding is replaced by a learned null embedding with
probability `label_drop` in training; sampling runs the conditional and null batches together and
guides each token's diffusion head with a linear schedule (MAR's: 1 + (cfg - 1) * revealed
fraction). Temperature scales the diffusion sampler's noise.

Differences from MAR: one transformer over all positions with mask tokens (MAR: an MAE-style
encoder on visible tokens + a decoder), fewer buffer tokens (64 image tokens here), the frame
tokens come from this project's small KL tokenizer; the head is `DiffLoss` (fixed posterior
variance, x0 clamp; see docs/benchmarks.md, section 7).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from einops import repeat
from torch import nn

from driftless.diffusion.diffloss import DiffLoss, DiffLossConfig, diffloss_config, linear_cfg_schedule
from driftless.nn.attention import Attention, KVCache
from driftless.nn.masking import truncated_normal
from driftless.nn.st_transformer import Mlp

ORDERS = ("random", "raster")
CFG_SCHEDULES = ("linear", "constant")


@dataclass
class ImageConfig:
    grid: tuple[int, int] = (8, 8)  # token grid of one image (the tokenizer's)
    latent_dim: int = 16  # C: channels of a token
    num_classes: int = 16  # 0: unconditional
    class_names: list[str] | None = None  # names of the classes, in label order (from the data)
    dim: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    buffer: int = 8  # tokens holding the class embedding (MAR: 64 for 256 image tokens)
    order: str = "random"  # random (MAR, bidirectional) | raster (causal)
    mask_ratio_min: float = 0.7  # training mask ratio ~ truncated normal(1, std) on [min, 1] (MAR)
    mask_ratio_std: float = 0.25
    label_drop: float = 0.1  # probability of the null class in training (CFG)
    ar_steps: int = 16  # default generation steps (random order)
    diffloss: DiffLossConfig = field(default_factory=lambda: diffloss_config("small"))

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"ImageConfig.order must be one of {ORDERS}, got {self.order!r}")
        for name in ("dim", "depth", "heads", "buffer", "latent_dim", "ar_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ImageConfig.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"ImageConfig.grid must be two positive ints (rows, cols), got {self.grid}")
        if self.num_classes < 0:
            raise ValueError(f"ImageConfig.num_classes must be >= 0, got {self.num_classes}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"ImageConfig.class_names has {len(self.class_names)} names for "
                             f"{self.num_classes} classes")
        if not 0.0 < self.mask_ratio_min <= 1.0 or self.mask_ratio_std <= 0:
            raise ValueError(f"mask ratio must satisfy 0 < mask_ratio_min <= 1 and std > 0, got "
                             f"{self.mask_ratio_min}, {self.mask_ratio_std}")
        if not 0.0 <= self.label_drop < 1.0:
            raise ValueError(f"ImageConfig.label_drop must lie in [0, 1), got {self.label_drop}")
        if self.ar_steps > self.tokens:
            raise ValueError(f"ImageConfig.ar_steps must be <= the {self.tokens} tokens, got {self.ar_steps}")
        # the head's sizes follow the model's (token channels, width)
        if (self.diffloss.token_dim, self.diffloss.cond_dim) != (self.latent_dim, self.dim):
            self.diffloss = dataclasses.replace(self.diffloss, token_dim=self.latent_dim, cond_dim=self.dim)

    @property
    def tokens(self) -> int:
        return int(self.grid[0]) * int(self.grid[1])


def _preset(dim, depth, heads, buffer, head, **kw) -> ImageConfig:
    return ImageConfig(dim=dim, depth=depth, heads=heads, buffer=buffer, diffloss=diffloss_config(head), **kw)


PRESETS: dict[str, ImageConfig] = {
    # tests: 4 tokens of 4 channels, two classes, a 2 x 32 head with a 25-step sampler
    "debug": _preset(32, 1, 2, 2, "debug", grid=(2, 2), latent_dim=4, num_classes=2, ar_steps=4),
    # CPU experiments here (docs/benchmarks.md, section 10): ~1.9 M backbone + 0.25 M head
    "cpu": ImageConfig(dim=192, depth=4, heads=4, buffer=4,
                       diffloss=diffloss_config("small", width=128, depth=3)),
    "small": _preset(256, 6, 4, 8, "small"),  # ~4.9 M + 1.3 M head
    "base": _preset(768, 16, 12, 64, "base", ar_steps=64),  # MAR-B-sized backbone, 3 x 1024 head
}


class Block(nn.Module):
    """Pre-norm transformer block (attention + MLP) over (b, L, d); causal or bidirectional."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, causal: bool, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal=causal, cache=cache, commit=cache is not None)
        return x + self.mlp(self.norm2(x))


class ImageMAR(nn.Module):
    kind = "image"

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        self.cfg = cfg
        d, s = cfg.dim, cfg.tokens
        self.input_proj = nn.Linear(cfg.latent_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.class_embed = nn.Embedding(max(1, cfg.num_classes), d)
        self.null_class = nn.Parameter(torch.zeros(d))  # the "no label" embedding (MAR's fake latent)
        self.pos = nn.Parameter(torch.zeros(cfg.buffer + s, d))
        self.blocks = nn.ModuleList([Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = DiffLoss(cfg.diffloss)
        self._tokenizer = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in [self.input_proj, *self.blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.mask_token, self.null_class, self.pos, self.class_embed.weight):
            nn.init.normal_(p, std=0.02)

    # ---- tokenizer (frozen, not part of the weights) ---------------------------------------
    def attach_tokenizer(self, tokenizer: nn.Module | None) -> "ImageMAR":
        """Use this tokenizer for batches of uint8 "images" and for `decode`; kept outside the
        state dict (the image checkpoint stays tokenizer-agnostic)."""
        if tokenizer is not None:
            c, grid = tokenizer.cfg.latent_dim, tuple(tokenizer.cfg.grid)
            if (c, grid) != (self.cfg.latent_dim, tuple(self.cfg.grid)):
                raise ValueError(f"tokenizer gives {grid} tokens of {c} channels, this image model expects "
                                 f"{tuple(self.cfg.grid)} of {self.cfg.latent_dim}")
        object.__setattr__(self, "_tokenizer", tokenizer)
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (b, h, w, 3) -> normalised latents (b, s, C) through the attached tokenizer."""
        if self._tokenizer is None:
            raise ValueError("uint8 images need a tokenizer: call attach_tokenizer(load_model(TOKENIZER)) "
                             "or pass precomputed 'latents' (b, s, C)")
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (b, h, w, 3), got {images.dtype} {tuple(images.shape)}")
        return self._tokenizer.encode(images[:, None])[:, 0].float()  # (b, s, C)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents (b, s, C) -> uint8 images (b, h, w, 3)."""
        if self._tokenizer is None:
            raise ValueError("decoding needs a tokenizer: call attach_tokenizer(load_model(TOKENIZER))")
        return self._tokenizer.decode(latents[:, None])[:, 0]

    # ---- backbone --------------------------------------------------------------------------
    def class_vectors(self, labels: torch.Tensor | None, b: int, device) -> torch.Tensor:
        """(b, d): class embeddings, or the null embedding where labels < 0 or labels is None."""
        null = self.null_class.expand(b, -1)
        if labels is None or self.cfg.num_classes == 0:
            return null
        labels = torch.as_tensor(labels, device=device).long()
        if labels.shape != (b,) or bool((labels >= self.cfg.num_classes).any()):
            raise ValueError(f"labels must be (b,) = ({b},) ints < {self.cfg.num_classes} (-1: unconditional), "
                             f"got {tuple(labels.shape)} {labels.tolist()[:8]}")
        emb = self.class_embed(labels.clamp(min=0))
        return torch.where((labels >= 0)[:, None], emb, null)

    def backbone(self, x: torch.Tensor, known: torch.Tensor | None, cls: torch.Tensor) -> torch.Tensor:
        """Conditioning vectors z (b, s, d) for every image token.

        random: x (b, s, C) with known (b, s) bool (unknown positions get the mask token), all
        tokens attend to each other. raster: x (b, s, C) all treated as the teacher-forced
        prefix; z for token i sees only the buffer and tokens < i.
        """
        s, nb = self.cfg.tokens, self.cfg.buffer
        buf = repeat(cls, "b d -> b n d", n=nb)  # (b, buffer, d)
        h = self.input_proj(x)  # (b, s, d)
        if self.cfg.order == "random":
            h = torch.where(known[..., None], h, self.mask_token.to(h.dtype))
            seq = torch.cat([buf, h], 1) + self.pos  # (b, buffer + s, d)
        else:
            seq = torch.cat([buf, h[:, :-1]], 1) + self.pos[: nb + s - 1]  # slot buffer + j holds token j
        causal = self.cfg.order == "raster"
        for blk in self.blocks:
            seq = blk(seq, causal)
        seq = self.norm(seq)
        return seq[:, nb:] if self.cfg.order == "random" else seq[:, nb - 1:]  # (b, s, d)

    # ---- training --------------------------------------------------------------------------
    def batch_latents(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training batch -> (normalised latents (b, s, C), labels (b,) or None)."""
        if "latents" in batch:
            x = batch["latents"]
            want = (self.cfg.tokens, self.cfg.latent_dim)
            if not isinstance(x, torch.Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != want:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"batch['latents'] must be (b, {want[0]}, {want[1]}) float, got {got}")
            x = x.float()
        elif "images" in batch:
            x = self.encode(batch["images"])
        else:
            raise ValueError("an image batch needs 'latents' (b, s, C) or uint8 'images' (b, h, w, 3), "
                             "plus 'labels' (b,) for a class-conditional model")
        labels = batch.get("labels")
        if self.cfg.num_classes and labels is None:
            raise ValueError("this model is class-conditional: the batch needs 'labels' (b,)")
        return x, labels

    def masked_loss(self, x: torch.Tensor, labels: torch.Tensor | None,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        b, s, dev = x.shape[0], self.cfg.tokens, x.device
        cls = self.class_vectors(labels, b, dev)
        if self.cfg.label_drop > 0 and self.training:
            drop = torch.rand(b, device=dev, generator=generator) < self.cfg.label_drop
            cls = torch.where(drop[:, None], self.null_class.expand(b, -1), cls)
        if self.cfg.order == "raster":
            z = self.backbone(x, None, cls)
            return self.head.loss(x, z, generator=generator), {"mask_ratio": torch.tensor(1.0)}
        ratio = truncated_normal((b,), 1.0, self.cfg.mask_ratio_std, self.cfg.mask_ratio_min, 1.0, dev, generator)
        n_mask = torch.ceil(ratio * s).long().clamp(1, s)  # (b,)
        order = torch.argsort(torch.rand(b, s, device=dev, generator=generator), dim=1)  # (b, s) a permutation
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(s, device=dev).expand(b, s))
        masked = rank < n_mask[:, None]  # (b, s): the first n_mask tokens of the order are predicted
        z = self.backbone(x, ~masked, cls)
        return self.head.loss(x, z, masked, generator=generator), {"mask_ratio": masked.float().mean().detach()}

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        x, labels = self.batch_latents(batch)
        return self.masked_loss(x, labels)

    # ---- sampling --------------------------------------------------------------------------
    def _z_pair(self, x, known, cls, null, guided):
        if not guided:
            return self.backbone(x, known, cls), None
        z = self.backbone(torch.cat([x, x]), torch.cat([known, known]), torch.cat([cls, null]))
        return z.chunk(2)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor | list[int] | None, num: int | None = None, ar_steps: int | None = None,
                 diffusion_steps: int | None = None, temperature: float = 1.0, cfg_scale: float = 1.0,
                 cfg_schedule: str = "linear", generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """Sample normalised latents (b, s, C): one image per label (-1 or None: unconditional,
        then `num` images). ar_steps: generation steps (random order, 1..s, default the config's;
        raster order always takes s steps of one token). diffusion_steps: the head's sampler
        steps (default its config's). cfg_scale with schedule linear (MAR) or constant."""
        device = torch.device(device) if device is not None else self.pos.device
        if labels is None:
            if not num or num < 1:
                raise ValueError("unconditional generation needs num >= 1 images")
            labels = torch.full((num,), -1, dtype=torch.long)
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
        s, b = self.cfg.tokens, labels.shape[0]
        if cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {cfg_schedule!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        cls = self.class_vectors(labels, b, device)
        null = self.null_class.expand(b, -1)
        guided = float(cfg_scale) != 1.0
        kw = dict(temperature=temperature, steps=diffusion_steps, generator=generator)
        if self.cfg.order == "raster":
            if ar_steps not in (None, s):
                raise ValueError(f"raster-causal generation takes one token per step: ar_steps must be {s} "
                                 f"(or None), got {ar_steps}")
            return self._generate_raster(cls, null, guided, cfg_scale, cfg_schedule, kw)
        steps = self.cfg.ar_steps if ar_steps is None else int(ar_steps)
        if not 1 <= steps <= s:
            raise ValueError(f"ar_steps must lie in [1, {s}] (one token or more per step), got {ar_steps}")
        x = torch.zeros(b, s, self.cfg.latent_dim, device=device)
        known = torch.zeros(b, s, dtype=torch.bool, device=device)
        order = torch.argsort(torch.rand(b, s, device=device, generator=generator), dim=1)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(s, device=device).expand(b, s))
        n_masked = s
        for i in range(steps):
            # tokens still masked after this step: cosine schedule, >= 1 revealed, all by the end
            n_next = 0 if i == steps - 1 else int(math.floor(s * math.cos(math.pi / 2 * (i + 1) / steps)))
            if i < steps - 1:
                n_next = max(1, min(n_masked - 1, n_next))
            reveal = (rank >= n_next) & (rank < n_masked)  # (b, s), the same count in every image
            z, z_u = self._z_pair(x, known, cls, null, guided)
            scale = cfg_scale if cfg_schedule == "constant" else linear_cfg_schedule(
                i, steps, cfg_scale, revealed=(s - n_next) / s)
            x[reveal] = self.head.sample(z[reveal], cfg_scale=scale,
                                         z_uncond=None if z_u is None else z_u[reveal], **kw)
            known |= reveal
            n_masked = n_next
        return x

    def _generate_raster(self, cls, null, guided, cfg_scale, cfg_schedule, kw) -> torch.Tensor:
        s, nb = self.cfg.tokens, self.cfg.buffer
        b = cls.shape[0]
        cond = torch.cat([cls, null]) if guided else cls  # (b or 2b, d)
        caches = [KVCache() for _ in self.blocks]
        h = repeat(cond, "b d -> b n d", n=nb) + self.pos[:nb]  # prefill the buffer tokens
        x = torch.zeros(b, s, self.cfg.latent_dim, device=cls.device)
        for i in range(s):
            for blk, cache in zip(self.blocks, caches):
                h = blk(h, True, cache)
            z = self.norm(h[:, -1])  # (b or 2b, d): predicts token i
            z, z_u = (z.chunk(2) if guided else (z, None))
            scale = cfg_scale if cfg_schedule == "constant" else linear_cfg_schedule(i, s, cfg_scale)
            x[:, i] = self.head.sample(z, cfg_scale=scale, z_uncond=z_u, **kw)
            if i < s - 1:
                tok = x[:, i] if not guided else torch.cat([x[:, i], x[:, i]])
                h = (self.input_proj(tok) + self.pos[nb + i])[:, None]  # (b', 1, d): slot of token i
        return x


def num_params(model: ImageMAR) -> dict[str, int]:
    head = sum(p.numel() for p in model.head.parameters())
    return {"backbone": sum(p.numel() for p in model.parameters()) - head, "head": head}
