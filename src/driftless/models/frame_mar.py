"""MAR frame model (`frame_model="mar"`): the next frame is generated a set of tokens at a time,
in random order, each token drawn by a per-token diffusion head (MAR, Li et al., 2024), while
the shared ST backbone stays causal across frames (Diffusion Forcing for the history).

Training, per clip (b, t, s, c) of normalised latents:

* every frame gets its own Diffusion-Forcing level k_t (uniform in [0, K]); the frame's visible
  tokens are noised to k_t and k_t conditions the frame (adaLN), so history is corrupted as in
  Diffusion Forcing;
* every frame gets its own mask ratio r_t from a truncated normal on [mask_min, mask_max]
  (MAR: mean 1.0, std 0.25 on [0.7, 1.0]); ceil(r_t * s) of its tokens, chosen at random, are
  replaced by a learned mask token. With probability `clean_frame_prob` a frame is left fully
  visible instead (no loss on it): sampling conditions on fully visible history frames, and
  this keeps that case inside the training distribution;
* loss: the DiffLoss head on the clean targets of every masked token, conditioned on the
  backbone's output at that token.

Sampling one frame (KV-cached history, as the forcing model): all s tokens start masked; over
`steps` steps a cosine schedule (MAR) says how many stay masked after each step; the tokens
to reveal at each step are the next ones of a random order, each sampled by the head
(temperature, optional classifier-free guidance on the action with MAR's linear schedule).
Revealed tokens are held at the context noise level (fixed noise per frame), as history is;
the finished frame is committed to the caches at the context level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from driftless.diffusion.diffloss import DiffLoss, DiffLossConfig, linear_cfg_schedule
from driftless.models.frames import Backbone, BuildShared, FrameModel, no_shared_layers
from driftless.nn.masking import (
    cosine_mask_counts,
    keep_some_unmasked,
    random_masks,
    random_order,
    truncated_normal,
)

if TYPE_CHECKING:
    from driftless.models.dynamics import DynamicsConfig, RolloutState


@dataclass
class MARConfig:
    mask_min: float = 0.7  # training mask ratio: truncated normal on [mask_min, mask_max] (MAR)
    mask_max: float = 1.0
    mask_mean: float = 1.0
    mask_std: float = 0.25
    clean_frame_prob: float = 0.2  # a frame is fully visible (context only, no loss) this often
    steps: int = 16  # default unmasking steps per frame at inference (World's `steps` overrides)
    head_width: int = 256  # DiffLoss MLP (MAR: 3 x 1024; 256 is "already competitive")
    head_depth: int = 3
    head_freq_dim: int = 256
    noise_draws: int = 4  # (level, noise) draws per token per training step (MAR: 4)
    head_steps: int = 50  # the head's diffusion ladder at inference (MAR: 100)
    head_eta: float = 1.0  # 1 = DDPM ancestral sampling (MAR); the temperature scales its noise

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_min < self.mask_max <= 1.0:
            raise ValueError(f"MAR mask ratios need 0 <= mask_min < mask_max <= 1, got {self.mask_min}, "
                             f"{self.mask_max}")
        if not self.mask_std > 0:
            raise ValueError(f"MAR mask_std must be > 0, got {self.mask_std}")
        if not 0.0 <= self.clean_frame_prob < 1.0:
            raise ValueError(f"MAR clean_frame_prob must lie in [0, 1), got {self.clean_frame_prob}")
        for name in ("steps", "head_width", "noise_draws", "head_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"MAR {name} must be >= 1, got {getattr(self, name)}")

    def head_config(self, token_dim: int, cond_dim: int) -> DiffLossConfig:
        return DiffLossConfig(token_dim=token_dim, cond_dim=cond_dim, width=self.head_width, depth=self.head_depth,
                              freq_dim=self.head_freq_dim, noise_draws=self.noise_draws,
                              sampling_steps=self.head_steps, eta=self.head_eta)


class MARFrame(FrameModel):
    """Input embedding with a mask token, and the DiffLoss head, on the shared backbone."""

    name = "mar"

    def __init__(self, cfg: DynamicsConfig, build_shared: BuildShared = no_shared_layers):
        super().__init__(cfg)
        build_shared()  # (creation order: the shared layers first, then the frame model's)
        self.mar: MARConfig = cfg.mar
        d = cfg.backbone.dim
        self.latent_in = nn.Linear(cfg.latent_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.head = DiffLoss(self.mar.head_config(cfg.latent_dim, d))
        nn.init.xavier_uniform_(self.latent_in.weight)
        nn.init.zeros_(self.latent_in.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    # ---- network ---------------------------------------------------------------------------
    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.latent_in(inputs)  # (b, t, s, c) -> (b, t, s, d)

    def features(self, run: Backbone, xk: torch.Tensor, mask: torch.Tensor | None, levels: torch.Tensor,
                 actions: torch.Tensor | None, start: int = 0, caches=None, commit: bool = False) -> torch.Tensor:
        """xk: noisy latents (b, t, s, c); mask (b, t, s) bool (True = masked) or None; levels (b, t)
        -> per-token conditioning z (b, t, s, d) for the head. Causal across frames."""
        tokens = self.embed(xk)  # (b, t, s, d)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        return run(tokens, levels, actions, start=start, caches=caches, commit=commit)

    forward = features

    def sample_ratios(self, shape: tuple[int, ...], device, generator: torch.Generator | None = None) -> torch.Tensor:
        m = self.mar
        r = truncated_normal(shape, m.mask_mean, m.mask_std, m.mask_min, m.mask_max, device, generator)
        return keep_some_unmasked(r, m.clean_frame_prob, generator)

    # ---- training ----------------------------------------------------------------------------
    def training_loss(self, run: Backbone, batch: dict) -> tuple[torch.Tensor, dict]:
        x0 = batch["latents"].float()  # (b, t, s, c), normalised
        b, t, s = x0.shape[:3]
        acts = self.training_actions(batch, b, t, x0.device)
        levels = self.diffusion.sample_levels((b, t), x0.device, low=0)
        xk = self.diffusion.q_sample(x0, levels, torch.randn_like(x0))
        mask = random_masks(self.sample_ratios((b, t), x0.device), s)  # (b, t, s)
        z = self.features(run, xk, mask, levels, acts)
        loss = self.head.loss(x0, z, mask)
        return loss, {"diffloss": loss.detach(), "mask_ratio": mask.float().mean().detach()}

    # ---- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate_frame(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, batch: int, device,
                       steps: int | None = None, cfg_scale: float = 1.0, eta: float | None = None,
                       context_level: int | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None, history_guidance: float = 1.0) -> torch.Tensor:
        """-> the next frame's latents (b, 1, s, c): `steps` unmasking steps, the head's noise scaled
        by `temperature` (`eta` unused: the head samples with its `head_eta`; history guidance is not
        implemented here, `Dynamics` refuses it)."""
        cfg, b = self.cfg, batch
        s, c = cfg.tokens_per_frame, cfg.latent_dim
        steps = self.mar.steps if steps is None else int(steps)
        counts = cosine_mask_counts(s, steps)
        level = cfg.diffusion.context_level if context_level is None else context_level
        levels = torch.full((b, 1), level, dtype=torch.long, device=device)
        order = random_order((b,), s, device, generator)  # (b, s): a random order per session
        noise = torch.randn((b, 1, s, c), generator=generator, device=device)  # fixed for this frame
        x = torch.zeros((b, 1, s, c), device=device)
        known = torch.zeros((b, 1, s), dtype=torch.bool, device=device)
        acts = None if actions is None else actions.reshape(b, 1)
        guided = cfg_scale != 1.0 and acts is not None
        null = torch.full_like(acts, self.null_action) if guided else None
        done = 0
        for i, still_masked in enumerate(counts):
            xk = self.diffusion.q_sample(x, levels, noise)
            z = self.features(run, xk, ~known, levels, acts, start=state.position, caches=state.caches)[:, 0]
            sel = order[:, done:s - still_masked]  # (b, n_i): this step's tokens
            gather = sel.unsqueeze(-1)
            z_sel = torch.gather(z, 1, gather.expand(-1, -1, z.shape[-1]))  # (b, n_i, d)
            kw = {}
            if guided:
                z_u = self.features(run, xk, ~known, levels, null, start=state.position, caches=state.caches)[:, 0]
                kw = {"cfg_scale": linear_cfg_schedule(i, len(counts), cfg_scale, revealed=(s - still_masked) / s),
                      "z_uncond": torch.gather(z_u, 1, gather.expand(-1, -1, z_u.shape[-1]))}
            tok = self.head.sample(z_sel, temperature=temperature, generator=generator, **kw)  # (b, n_i, c)
            x[:, 0].scatter_(1, gather.expand(-1, -1, c), tok.to(x.dtype))
            known[:, 0].scatter_(1, sel, True)
            done = s - still_masked
        self.observe(run, state, x, acts, context_level=context_level, generator=generator)
        return x
