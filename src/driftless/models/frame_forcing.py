"""Forcing frame model (`frame_model="forcing"`, the default): the shared backbone denoises whole
frames of the tokenizer's continuous latents, trained with Diffusion Forcing.

Every frame of a training clip gets its own noise level k_t (0 = clean ... K = pure noise); the
model denoises all frames at once, frame t seeing only frames <= t. Teacher forcing (clean
history, noisy next frame) is the config's `teacher_forcing` flag of this model. With the config's
`history_dropout` = p, a fraction p of the clips have their past dropped (`drop_history`), which
trains the history-free branch that history guidance asks for; with `clean_history` = q, a
fraction q have a nearly clean past (`clean_history`), the condition every frame of a rollout
is generated under.

Sampling one frame: DDIM over `steps` from noise scaled by the temperature, with optional
classifier-free guidance on the action; the finished frame is appended to the caches at the
context noise level (`FrameModel.observe`), one more backbone pass. With `fused_commit` the last
denoising pass appends instead: the DDIM ladder's last step starts at the context level (4 steps,
level 300: 1000, 767, 533, 300, 0), and that pass's input is the previous step's prediction of
the clean frame noised afresh to it (a DDPM-like last step), so the frame is held as a commit pass
holds it, and a frame costs `steps` passes instead of `steps` + 1 (one denoising pass per step is
needed: no CFG, no history guidance; at least 2 steps). Two variants measured worse in long
rollouts and were dropped: keeping the last pass's DDIM-path input (no fresh noise), and the even
ladder's last level (250) instead of the context level (benchmarks section 4). Several frames can
be sampled together following a Diffusion-Forcing scheduling matrix (`generate_chunk`:
autoregressive, pyramid, full_sequence).

History guidance (`history_guidance` = w, 1 = off; "History-guided video diffusion", Song et
al. 2025): on a rollout state with a history-free branch (`Dynamics.new_state(history_guidance=w)`)
every denoising call runs the frame twice in one forward pass of 2b rows, once on the past
(rows :b) and once on the past held at the top noise level K (rows b:, `history_free_context`),
and takes out = out_free + w * (out_past - out_free): w > 1 pulls the frame towards what the past
says. With CFG on the action as well (cfg_scale = s) each branch is first guided on the action
(a second 2b forward with the null action), then the two are combined:

    out = g_free + w * (g_past - g_free),   g_branch = out(branch, null) + s * (out(branch, a) - out(branch, null))

which is symmetric in the two guidances (the same as guiding on history first, then on the
action) and costs two forward passes of 2b rows per denoising step, against two of b for CFG alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from driftless.diffusion.gaussian import NoiseTape, randn
from driftless.diffusion.guidance import free_guidance
from driftless.diffusion.scheduling import ladder, sample_matrix, schedule_matrix
from driftless.models.frames import Backbone, BuildShared, FrameModel, no_shared_layers

if TYPE_CHECKING:
    from driftless.models.dynamics import DynamicsConfig, RolloutState


def _past_of_some_clips(levels: torch.Tensor, p: float) -> torch.Tensor | None:
    """levels (b, t) -> a mask (b, t): in a fraction `p` of the clips, every frame before a random
    frame 1..t-1 (None: no clip, t < 2 or p <= 0). Drawn on the device."""
    b, t = levels.shape
    if t < 2 or p <= 0:
        return None
    chosen = torch.rand(b, device=levels.device) < p  # (b,)
    cut = torch.randint(1, t, (b,), device=levels.device)  # frames [0, cut) of a chosen clip
    return chosen[:, None] & (torch.arange(t, device=levels.device)[None] < cut[:, None])  # (b, t)


def drop_history(levels: torch.Tensor, p: float, top: int) -> torch.Tensor:
    """levels (b, t) -> the same, except that in a fraction `p` of the clips every frame before a
    random frame 1..t-1 is at the top level `top`: a past that carries nothing, as the history-free
    branch of history guidance holds it (`FrameModel.history_free_context`). Drawn on the device."""
    past = _past_of_some_clips(levels, p)
    return levels if past is None else torch.where(past, torch.full_like(levels, top), levels)


def clean_history(levels: torch.Tensor, p: float, top: int) -> torch.Tensor:
    """levels (b, t) -> the same, except that in a fraction `p` of the clips every frame before a
    random frame 1..t-1 gets a level drawn uniformly in [0, top]: a nearly clean past, as a rollout
    holds it (the context level), under the frames still to be denoised. Drawn on the device."""
    past = _past_of_some_clips(levels, p)
    if past is None:
        return levels
    return torch.where(past, torch.randint(0, top + 1, levels.shape, device=levels.device, dtype=levels.dtype), levels)


def motion_weights(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """Clean latents (b, t, s, c) -> per-token loss weights (b, t, s): 1 + strength * the token's
    squared change from the previous frame over the mean of its frame's tokens (frame 0: 1). A
    frame that does not change at all keeps weight 1 everywhere."""
    change = torch.zeros(x0.shape[:3], device=x0.device)
    change[:, 1:] = (x0[:, 1:] - x0[:, :-1]).float().pow(2).mean(-1)  # (b, t-1, s)
    rel = change / change.mean(-1, keepdim=True).clamp(min=1e-6)
    return 1.0 + strength * rel


class ForcingFrame(FrameModel):
    """Latents in through `latent_in`, the denoiser's output (the diffusion parametrisation) out
    through `latent_out`."""

    name = "forcing"
    teacher_forcing = True
    moved_from_dynamics = ("latent_in.", "latent_out.")  # top-level in Dynamics before the frame models
    capturable = True
    fuses_commit = True
    guides_history = True

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
            if self.cfg.clean_history:
                levels = clean_history(levels, self.cfg.clean_history, self.cfg.clean_history_level)
        if self.cfg.history_dropout:
            levels = drop_history(levels, self.cfg.history_dropout, self.cfg.diffusion.levels)
        noise = torch.randn_like(x0)
        xk = self.diffusion.q_sample(x0, levels, noise)
        out = self(run, xk, levels, acts)
        weight = motion_weights(x0, self.cfg.motion_weight) if self.cfg.motion_weight else None
        per_frame = self.diffusion.loss(out, x0, noise, levels, weight)  # (b, t)
        loss = per_frame[:, -1].mean() if self.cfg.teacher_forcing else per_frame.mean()
        return loss, {"diffusion_loss": loss.detach()}

    # ---- sampling ------------------------------------------------------------------------------
    def _ladder(self, steps: int, device, last: int | None = None) -> torch.Tensor:
        """The DDIM levels (steps + 1,) on `device`, made once per (steps, device, last): a frame then
        needs no host-to-device copy (and can be captured as a CUDA graph). `last`: the last step
        starts there (fused_commit: the context level), the others evenly spaced above it."""
        key = (steps, str(device), last)
        cache = self.__dict__.setdefault("_ladders", {})
        if key not in cache:
            K = self.cfg.diffusion.levels
            if last is None:
                lad = ladder(K, steps)
            else:
                lad = torch.cat([torch.linspace(K, last, steps).round().long(), torch.zeros(1, dtype=torch.long)])
            cache[key] = lad.to(device)
        return cache[key]

    def _denoise_fn(self, run: Backbone, actions: torch.Tensor | None, state: RolloutState, cfg_scale: float,
                    history_guidance: float = 1.0):
        """denoise(x (b, t, s, c), levels (b, t)) -> the guided output (b, t, s, c) (module docstring)."""
        branches = 2 if state.history_free else 1  # rows :b see the past; rows b: its history-free branch
        null = torch.full_like(actions, self.null_action) if cfg_scale != 1.0 and actions is not None else None

        def net(x: torch.Tensor, levels: torch.Tensor, acts: torch.Tensor | None,
                commit: bool = False) -> tuple[torch.Tensor, ...]:
            if branches > 1:  # both branches in one pass: (2b, t, ...)
                x, levels = torch.cat([x, x]), torch.cat([levels, levels])
                acts = None if acts is None else torch.cat([acts, acts])
            out = self(run, x, levels, acts, start=state.position, caches=state.caches, commit=commit)
            return out.chunk(branches)  # (with the past[, history-free])

        def denoise(x: torch.Tensor, levels: torch.Tensor, commit: bool = False, guided: bool = True) -> torch.Tensor:
            # commit (fused_commit's last pass; one pass per step): the caches keep this pass's keys;
            # guided: False skips the action guidance in this step (cfg_steps)
            outs = net(x, levels, actions, commit)
            if null is not None and guided:  # CFG on the action, within each branch
                outs = [free_guidance(o, o_null, cfg_scale) for o, o_null in zip(outs, net(x, levels, null))]
            if branches == 1:
                return outs[0]
            return free_guidance(outs[0], outs[1], history_guidance)

        return denoise

    @torch.no_grad()
    def generate_frame(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, batch: int, device,
                       steps: int | None = None, cfg_scale: float = 1.0, eta: float | None = None,
                       context_level: int | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None, history_guidance: float = 1.0,
                       fused_commit: bool = False, cfg_steps: int | None = None) -> torch.Tensor:
        """-> the next frame's latents (b, 1, s, c): `steps` DDIM steps (eta), from noise scaled by
        `temperature`, guided by `history_guidance` on a state with a history-free branch; then
        appended to the caches: at `context_level` by one more pass, or with `fused_commit` by the
        last denoising pass, started at `context_level` (module docstring). `cfg_steps`: only the
        first cfg_steps denoising steps are guided by `cfg_scale` (None: all)."""
        steps = self.cfg.diffusion.sampling_steps if steps is None else steps
        if fused_commit:
            self.check_fused(cfg_scale, state, cfg_steps, steps)
        x = self.sample(run, state, actions, batch, device, steps=steps, cfg_scale=cfg_scale, eta=eta,
                        temperature=temperature, generator=generator, history_guidance=history_guidance,
                        commit_last=fused_commit, held_level=context_level, cfg_steps=cfg_steps)
        if not fused_commit:
            self.observe(run, state, x, actions, context_level=context_level, generator=generator)
        return x

    @staticmethod
    def guides_last_step(cfg_scale: float, cfg_steps: int | None, steps: int | None) -> bool:
        """Does action guidance run in the last denoising step (two passes there, so no fused_commit)?
        Yes unless cfg_scale is 1 or only the first cfg_steps < steps steps are guided."""
        return cfg_scale != 1.0 and (cfg_steps is None or steps is None or cfg_steps >= steps)

    @staticmethod
    def check_fused(cfg_scale: float, state: RolloutState, cfg_steps: int | None = None,
                    steps: int | None = None) -> None:
        """fused_commit needs one denoising pass in the last step (`sample` checks the steps): no
        history guidance, and action guidance only in steps before the last (cfg_steps < steps)."""
        if ForcingFrame.guides_last_step(cfg_scale, cfg_steps, steps) or state.history_free:
            raise ValueError("fused_commit keeps the keys of the last denoising pass, so it needs one pass in that "
                             "step: not with history guidance, nor cfg_scale != 1 unless cfg_steps < steps (turn "
                             "fused_commit off for those)")

    @torch.no_grad()
    def sample(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, batch: int, device,
               steps: int | None = None, cfg_scale: float = 1.0, eta: float | None = None, temperature: float = 1.0,
               generator: torch.Generator | NoiseTape | None = None, history_guidance: float = 1.0,
               commit_last: bool = False, held_level: int | None = None, last_input=None,
               cfg_steps: int | None = None) -> torch.Tensor:
        """The next frame's latents (b, 1, s, c) from the cached past, not yet appended to the caches
        (`generate_frame` without its `observe`). Noise is drawn from `generator` in this order: the
        initial noise, then one draw per DDIM step when eta > 0. `commit_last`: the last denoising
        pass appends the frame to the caches (fused_commit): that step starts at `held_level` (the
        context level; None: the model's), its input the previous step's clean prediction noised
        afresh (one more draw, before the last step's), or `last_input(x0, level, noise)` (the ONNX
        step graph puts a start frame there). `cfg_steps`: guide only steps 0..cfg_steps-1 (None: all)."""
        cfg, b = self.cfg, batch
        steps = cfg.diffusion.sampling_steps if steps is None else steps
        shape = (b, 1, cfg.tokens_per_frame, cfg.latent_dim)
        if commit_last and steps < 2:
            raise ValueError(f"fused_commit needs at least 2 steps (the frame is held as the one before the last "
                             f"predicts it), got {steps}")
        held = None
        if commit_last:
            held = cfg.diffusion.context_level if held_level is None else int(held_level)
            if not 0 <= held < cfg.diffusion.levels:
                raise ValueError(f"fused_commit holds frames at the context level, which must be in "
                                 f"[0, {cfg.diffusion.levels}), got {held}")
        x = randn(shape, device, generator) * temperature
        lad = self._ladder(steps, device, held)
        denoise = self._denoise_fn(run, actions, state, cfg_scale, history_guidance)
        x0 = x  # (the clean prediction, from the first step on)
        for i in range(steps):
            k_now = lad[i].expand(b, 1)
            k_next = lad[i + 1].expand(b, 1)
            last = commit_last and i == steps - 1
            if last:  # held like a commit pass holds a frame: its clean prediction, freshly noised
                fresh = randn(shape, device, generator)
                x = last_input(x0, k_now, fresh) if last_input else self.diffusion.q_sample(x0, k_now, fresh)
            out = denoise(x, k_now, commit=last, guided=cfg_steps is None or i < cfg_steps)
            x0, eps = self.diffusion.predict(out, x, k_now)
            x = self.diffusion.ddim_step(x0, eps, k_next, k_now, eta=eta, generator=generator)
        if commit_last:
            state.position += 1
        return x

    @torch.no_grad()
    def generate_chunk(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, horizon: int,
                       batch: int, device, schedule: str = "pyramid", steps: int | None = None,
                       uncertainty: float = 1.0, cfg_scale: float = 1.0, eta: float | None = None,
                       context_level: int | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None, history_guidance: float = 1.0) -> torch.Tensor:
        """-> the next `horizon` frames' latents (b, H, s, c), denoised together following the
        scheduling matrix `schedule` (see `Dynamics.generate_chunk`)."""
        cfg = self.cfg
        steps = cfg.diffusion.sampling_steps if steps is None else steps
        matrix = schedule_matrix(schedule, horizon, steps, cfg.diffusion.levels, uncertainty)
        x = torch.randn((batch, horizon, cfg.tokens_per_frame, cfg.latent_dim), device=device, generator=generator)
        denoise = self._denoise_fn(run, actions, state, cfg_scale, history_guidance)
        x = sample_matrix(denoise, self.diffusion, x * temperature, matrix, eta=eta, generator=generator)
        self.observe(run, state, x, actions, context_level=context_level, generator=generator)
        return x
