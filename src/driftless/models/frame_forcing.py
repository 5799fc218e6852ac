"""Forcing frame model (`frame_model="forcing"`, the default): the shared backbone denoises whole
frames of the tokenizer's continuous latents, trained with Diffusion Forcing.

Every frame of a training clip gets its own noise level k_t (0 = clean ... K = pure noise); the
model denoises all frames at once, frame t seeing only frames <= t. Teacher forcing (clean
history, noisy next frame) is the config's `teacher_forcing` flag of this model.

Sampling one frame: DDIM over `steps` from noise scaled by the temperature, with optional
classifier-free guidance on the action; the finished frame is appended to the caches at the
context noise level (`FrameModel.observe`). Several frames can be sampled together following a
Diffusion-Forcing scheduling matrix (`generate_chunk`: autoregressive, pyramid, full_sequence).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from driftless.diffusion.gaussian import NoiseTape, randn
from driftless.diffusion.scheduling import ladder, sample_matrix, schedule_matrix
from driftless.models.frames import Backbone, BuildShared, FrameModel, no_shared_layers

if TYPE_CHECKING:
    from driftless.models.dynamics import DynamicsConfig, RolloutState


class ForcingFrame(FrameModel):
    """Latents in through `latent_in`, the denoiser's output (the diffusion parametrisation) out
    through `latent_out`."""

    name = "forcing"
    teacher_forcing = True
    moved_from_dynamics = ("latent_in.", "latent_out.")  # top-level in Dynamics before the frame models
    capturable = True

    def __init__(self, cfg: DynamicsConfig, build_shared: BuildShared = no_shared_layers):
        super().__init__(cfg)
        d = cfg.backbone.dim
        # creation order as before the frame models existed (shipped worlds, seeded initial weights):
        # latent_in, the shared layers, latent_out, then the initialisation
        self.latent_in = nn.Linear(cfg.latent_dim, d)
        build_shared()
        self.latent_out = nn.Linear(d, cfg.latent_dim)
        nn.init.xavier_uniform_(self.latent_in.weight)
        nn.init.zeros_(self.latent_in.bias)
        nn.init.zeros_(self.latent_out.weight)  # starts by predicting zeros (DiT)
        nn.init.zeros_(self.latent_out.bias)

    # ---- network -----------------------------------------------------------------------------
    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.latent_in(inputs)  # (b, t, s, c) -> (b, t, s, d)

    def forward(self, run: Backbone, x: torch.Tensor, levels: torch.Tensor, actions: torch.Tensor | None,
                start: int = 0, caches: list | None = None, commit: bool = False) -> torch.Tensor:
        """x: noisy latents (b, t, s, c); levels: (b, t) in [0, K]; actions: (b, t) int, the action
        into each frame (null = num_actions) -> model output in the diffusion parametrisation."""
        return self.latent_out(run(self.embed(x), levels, actions, start, caches, commit))

    # ---- training ------------------------------------------------------------------------------
    def training_loss(self, run: Backbone, batch: dict) -> tuple[torch.Tensor, dict]:
        x0 = batch["latents"].float()  # (b, t, s, c), normalised
        b, t = x0.shape[:2]
        acts = self.training_actions(batch, b, t, x0.device)
        if self.cfg.teacher_forcing:
            levels = torch.zeros(b, t, dtype=torch.long, device=x0.device)
            levels[:, -1] = self.diffusion.sample_levels((b,), x0.device)
        else:
            levels = self.diffusion.sample_levels((b, t), x0.device, low=0)
        noise = torch.randn_like(x0)
        xk = self.diffusion.q_sample(x0, levels, noise)
        out = self(run, xk, levels, acts)
        per_frame = self.diffusion.loss(out, x0, noise, levels)  # (b, t)
        loss = per_frame[:, -1].mean() if self.cfg.teacher_forcing else per_frame.mean()
        return loss, {"diffusion_loss": loss.detach()}

    # ---- sampling ------------------------------------------------------------------------------
    def _ladder(self, steps: int, device) -> torch.Tensor:
        """The DDIM levels (steps + 1,) on `device`, made once per (steps, device): a frame then
        needs no host-to-device copy (and can be captured as a CUDA graph)."""
        key = (steps, str(device))
        cache = self.__dict__.setdefault("_ladders", {})
        if key not in cache:
            cache[key] = ladder(self.cfg.diffusion.levels, steps).to(device)
        return cache[key]

    def _denoise_fn(self, run: Backbone, actions: torch.Tensor | None, state: RolloutState, cfg_scale: float):
        def denoise(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
            out = self(run, x, levels, actions, start=state.position, caches=state.caches)
            if cfg_scale != 1.0 and actions is not None:
                null = torch.full_like(actions, self.null_action)
                out_u = self(run, x, levels, null, start=state.position, caches=state.caches)
                out = out_u + cfg_scale * (out - out_u)
            return out

        return denoise

    @torch.no_grad()
    def generate_frame(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, batch: int, device,
                       steps: int | None = None, cfg_scale: float = 1.0, eta: float | None = None,
                       context_level: int | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """-> the next frame's latents (b, 1, s, c): `steps` DDIM steps (eta), from noise scaled by
        `temperature`; then appended to the caches."""
        x = self.sample(run, state, actions, batch, device, steps=steps, cfg_scale=cfg_scale, eta=eta,
                        temperature=temperature, generator=generator)
        self.observe(run, state, x, actions, context_level=context_level, generator=generator)
        return x

    @torch.no_grad()
    def sample(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, batch: int, device,
               steps: int | None = None, cfg_scale: float = 1.0, eta: float | None = None, temperature: float = 1.0,
               generator: torch.Generator | NoiseTape | None = None) -> torch.Tensor:
        """The next frame's latents (b, 1, s, c) from the cached past, not yet appended to the caches
        (`generate_frame` without its `observe`). Noise is drawn from `generator` in this order: the
        initial noise, then one draw per DDIM step when eta > 0."""
        cfg, b = self.cfg, batch
        steps = cfg.diffusion.sampling_steps if steps is None else steps
        shape = (b, 1, cfg.tokens_per_frame, cfg.latent_dim)
        x = randn(shape, device, generator) * temperature
        lad = self._ladder(steps, device)
        denoise = self._denoise_fn(run, actions, state, cfg_scale)
        for i in range(steps):
            k_now = lad[i].expand(b, 1)
            k_next = lad[i + 1].expand(b, 1)
            out = denoise(x, k_now)
            x0, eps = self.diffusion.predict(out, x, k_now)
            x = self.diffusion.ddim_step(x0, eps, k_next, k_now, eta=eta, generator=generator)
        return x

    @torch.no_grad()
    def generate_chunk(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, horizon: int,
                       batch: int, device, schedule: str = "pyramid", steps: int | None = None,
                       uncertainty: float = 1.0, cfg_scale: float = 1.0, eta: float | None = None,
                       context_level: int | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """-> the next `horizon` frames' latents (b, H, s, c), denoised together following the
        scheduling matrix `schedule` (see `Dynamics.generate_chunk`)."""
        cfg = self.cfg
        steps = cfg.diffusion.sampling_steps if steps is None else steps
        matrix = schedule_matrix(schedule, horizon, steps, cfg.diffusion.levels, uncertainty)
        x = torch.randn((batch, horizon, cfg.tokens_per_frame, cfg.latent_dim), device=device, generator=generator)
        x = sample_matrix(self._denoise_fn(run, actions, state, cfg_scale), self.diffusion, x * temperature, matrix,
                          eta=eta, generator=generator)
        self.observe(run, state, x, actions, context_level=context_level, generator=generator)
        return x
