"""Dynamics: a causal ST-transformer over the tokenizer's continuous latents, trained with
Diffusion Forcing.

Every frame of a training clip gets its own noise level k_t (0 = clean ... K = pure noise);
the model denoises all frames at once, frame t seeing only frames <= t. Teacher forcing (clean
history, noisy next frame) is the `teacher_forcing` flag of the same model.

Conditioning of frame t (all per frame, through adaLN): its noise level, and the action of the
transition into it, a_{t-1} (frame 0 and dropped actions get a "null" action, index
`num_actions`, used for classifier-free guidance). The action enters as a prepended token of the
frame (`token`, default) or as an embedding added to the per-frame conditioning (`additive`).
Actions come from the LAM (`lam`), from the data's true actions (`true`) or not at all (`none`).

Sampling one frame at a time uses per-layer KV caches of the temporal attention: a finished
frame is noised to the small context level, run once to append its keys/values, and the window
slides, so a rollout costs the same per frame however long it runs.

How a frame is modelled is the config field `frame_model` (backbone, action token, KV cache,
trainer and World API are shared):

* `forcing` (default): the backbone denoises the whole frame (DDIM over `steps`); this module.
* `mar`: masked autoregression within the frame with a per-token diffusion head (MAR);
  `driftless.models.frame_mar`. Latents in, latents out.
* `maskgit`: Genie's baseline over VQ code indices with cross-entropy; `frame_maskgit`.
  Code indices in (b, t, s) int64, code indices out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from driftless.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from driftless.models.frame_mar import MARConfig
from driftless.models.frame_maskgit import MaskGITConfig
from driftless.nn.attention import KVCache
from driftless.nn.embeddings import ScalarEmbedding, sincos_2d
from driftless.nn.st_transformer import STConfig, STTransformer

ACTION_SOURCES = ("lam", "true", "none")
CONDITIONINGS = ("token", "additive")
FRAME_MODELS = ("forcing", "mar", "maskgit")


@dataclass
class DynamicsConfig:
    latent_dim: int = 16
    grid: tuple[int, int] = (8, 8)
    backbone: STConfig = field(default_factory=lambda: STConfig(dim=256, depth=6, heads=4, cond_dim=256))
    num_actions: int = 8  # size of the action vocabulary (LAM codebook or true actions)
    action_source: str = "lam"  # lam | true | none
    action_conditioning: str = "token"  # token | additive
    action_dropout: float = 0.1  # probability of the null action in training (for CFG)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    teacher_forcing: bool = False
    frame_model: str = "forcing"  # forcing | mar | maskgit (see the module docstring)
    clip_len: int = 16  # training clip length
    context_window: int = 16  # frames attended at inference (sliding window)
    mar: MARConfig = field(default_factory=MARConfig)  # used when frame_model == "mar"
    maskgit: MaskGITConfig = field(default_factory=MaskGITConfig)  # used when frame_model == "maskgit"

    def __post_init__(self) -> None:
        if self.action_source not in ACTION_SOURCES:
            raise ValueError(f"action_source must be one of {ACTION_SOURCES}, got {self.action_source!r}")
        if self.action_conditioning not in CONDITIONINGS:
            raise ValueError(f"action_conditioning must be one of {CONDITIONINGS}, got {self.action_conditioning!r}")
        if self.frame_model not in FRAME_MODELS:
            raise ValueError(f"frame_model must be one of {FRAME_MODELS}, got {self.frame_model!r}")
        if self.teacher_forcing and self.frame_model != "forcing":
            raise ValueError(f"teacher_forcing is a variant of frame_model='forcing', not of {self.frame_model!r}")
        if self.action_source == "none":
            self.num_actions = 0
        if self.backbone.cond_dim != self.backbone.dim:
            raise ValueError("the dynamics backbone needs cond_dim == dim (per-frame conditioning)")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]


PRESETS: dict[str, DynamicsConfig] = {
    "debug": DynamicsConfig(latent_dim=4, backbone=STConfig(dim=32, depth=2, heads=2, cond_dim=32, adaln="shared"),
                            num_actions=4, clip_len=6, context_window=6,
                            diffusion=DiffusionConfig(sampling_steps=3),
                            mar=MARConfig(head_width=32, head_depth=2, head_freq_dim=32, steps=4, head_steps=10),
                            maskgit=MaskGITConfig(codebook_size=64, steps=4)),
    # ships inside the package (~4M parameters): plays in real time on a 2-core CPU
    "small": DynamicsConfig(latent_dim=16, backbone=STConfig(dim=208, depth=5, heads=4, cond_dim=208,
                                                             adaln="shared"),
                            diffusion=DiffusionConfig(sampling_steps=8)),
    "base": DynamicsConfig(latent_dim=16, backbone=STConfig(dim=384, depth=8, heads=6, cond_dim=384),
                           diffusion=DiffusionConfig(sampling_steps=16)),
}


@dataclass
class RolloutState:
    """What a running rollout remembers: KV caches per layer and the next frame index."""

    caches: list[KVCache]
    position: int = 0


class Dynamics(nn.Module):
    kind = "dynamics"

    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.backbone.dim
        self.diffusion = GaussianDiffusion(cfg.diffusion)
        forcing = cfg.frame_model == "forcing"
        if forcing:  # (parameter names and creation order of the forcing model are fixed: shipped worlds)
            self.latent_in = nn.Linear(cfg.latent_dim, d)
        self.register_buffer("pos", sincos_2d(cfg.grid[0], cfg.grid[1], d), persistent=False)
        self.level_emb = ScalarEmbedding(d, scale=1.0)
        if cfg.num_actions:
            self.action_emb = nn.Embedding(cfg.num_actions + 1, d)  # last index: null action
            nn.init.normal_(self.action_emb.weight, std=0.02)
        if cfg.action_conditioning == "token" or not cfg.num_actions:
            # the prepended token carries the action (or, unconditioned, a learned constant)
            self.action_token_bias = nn.Parameter(torch.zeros(d))
        self.backbone = STTransformer(cfg.backbone)
        self.frame = None  # the mar / maskgit frame model (its own input and output layers)
        if forcing:
            self.latent_out = nn.Linear(d, cfg.latent_dim)
            nn.init.xavier_uniform_(self.latent_in.weight)
            nn.init.zeros_(self.latent_in.bias)
            nn.init.zeros_(self.latent_out.weight)  # starts by predicting zeros (DiT)
            nn.init.zeros_(self.latent_out.bias)
        elif cfg.frame_model == "mar":
            from driftless.models.frame_mar import MARFrame

            self.frame = MARFrame(cfg)
        else:
            from driftless.models.frame_maskgit import MaskGITFrame

            self.frame = MaskGITFrame(cfg)

    @property
    def null_action(self) -> int:
        return self.cfg.num_actions

    # ---- network -----------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        levels: torch.Tensor,
        actions: torch.Tensor | None,
        start: int = 0,
        caches: list[KVCache] | None = None,
        commit: bool = False,
    ) -> torch.Tensor:
        """x: noisy latents (b, t, s, c); levels: (b, t) in [0, K]; actions: (b, t) int, the action
        into each frame (null = num_actions) -> model output in the diffusion parametrisation.
        (frame_model='forcing'; the mar / maskgit networks are `self.frame.features / logits`.)"""
        if self.frame is not None:
            raise ValueError(f"Dynamics.forward is the forcing denoiser; frame_model={self.cfg.frame_model!r} "
                             f"runs through dynamics.frame")
        return self.latent_out(self.run(self.latent_in(x), levels, actions, start, caches, commit))

    def run(
        self,
        tokens: torch.Tensor,
        levels: torch.Tensor,
        actions: torch.Tensor | None,
        start: int = 0,
        caches: list[KVCache] | None = None,
        commit: bool = False,
    ) -> torch.Tensor:
        """The shared backbone: embedded frame tokens (b, t, s, d) (without positions), per-frame
        levels (b, t) and actions (b, t) -> backbone output (b, t, s, d). Causal across frames."""
        cfg = self.cfg
        tokens = tokens + self.pos  # (b, t, s, d)
        cond = self.level_emb(levels.float() * (1000.0 / cfg.diffusion.levels))  # (b, t, d)
        act = None
        if cfg.num_actions:
            if actions is None:
                actions = torch.full(levels.shape, self.null_action, device=tokens.device, dtype=torch.long)
            act = self.action_emb(actions)  # (b, t, d)
        if cfg.action_conditioning == "token" or act is None:
            lead = self.action_token_bias.expand(tokens.shape[0], tokens.shape[1], -1)
            if act is not None:
                lead = lead + act
            tokens = torch.cat([lead.unsqueeze(2), tokens], dim=2)  # (b, t, 1+s, d)
        else:
            cond = cond + act
        window = cfg.context_window - 1 if caches is not None else None
        h = self.backbone(tokens, cond, start=start, caches=caches, commit=commit, window=window)
        if h.shape[2] != self.pos.shape[0]:
            h = h[:, :, 1:]  # drop the action token
        return h

    # ---- training ------------------------------------------------------------------------------
    def frame_actions(self, actions: torch.Tensor | None, b: int, t: int, device) -> torch.Tensor | None:
        """Transition actions (b, t-1) -> per-frame actions (b, t) with the null action first."""
        if not self.cfg.num_actions:
            return None
        null = torch.full((b, 1), self.null_action, dtype=torch.long, device=device)
        if actions is None:
            return null.expand(b, t)
        return torch.cat([null, actions.long()], dim=1)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        if self.frame is not None:
            return self.frame.training_loss(self, batch)
        x0 = batch["latents"].float()  # (b, t, s, c), normalised
        b, t = x0.shape[:2]
        acts = self.frame_actions(batch.get("actions"), b, t, x0.device)
        if acts is not None and self.cfg.action_dropout > 0:
            drop = torch.rand(acts.shape, device=x0.device) < self.cfg.action_dropout
            acts = torch.where(drop, torch.full_like(acts, self.null_action), acts)
        if self.cfg.teacher_forcing:
            levels = torch.zeros(b, t, dtype=torch.long, device=x0.device)
            levels[:, -1] = self.diffusion.sample_levels((b,), x0.device)
        else:
            levels = self.diffusion.sample_levels((b, t), x0.device, low=0)
        noise = torch.randn_like(x0)
        xk = self.diffusion.q_sample(x0, levels, noise)
        out = self(xk, levels, acts)
        per_frame = self.diffusion.loss(out, x0, noise, levels)  # (b, t)
        loss = per_frame[:, -1].mean() if self.cfg.teacher_forcing else per_frame.mean()
        return loss, {"diffusion_loss": loss.detach()}

    # ---- frame-by-frame sampling with KV caches ---------------------------------------------
    def new_state(self) -> RolloutState:
        return RolloutState(caches=self.backbone.new_cache())

    def _denoise_fn(self, actions: torch.Tensor | None, state: RolloutState, cfg_scale: float):
        def denoise(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
            out = self(x, levels, actions, start=state.position, caches=state.caches)
            if cfg_scale != 1.0 and actions is not None:
                null = torch.full_like(actions, self.null_action)
                out_u = self(x, levels, null, start=state.position, caches=state.caches)
                out = out_u + cfg_scale * (out - out_u)
            return out

        return denoise

    @torch.no_grad()
    def observe(self, state: RolloutState, latents: torch.Tensor, actions: torch.Tensor | None,
                context_level: int | None = None, generator: torch.Generator | None = None) -> None:
        """Append known frames (b, n, s, c) to the caches, held at the context noise level.
        actions: (b, n) per-frame actions into each frame, or None. (maskgit: code indices
        (b, n, s), clean.)"""
        if self.cfg.frame_model == "maskgit":
            return self.frame.observe(self, state, latents, actions)
        level = self.cfg.diffusion.context_level if context_level is None else context_level
        b, n = latents.shape[:2]
        levels = torch.full((b, n), level, dtype=torch.long, device=latents.device)
        noise = torch.randn(latents.shape, device=latents.device, generator=generator)
        xk = self.diffusion.q_sample(latents.float(), levels, noise)
        if self.cfg.num_actions and actions is None:
            actions = torch.full((b, n), self.null_action, dtype=torch.long, device=latents.device)
        # frame by frame keeps the cache within the window for long prompts
        for i in range(n):
            a_i = None if actions is None else actions[:, i:i + 1]
            if self.frame is None:
                self(xk[:, i:i + 1], levels[:, i:i + 1], a_i, start=state.position, caches=state.caches, commit=True)
            else:
                self.frame.features(self, xk[:, i:i + 1], None, levels[:, i:i + 1], a_i, start=state.position,
                                    caches=state.caches, commit=True)
            state.position += 1

    @torch.no_grad()
    def generate_frame(
        self,
        state: RolloutState,
        actions: torch.Tensor | None,
        steps: int | None = None,
        cfg_scale: float = 1.0,
        eta: float | None = None,
        context_level: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        batch: int | None = None,
        device=None,
    ) -> torch.Tensor:
        """Sample the next frame's latents (b, 1, s, c) given the cached past and its action
        (b,) int (or None when unconditioned), then append it to the caches.

        `steps` are DDIM steps (forcing), unmasking steps (mar) or MaskGIT steps (maskgit); the
        temperature scales the initial noise (forcing), the head's sampling noise (mar) or the
        softmax (maskgit); `eta` applies to forcing only (mar uses its head's `head_eta`).
        maskgit returns code indices (b, 1, s)."""
        from driftless.diffusion.scheduling import ladder

        cfg = self.cfg
        if actions is not None:
            b, device = actions.shape[0], actions.device
            actions = actions.long().reshape(b, 1)
        else:
            b = batch or 1
        if cfg.frame_model == "mar":
            return self.frame.generate(self, state, actions, steps, cfg_scale, context_level, temperature,
                                       generator, b, device)
        if cfg.frame_model == "maskgit":
            return self.frame.generate(self, state, actions, steps, cfg_scale, temperature, generator, b, device)
        steps = cfg.diffusion.sampling_steps if steps is None else steps
        shape = (b, 1, cfg.tokens_per_frame, cfg.latent_dim)
        x = torch.randn(shape, device=device, generator=generator) * temperature
        lad = ladder(cfg.diffusion.levels, steps).to(device)
        denoise = self._denoise_fn(actions, state, cfg_scale)
        for i in range(steps):
            k_now = lad[i].expand(b, 1)
            k_next = lad[i + 1].expand(b, 1)
            out = denoise(x, k_now)
            x0, eps = self.diffusion.predict(out, x, k_now)
            x = self.diffusion.ddim_step(x0, eps, k_next, k_now, eta=eta, generator=generator)
        self.observe(state, x, actions, context_level=context_level, generator=generator)
        return x

    @torch.no_grad()
    def generate_chunk(
        self,
        state: RolloutState,
        actions: torch.Tensor | None,
        schedule: str = "pyramid",
        steps: int | None = None,
        uncertainty: float = 1.0,
        cfg_scale: float = 1.0,
        eta: float | None = None,
        context_level: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        batch: int | None = None,
        device=None,
        horizon: int | None = None,
    ) -> torch.Tensor:
        """Sample the next H frames together (b, H, s, c), following a Diffusion-Forcing
        scheduling matrix (`autoregressive`, `pyramid` with `uncertainty`, `full_sequence`)
        over the chunk while the cached past stays fixed; then append them to the caches.
        actions: (b, H) per-frame actions, or None when unconditioned (give `horizon`)."""
        from driftless.diffusion.scheduling import sample_matrix, schedule_matrix

        cfg = self.cfg
        if cfg.frame_model != "forcing":
            raise ValueError(f"scheduling-matrix rollouts denoise whole frames: they need frame_model='forcing', "
                             f"this model is {cfg.frame_model!r} (use schedule='autoregressive')")
        steps = cfg.diffusion.sampling_steps if steps is None else steps
        if actions is not None:
            b, h, device = actions.shape[0], actions.shape[1], actions.device
            actions = actions.long()
        else:
            b, h = batch or 1, horizon
            if not h:
                raise ValueError("an unconditioned chunk needs `horizon`")
        if h > cfg.context_window - 1:
            raise ValueError(f"a chunk of {h} frames does not fit the context window of {cfg.context_window}")
        matrix = schedule_matrix(schedule, h, steps, cfg.diffusion.levels, uncertainty)
        x = torch.randn((b, h, cfg.tokens_per_frame, cfg.latent_dim), device=device, generator=generator)
        x = sample_matrix(self._denoise_fn(actions, state, cfg_scale), self.diffusion, x * temperature, matrix,
                          eta=eta, generator=generator)
        self.observe(state, x, actions, context_level=context_level, generator=generator)
        return x
