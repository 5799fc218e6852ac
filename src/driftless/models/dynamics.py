"""Dynamics: a causal ST-transformer over the tokenizer's frames, trained with Diffusion Forcing
(or masked modelling), conditioned on actions, sampled frame by frame with KV caches.

The shared part lives here: the backbone, the positions, the per-frame conditioning and the KV
caches. Conditioning of frame t (all per frame, through adaLN): its noise level, and the action
of the transition into it, a_{t-1} (frame 0 and dropped actions get a "null" action, index
`num_actions`, used for classifier-free guidance). The action enters as a prepended token of the
frame (`token`, default) or as an embedding added to the per-frame conditioning (`additive`).
Actions come from the LAM (`lam`), from the data's true actions (`true`) or not at all (`none`).

Sampling one frame at a time uses per-layer KV caches of the temporal attention: a finished
frame is run once to append its keys/values (latents noised to the small context level), and
the window slides, so a rollout costs the same per frame however long it runs. The window is
the config's `context_window` frames, or fewer for one rollout (`new_state(window=...)`).

History guidance (`history_guidance` = w, 1 = off; forcing only): a rollout state made by
`new_state(history_guidance=w)` also carries the model without a past (the same network, its past
held at the top noise level K, in batch rows b.. of the same caches), and every denoising step
combines the two, out_free + w * (out_past - out_free); see models/frame_forcing.py.

How a frame is modelled is the frame model, `self.frame`, chosen by the config field
`frame_model` from `FRAME_MODELS` (the interface: models/frames.py):

* `forcing` (default): the backbone denoises the whole frame (DDIM over `steps`); teacher forcing
  (clean history, noisy next frame) is its `teacher_forcing` variant. models/frame_forcing.py.
* `mar`: masked autoregression within the frame with a per-token diffusion head (MAR);
  models/frame_mar.py. Latents in, latents out.
* `maskgit`: Genie's baseline over VQ code indices with cross-entropy; models/frame_maskgit.py.
  Code indices in (b, t, s) int64, code indices out.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import torch
from torch import nn

from driftless.diffusion.gaussian import DiffusionConfig
from driftless.diffusion.guidance import check_guidance_scale
from driftless.models.frame_forcing import ForcingFrame
from driftless.models.frame_mar import MARConfig, MARFrame
from driftless.models.frame_maskgit import MaskGITConfig, MaskGITFrame
from driftless.models.frames import FrameModel
from driftless.nn.attention import KVCache
from driftless.nn.embeddings import ScalarEmbedding, sincos_2d
from driftless.nn.st_transformer import STConfig, STTransformer

ACTION_SOURCES = ("lam", "true", "none")
CONDITIONINGS = ("token", "additive")
FRAME_MODELS: dict[str, type[FrameModel]] = {"forcing": ForcingFrame, "mar": MARFrame, "maskgit": MaskGITFrame}


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
    # probability per training clip that every frame before a random frame is at the top noise
    # level K - the past dropped, as history guidance's history-free branch holds it (the
    # forcing frame model; benchmarks 1.7: without it that branch is a past never trained on)
    history_dropout: float = 0.0
    # probability per training clip that every frame before a random frame is nearly clean (a level
    # drawn in [0, clean_history_level]), as the past is held at play (the context level); plain
    # Diffusion Forcing draws every frame's level uniformly in [0, K], so a clean past is rare in
    # training (P(level <= 15) = 1.5 % per frame) and the model copies unchanged detail poorly
    # (benchmarks 2.5). The forcing frame model only.
    clean_history: float = 0.0
    clean_history_level: int = 100
    # forcing: a token's loss weighted 1 + motion_weight * (its change from the previous frame,
    # over the mean change of the frame's tokens): the tokens a move shifts count more than the
    # still background. Added against worlds that move the scene a fraction of what the game does
    # under the same actions (benchmarks 2.18). 0 = plain Diffusion Forcing.
    motion_weight: float = 0.0
    frame_model: str = "forcing"  # a key of FRAME_MODELS: forcing | mar | maskgit (module docstring)
    clip_len: int = 16  # training clip length
    context_window: int = 16  # frames attended at inference (sliding window)
    mar: MARConfig = field(default_factory=MARConfig)  # read by frame_model="mar" only
    maskgit: MaskGITConfig = field(default_factory=MaskGITConfig)  # read by frame_model="maskgit" only

    def __post_init__(self) -> None:
        if self.action_source not in ACTION_SOURCES:
            raise ValueError(f"action_source must be one of {ACTION_SOURCES}, got {self.action_source!r}")
        if self.action_conditioning not in CONDITIONINGS:
            raise ValueError(f"action_conditioning must be one of {CONDITIONINGS}, got {self.action_conditioning!r}")
        if self.frame_model not in FRAME_MODELS:
            raise ValueError(f"frame_model must be one of {tuple(FRAME_MODELS)}, got {self.frame_model!r}")
        if self.teacher_forcing and not FRAME_MODELS[self.frame_model].teacher_forcing:
            variant_of = [name for name, frame in FRAME_MODELS.items() if frame.teacher_forcing]
            raise ValueError(f"teacher_forcing is a variant of frame_model={' or '.join(map(repr, variant_of))}, "
                             f"not of {self.frame_model!r}")
        if not 0.0 <= self.history_dropout <= 1.0:
            raise ValueError(f"history_dropout is a probability in [0, 1], got {self.history_dropout}")
        if self.history_dropout and self.frame_model != "forcing":
            raise ValueError(f"history_dropout is trained by frame_model='forcing' only, not {self.frame_model!r}")
        if not 0.0 <= self.clean_history <= 1.0:
            raise ValueError(f"clean_history is a probability in [0, 1], got {self.clean_history}")
        if self.clean_history and self.frame_model != "forcing":
            raise ValueError(f"clean_history is trained by frame_model='forcing' only, not {self.frame_model!r}")
        if not 0 <= self.clean_history_level <= self.diffusion.levels:
            raise ValueError(f"clean_history_level is a noise level in [0, {self.diffusion.levels}], "
                             f"got {self.clean_history_level}")
        if self.motion_weight < 0:
            raise ValueError(f"motion_weight must be >= 0, got {self.motion_weight}")
        if self.motion_weight and self.frame_model != "forcing":
            raise ValueError(f"motion_weight is trained by frame_model='forcing' only, not {self.frame_model!r}")
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
                                                             adaln="shared", temporal_window=16),
                            diffusion=DiffusionConfig(sampling_steps=8)),
    "base": DynamicsConfig(latent_dim=16, backbone=STConfig(dim=384, depth=8, heads=6, cond_dim=384,
                                                            temporal_window=16),
                           diffusion=DiffusionConfig(sampling_steps=16)),
}


@dataclass
class RolloutState:
    """What a running rollout remembers: KV caches per layer and the next frame index."""

    caches: list[KVCache]
    position: int | torch.Tensor = 0  # a device counter with static caches
    window: int | None = None  # frames attended, the new one included (None: the config's context_window)
    # the caches hold a second, history-free branch in batch rows b.. (for history guidance)
    history_free: bool = False


class Dynamics(nn.Module):
    kind = "dynamics"

    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        self.cfg = cfg
        # the frame model creates its layers around the shared ones (it calls `_build_shared` once,
        # in the order that fixes the initial weights drawn from a seed)
        self.frame: FrameModel = FRAME_MODELS[cfg.frame_model](cfg, self._build_shared)
        self.register_load_state_dict_pre_hook(_moved_into_frame)

    def _build_shared(self) -> None:
        cfg = self.cfg
        d = cfg.backbone.dim
        self.register_buffer("pos", sincos_2d(cfg.grid[0], cfg.grid[1], d), persistent=False)
        self.level_emb = ScalarEmbedding(d, scale=1.0)
        if cfg.num_actions:
            self.action_emb = nn.Embedding(cfg.num_actions + 1, d)  # last index: null action
            nn.init.normal_(self.action_emb.weight, std=0.02)
        if cfg.action_conditioning == "token" or not cfg.num_actions:
            # the prepended token carries the action (or, unconditioned, a learned constant)
            self.action_token_bias = nn.Parameter(torch.zeros(d))
        self.backbone = STTransformer(cfg.backbone)

    @property
    def null_action(self) -> int:
        return self.cfg.num_actions

    # ---- network -----------------------------------------------------------------------------
    def forward(self, *args, **kwargs) -> torch.Tensor:
        """The frame model's network over a clip, on the shared backbone (`self.frame.forward`):
        forcing: noisy latents (b, t, s, c), levels (b, t), actions (b, t) -> the denoiser's output;
        mar: + a token mask -> the head's conditioning; maskgit: code indices, actions -> logits."""
        return self.frame(self.run, *args, **kwargs)

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
        return self.frame.frame_actions(actions, b, t, device)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.frame.training_loss(self.run, batch)

    # ---- frame-by-frame sampling with KV caches ---------------------------------------------
    def check_window(self, window: int | None) -> int:
        """The frames a rollout attends to (the new frame and the past it sees) for a requested
        `window` (None: the config's `context_window`, what the model was trained to attend to).
        Longer windows are refused: attention spans never seen in training are not more context,
        they are out of distribution (and the backbone's `temporal_window` caps them anyway)."""
        trained = self.cfg.context_window
        if window is None:
            return trained
        if isinstance(window, bool) or not isinstance(window, numbers.Integral) or not 1 <= window <= trained:
            raise ValueError(f"window must be an integer in [1, {trained}] frames (this dynamics model was trained "
                             f"to attend to {trained} frames, its context_window; a longer window was never seen "
                             f"in training), got {window!r}")
        return int(window)

    def new_state(self, static: bool = False, window: int | None = None,
                  history_guidance: float = 1.0) -> RolloutState:
        """A fresh rollout; `static`: KV caches and position on the device, for CUDA graphs
        (frames then go in one at a time); `window`: frames attended, the new one included
        (`check_window`; None: the config's context_window): the caches keep window - 1 past frames.
        `history_guidance` != 1: the state also carries the history-free branch that history
        guidance needs (twice the caches, and twice the rows in every forward pass, whatever scale
        the frames are then generated with)."""
        w = self.check_window(window)
        free = self._history_guidance(history_guidance) != 1.0
        caches = self.backbone.new_cache(static=static, window=w - 1)
        if static:
            return RolloutState(caches=caches, position=torch.zeros((), dtype=torch.long, device=self.pos.device),
                                window=w, history_free=free)
        return RolloutState(caches=caches, window=w, history_free=free)

    def _history_guidance(self, scale, state: RolloutState | None = None) -> float:
        """The history-guidance scale, checked: a number in [0, MAX_GUIDANCE], != 1 only for a frame
        model that guides on history and (given `state`) on a state with the history-free branch."""
        scale = check_guidance_scale("history_guidance", scale)
        if scale == 1.0:
            return scale
        if not self.frame.guides_history:
            guided = [name for name, frame in FRAME_MODELS.items() if frame.guides_history]
            raise ValueError(f"history_guidance is implemented for frame_model {' or '.join(map(repr, guided))}, "
                             f"not {self.cfg.frame_model!r}: leave it at 1")
        if state is not None and not state.history_free:
            raise ValueError("history_guidance != 1 needs the history-free branch from the start of the rollout: "
                             "make the state with new_state(history_guidance=...) (World: give history_guidance "
                             "to reset, or in the world's sampling defaults)")
        return scale

    @torch.no_grad()
    def observe(self, state: RolloutState, inputs: torch.Tensor, actions: torch.Tensor | None,
                context_level: int | None = None, generator: torch.Generator | None = None) -> None:
        """Append known frames to the caches: latents (b, n, s, c), held at the context noise level
        (maskgit: code indices (b, n, s), clean). actions: (b, n) per-frame actions into each frame,
        or None."""
        self.frame.observe(self.run, state, inputs, actions, context_level=context_level, generator=generator)

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
        history_guidance: float = 1.0,
        fused_commit: bool = False,
        cfg_steps: int | None = None,
    ) -> torch.Tensor:
        """Sample the next frame's latents (b, 1, s, c) given the cached past and its action
        (b,) int (or None when unconditioned), then append it to the caches.

        `steps` are DDIM steps (forcing), unmasking steps (mar) or MaskGIT steps (maskgit); the
        temperature scales the initial noise (forcing), the head's sampling noise (mar) or the
        softmax (maskgit); `eta` applies to forcing only (mar uses its head's `head_eta`).
        maskgit returns code indices (b, 1, s) (`self.frame.to_latents` turns them into latents).
        `history_guidance` (forcing; 1 = off) needs a state made with it (`new_state`); such a
        state samples its frames through both branches at any scale (1: the past's alone).
        `fused_commit` (forcing): the last denoising pass appends the frame to the caches, one pass
        fewer per frame, that pass started at `context_level` (models/frame_forcing.py).
        `cfg_steps` (forcing): guide only the first cfg_steps denoising steps (None: all)."""
        history_guidance = self._history_guidance(history_guidance, state)
        if cfg_steps is not None and not self.frame.fuses_commit:
            raise ValueError(f"cfg_steps needs a frame model that denoises whole frames (forcing), "
                             f"not {self.frame.name!r}")
        if fused_commit and not self.frame.fuses_commit:
            raise ValueError(f"fused_commit needs a frame model that denoises whole frames (forcing), "
                             f"not {self.frame.name!r}")
        if actions is not None:
            b, device = actions.shape[0], actions.device
            actions = actions.long().reshape(b, 1)
        else:
            b = batch or 1
        return self.frame.generate_frame(self.run, state, actions, b, device, steps=steps, cfg_scale=cfg_scale,
                                         eta=eta, context_level=context_level, temperature=temperature,
                                         generator=generator, history_guidance=history_guidance,
                                         **({"fused_commit": True} if fused_commit else {}),
                                         **({"cfg_steps": cfg_steps} if cfg_steps is not None else {}))

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
        history_guidance: float = 1.0,
    ) -> torch.Tensor:
        """Sample the next H frames together (b, H, s, c), following a Diffusion-Forcing
        scheduling matrix (`autoregressive`, `pyramid` with `uncertainty`, `full_sequence`)
        over the chunk while the cached past stays fixed; then append them to the caches.
        actions: (b, H) per-frame actions, or None when unconditioned (give `horizon`).
        Only frame models that denoise whole frames can (forcing). `history_guidance`: as in
        `generate_frame`."""
        history_guidance = self._history_guidance(history_guidance, state)
        if actions is not None:
            b, h, device = actions.shape[0], actions.shape[1], actions.device
            actions = actions.long()
        else:
            b, h = batch or 1, horizon
            if not h:
                raise ValueError("an unconditioned chunk needs `horizon`")
        window = state.window or self.cfg.context_window
        if h > window - 1:
            raise ValueError(f"a chunk of {h} frames does not fit the context window of {window}")
        return self.frame.generate_chunk(self.run, state, actions, h, b, device, schedule=schedule, steps=steps,
                                         uncertainty=uncertainty, cfg_scale=cfg_scale, eta=eta,
                                         context_level=context_level, temperature=temperature, generator=generator,
                                         history_guidance=history_guidance)


def _moved_into_frame(module: Dynamics, state_dict: dict, prefix: str, *args) -> None:
    """Load-time rename of weights saved before they moved into the frame model (the forcing
    model's `latent_in.*` / `latent_out.*` were top-level): old checkpoints and worlds load as
    they are."""
    for old in module.frame.moved_from_dynamics:
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + "frame." + key[len(prefix):]] = state_dict.pop(key)
