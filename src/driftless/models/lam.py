"""Latent action model (Genie): unsupervised discrete actions from pixels.

Encoder: a causal ST-transformer over the pixel patches of x_1..x_T plus one summary token per
frame; the summary token of frame t+1 (which has seen frames <= t+1) becomes the latent action
a_t of the transition t -> t+1, passed through a VQ bottleneck with a tiny codebook (|A| = 8 by
default) so that a person can play with a handful of buttons.

Decoder: a causal ST-transformer that sees only frames <= t and the actions, and predicts the
pixels of x_{t+1} as a residual on x_t (so copying costs nothing and the loss that remains is
the change); the action therefore has to carry the change. How the decoder receives the
action is configurable: `token` prepends it as an extra spatial token of each frame (found
essential by Jasmine), `additive` adds its embedding to every patch token (Genie).

At play time only the encoder (to infer actions from video) and the codebook size are needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from driftless.models.common import pixels_to_unit
from driftless.nn.embeddings import patchify, sincos_2d, unpatchify
from driftless.nn.quantize import ProductQuantizer, VectorQuantizer
from driftless.nn.st_transformer import STConfig, STTransformer

CONDITIONINGS = ("token", "additive")


@dataclass
class LAMConfig:
    resolution: tuple[int, int] = (64, 64)
    patch: int = 8
    num_actions: int = 8  # |A|, the codebook size
    action_dim: int = 32
    conditioning: str = "token"  # token | additive
    vq_beta: float = 0.25
    vq_usage_decay: float = 0.95  # short memory: a tiny codebook must recover from collapse fast
    # encoder tokens see their patch and its change since the previous frame, so motion is local
    # to one token instead of having to be assembled by attention (still causal)
    diff_input: bool = True
    # for the first vq_warmup training steps the decoder gets the continuous action vector, so
    # the encoder learns to carry motion before it must pick one of |A| codes; the codebook is
    # then initialised by k-means on encoder outputs (avoids the codes being ignored from the
    # start, which otherwise leaves a tiny codebook collapsed)
    vq_warmup: int = 500
    # transitions per latent action: the encoder's vectors are averaged over consecutive chunks of
    # `chunk` transitions (from the clip's start) and one action is quantised per chunk, which the
    # decoder then uses for every frame of the chunk. One transition tells little of the control a
    # player holds (momentum; a jump in the air does nothing): on held-action CoinRun a probe of
    # global-motion features guesses a transition's control group 0.61-0.64 of the time
    # (docs/benchmarks.md 2.13); a chunk asks the action to explain several frames of one control
    chunk: int = 1
    # a product code (nn.quantize.ProductQuantizer): e.g. (3, 6) cuts the action vector in two halves
    # with codebooks of 3 and 6, and num_actions must be 18; None: one flat codebook. Against flat
    # codebooks that spend their codes on vertical motion and leave a jump with no direction
    # (docs/benchmarks.md 2.19)
    factors: tuple[int, ...] | None = None
    encoder: STConfig = field(default_factory=lambda: STConfig(dim=128, depth=3, heads=4))
    decoder: STConfig = field(default_factory=lambda: STConfig(dim=128, depth=3, heads=4))
    inference_only: bool = False  # only the encoder and codebook (what a shipped world needs)

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"LAM conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.num_actions < 2:
            raise ValueError(f"a latent action codebook needs at least 2 actions, got {self.num_actions}")
        if self.factors is not None:
            self.factors = tuple(int(k) for k in self.factors)
            if math.prod(self.factors) != self.num_actions:
                raise ValueError(f"a product code of factors {list(self.factors)} has {math.prod(self.factors)} "
                                 f"codes: set num_actions={math.prod(self.factors)} (it is {self.num_actions})")
            if len(self.factors) < 2 or self.action_dim % len(self.factors):
                raise ValueError(f"factors needs at least two parts that split action_dim={self.action_dim} "
                                 f"evenly, got {list(self.factors)}")
        if self.chunk < 1:
            raise ValueError(f"LAM chunk is a number of transitions per latent action (>= 1), got {self.chunk}")


PRESETS: dict[str, LAMConfig] = {
    "debug": LAMConfig(num_actions=4, action_dim=8,
                       encoder=STConfig(dim=32, depth=1, heads=2), decoder=STConfig(dim=32, depth=1, heads=2)),
    "small": LAMConfig(num_actions=8, action_dim=32,
                       encoder=STConfig(dim=128, depth=2, heads=4, temporal_window=16),
                       decoder=STConfig(dim=128, depth=3, heads=4, temporal_window=16)),
    "base": LAMConfig(num_actions=8, action_dim=32,
                      encoder=STConfig(dim=256, depth=4, heads=4, temporal_window=16),
                      decoder=STConfig(dim=256, depth=4, heads=4, temporal_window=16)),
}


def chunk_mean(vec: torch.Tensor, chunk: int) -> torch.Tensor:
    """(b, n, a) -> (b, n, a): every vector replaced by the mean over its chunk of `chunk` consecutive
    positions, counted from position 0 (the last chunk may be shorter)."""
    n = vec.shape[1]
    ids = torch.arange(n, device=vec.device) // chunk  # (n,) chunk of each position
    member = F.one_hot(ids, -(-n // chunk)).to(vec.dtype)  # (n, chunks)
    means = torch.einsum("bna,nc->bca", vec, member / member.sum(0))  # (b, chunks, a)
    return means[:, ids]


class LatentActionModel(nn.Module):
    kind = "lam"

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.patch
        patch_dim = p * p * 3
        gh, gw = cfg.resolution[0] // p, cfg.resolution[1] // p
        de, dd = cfg.encoder.dim, cfg.decoder.dim
        # encoder
        self.enc_embed = nn.Linear(2 * patch_dim if cfg.diff_input else patch_dim, de)
        self.register_buffer("enc_pos", sincos_2d(gh, gw, de), persistent=False)
        self.summary = nn.Parameter(torch.zeros(de))
        self.encoder = STTransformer(cfg.encoder)
        self.to_action = nn.Linear(de, cfg.action_dim)
        vq_args = {"beta": cfg.vq_beta, "usage_decay": cfg.vq_usage_decay}
        self.vq = (ProductQuantizer(cfg.factors, cfg.action_dim, **vq_args) if cfg.factors
                   else VectorQuantizer(cfg.num_actions, cfg.action_dim, **vq_args))
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # for the VQ warm-up
        self._host_steps: int | None = None  # host copy of train_steps (see before_train_step)
        self._phase: str | None = None
        nn.init.normal_(self.summary, std=0.02)
        if cfg.inference_only:
            return
        # decoder
        self.dec_embed = nn.Linear(patch_dim, dd)
        self.register_buffer("dec_pos", sincos_2d(gh, gw, dd), persistent=False)
        self.action_in = nn.Linear(cfg.action_dim, dd)
        self.decoder = STTransformer(cfg.decoder)
        self.head = nn.Linear(dd, patch_dim)
        nn.init.zeros_(self.head.weight)  # starts by copying the last frame
        nn.init.zeros_(self.head.bias)

    # ---- encoder: video -> latent actions ----------------------------------------------------
    def _action_vectors(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, T, h, w, 3) in [-1, 1] -> continuous action vectors (b, T-1, action_dim)
        patches = patchify(x, self.cfg.patch)  # (b, T, s, p*p*3)
        if self.cfg.diff_input:
            prev = torch.cat([patches[:, :1], patches[:, :-1]], dim=1)  # frame t-1 (t itself at t=0)
            patches = torch.cat([patches, patches - prev], dim=-1)
        tokens = self.enc_embed(patches) + self.enc_pos  # (b, T, s, d)
        b, t = tokens.shape[:2]
        summary = self.summary.expand(b, t, 1, -1)
        h = self.encoder(torch.cat([summary, tokens], dim=2))  # (b, T, 1+s, d)
        vec = self.to_action(h[:, 1:, 0])  # summary of frame t+1 -> action of t -> t+1: (b, T-1, a)
        return vec if self.cfg.chunk == 1 else chunk_mean(vec, self.cfg.chunk)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """x: (b, T, h, w, 3) in [-1, 1] -> (quantised actions (b, T-1, a), indices (b, T-1), vq loss, stats).

        During the training warm-up the first output is the continuous (normalised) vector."""
        if x.shape[1] < 2:
            raise ValueError(f"inferring actions needs at least 2 frames, got {x.shape[1]}")
        vec = self._action_vectors(x)
        if self.training:
            phase = self._phase if self._phase is not None else self._phase_of(int(self.train_steps))
            self.train_steps += 1
            if phase == "warmup":
                idx = self.vq.quantize(vec)
                zero = vec.new_zeros(())
                return self.vq.project(vec), idx, zero, {"vq_perplexity": zero.detach() + 1, "vq_usage": zero.detach()}
            if phase == "kmeans":
                self.vq.init_kmeans(self.vq.project(vec.detach().float()).reshape(-1, self.cfg.action_dim))
        return self.vq(vec)

    @property
    def unused_parameters(self) -> bool:
        """The codebook takes no part in the loss during the VQ warm-up: under DDP the Trainer
        then lets DistributedDataParallel find it unused (else the step after fails)."""
        return self.cfg.vq_warmup > 0

    def _phase_of(self, step: int) -> str:
        """VQ warm-up ("warmup": continuous vectors), the k-means initialisation ("kmeans", once),
        then vector quantisation ("vq"), by the number of training calls so far."""
        warm = self.cfg.vq_warmup
        return "warmup" if step < warm else ("kmeans" if step == warm and warm > 0 else "vq")

    @property
    def eager_step(self) -> bool:
        """The Trainer runs the k-means step uncompiled: a graph for one step costs more to compile
        than the step it would speed up (the VQ phase change, k-means and quantised graphs
        together, cost 85 s of compiling on the H200; benchmarks 5.7)."""
        return self._phase == "kmeans"

    def after_train_step(self) -> None:
        """Called by the Trainer after each update, outside compiled code (every rank together):
        the step's dead codes replaced (`VectorQuantizer.apply_dead_code_reset`)."""
        self.vq.apply_dead_code_reset()

    def before_train_step(self) -> None:
        """Called by the Trainer before each step, outside compiled code: advances a host-side
        copy of `train_steps`, so the forward pass never reads a device counter (a sync, and a
        graph break under torch.compile) and sees the phase as a constant that changes twice."""
        if self._host_steps is None:
            self._host_steps = int(self.train_steps)  # once: from a fresh or resumed checkpoint
        self._phase = self._phase_of(self._host_steps)
        self._host_steps += 1

    @torch.no_grad()
    def infer_actions(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (b, T, h, w, 3) -> latent action indices (b, T-1) int64."""
        return self.vq.quantize(self._action_vectors(pixels_to_unit(frames)))

    # ---- decoder: frames <= t and a_t -> frame t+1 ----------------------------------------------
    def decode(self, x_past: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.cfg.inference_only:
            raise ValueError("this LAM was saved encoder-only (inference_only); it cannot predict frames")
        return self._decode(x_past, actions)

    def _decode(self, x_past: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """x_past: (b, L, h, w, 3) frames x_1..x_L; actions: (b, L, action_dim) with actions[:, t]
        the action out of frame t -> predicted frames x_2..x_{L+1}: (b, L, h, w, 3) in [-1, 1]."""
        tokens = self.dec_embed(patchify(x_past, self.cfg.patch)) + self.dec_pos  # (b, L, s, d)
        act = self.action_in(actions)  # (b, L, d)
        if self.cfg.conditioning == "token":
            h = self.decoder(torch.cat([act.unsqueeze(2), tokens], dim=2))[:, :, 1:]
        else:
            h = self.decoder(tokens + act.unsqueeze(2))
        height, width = self.cfg.resolution
        # residual on the last seen frame: copying is free, so the loss that remains is the change,
        # which only the action can explain
        return x_past + unpatchify(self.head(h), self.cfg.patch, height, width)

    def decode_indices(self, x_past: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(x_past, self.vq.lookup(indices))

    # ---- training ------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        x = pixels_to_unit(batch["frames"])  # (b, T, h, w, 3)
        a, _, vq_loss, stats = self.encode(x)
        pred = self.decode(x[:, :-1], a)
        mse = F.mse_loss(pred.float(), x[:, 1:].float())
        # (in the VQ warm-up vq_loss is a constant 0: adding it made torch.compile return a loss
        # without a gradient, torch 2.13, when mse.detach() is returned beside it)
        loss = mse + vq_loss if vq_loss.requires_grad else mse
        return loss, {"mse": mse.detach(), "psnr": -10 * torch.log10(mse.detach() / 4 + 1e-12),
                               "vq_loss": vq_loss.detach(), **stats}
