"""The frame-model interface: how the dynamics model turns the shared causal backbone into frames.

`Dynamics` (models/dynamics.py) owns what every frame model shares: the ST-transformer backbone,
the positions, the noise-level and action conditioning and the KV caches. It holds exactly one
frame model, `dynamics.frame`, chosen by the config's `frame_model` from `FRAME_MODELS`
(models/dynamics.py), and passes it the backbone as a function, `run` (`Dynamics.run`):

    run(tokens (b, t, s, d), levels (b, t), actions (b, t) | None, start=0, caches=None, commit=False)
        -> backbone output (b, t, s, d), causal across frames

The frame model owns everything that depends on what a frame is made of:

* construction: `__init__(cfg, build_shared)` creates the frame model's layers and calls
  `build_shared()` exactly once, where the shared layers are created relative to its own (the
  order fixes the initial weights drawn from a seed, so it is kept as it was). The frame model
  is registered after the shared layers, so `parameters()` lists its weights last. Weights that
  older versions kept on the Dynamics itself are listed in `moved_from_dynamics` and renamed
  into `frame.` when a checkpoint is loaded;
* what it reads and writes: `check_tokenizer(tokenizer)`, `inputs_from_video(tokenizer, video)`
  (what the dynamics observes of a video, and the normalised latents the decoder gets for it),
  `to_latents(tokenizer, out)` (a generated frame -> normalised latents) and
  `tokenizer_overrides(cfg)` (the tokenizer settings it needs). Defaults: normalised latents
  (b, t, s, c) in and out, any tokenizer of the same latent_dim. A frame model of VQ code
  indices names the config key of its codebook size in `codebook_key`; the dynamics stage
  sets it from the latent cache (and refuses a cache without codes);
* the network: `embed(inputs)` (inputs -> backbone tokens) and `forward(run, ...)`, its output
  over a clip (its own signature, see each model);
* training: `training_loss(run, batch) -> (loss, metrics)`;
* sampling with KV caches: `observe(run, state, inputs, actions, context_level, generator)`
  appends known frames to the caches (default: latents held at the context noise level, see
  `context`), `generate_frame(run, state, actions, batch, device, **options)` samples the next
  frame and appends it, `generate_chunk(...)` samples several frames by a Diffusion-Forcing
  scheduling matrix (only models that denoise whole frames; the default refuses);
* history guidance (`guides_history = True`, forcing only): a rollout state made with
  `history_free=True` carries a second, history-free branch in the same caches: batch rows
  [b, 2b) hold the past as pure noise at the top level K (`history_free_context`), so the same
  network is also the model without a past (trained as one with the dynamics' `history_dropout`;
  per-frame levels alone almost never put a whole past at K). `observe` appends every known frame to both branches; the frame model runs
  both in one forward pass of 2b rows and combines them (see frame_forcing.py).

Frame models: `forcing` (models/frame_forcing.py; teacher forcing is its variant), `mar`
(models/frame_mar.py) and `maskgit` (models/frame_maskgit.py).

The frame model gets the backbone function and nothing else of the Dynamics: the noise schedule
(`self.diffusion`) and the null action / action dropout come from the config it is built with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from torch import nn

from driftless.diffusion.gaussian import GaussianDiffusion, randn

if TYPE_CHECKING:  # (dynamics imports this module)
    from driftless.models.dynamics import DynamicsConfig, RolloutState


BuildShared = Callable[[], None]  # creates the shared layers on the Dynamics (see FrameModel.__init__)


def no_shared_layers() -> None:
    """`build_shared` for a frame model built on its own (to try its parts without a Dynamics)."""


class Backbone(Protocol):
    """The shared backbone as the frame model calls it (`Dynamics.run`)."""

    def __call__(self, tokens: torch.Tensor, levels: torch.Tensor, actions: torch.Tensor | None, start: int = 0,
                 caches: list | None = None, commit: bool = False) -> torch.Tensor: ...


class FrameModel(nn.Module, ABC):
    """One way of modelling a frame on the shared backbone; see the module docstring."""

    name: ClassVar[str]
    teacher_forcing: ClassVar[bool] = False  # whether the config's `teacher_forcing` variant applies
    # reads VQ code indices: the config key of its codebook size, which training takes from the latent
    # cache (the VQ tokenizer's codebook); None: reads continuous latents, any cache will do
    codebook_key: ClassVar[str | None] = None
    moved_from_dynamics: ClassVar[tuple[str, ...]] = ()  # old top-level weight prefixes, now under `frame.`
    # its generate_frame has fixed shapes and no host synchronisation: a play session's frame can
    # be recorded as a CUDA graph (world/graphs.py)
    capturable: ClassVar[bool] = False
    # generate_frame(fused_commit=True): the last denoising pass appends the frame to the caches
    fuses_commit: ClassVar[bool] = False
    # samples with history guidance (`history_guidance` != 1, on a state with a history-free branch)
    guides_history: ClassVar[bool] = False

    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        self.cfg = cfg
        self.diffusion = GaussianDiffusion(cfg.diffusion)  # (plain object: no parameters, no buffers)

    # ---- what the dynamics reads and writes (default: normalised latents) -------------------------
    @classmethod
    def tokenizer_overrides(cls, cfg: DynamicsConfig) -> dict:
        """Tokenizer config fields this frame model needs (for building a matching tokenizer)."""
        return {}

    def check_tokenizer(self, tokenizer) -> None:
        """Raise ValueError unless this frame model can read and write through `tokenizer`."""
        if self.cfg.latent_dim != tokenizer.cfg.latent_dim:
            raise ValueError(f"dynamics latent_dim {self.cfg.latent_dim} != tokenizer latent_dim "
                             f"{tokenizer.cfg.latent_dim}")

    def inputs_from_video(self, tokenizer, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 video (b, t, h, w, 3) -> (what the dynamics observes, normalised latents (b, t, s, c)
        for the decoder)."""
        z = tokenizer.encode(video).float()  # (b, t, s, c)
        return z, z

    def to_latents(self, tokenizer, out: torch.Tensor) -> torch.Tensor:
        """A generated frame, as `generate_frame` returns it -> normalised latents (b, t, s, c)."""
        return out

    # ---- actions ---------------------------------------------------------------------------------
    @property
    def null_action(self) -> int:
        return self.cfg.num_actions

    def frame_actions(self, actions: torch.Tensor | None, b: int, t: int, device) -> torch.Tensor | None:
        """Transition actions (b, t-1) -> per-frame actions (b, t) with the null action first."""
        if not self.cfg.num_actions:
            return None
        null = torch.full((b, 1), self.null_action, dtype=torch.long, device=device)
        if actions is None:
            return null.expand(b, t)
        return torch.cat([null, actions.long()], dim=1)

    def training_actions(self, batch: dict, b: int, t: int, device) -> torch.Tensor | None:
        """Per-frame actions (b, t) of a training clip, with action dropout (for CFG)."""
        acts = self.frame_actions(batch.get("actions"), b, t, device)
        if acts is not None and self.cfg.action_dropout > 0:
            drop = torch.rand(acts.shape, device=device) < self.cfg.action_dropout
            acts = torch.where(drop, torch.full_like(acts, self.null_action), acts)
        return acts

    # ---- network and training ----------------------------------------------------------------------
    @abstractmethod
    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """What the dynamics observes (b, t, ...) -> backbone tokens (b, t, s, d), without positions."""

    @abstractmethod
    def training_loss(self, run: Backbone, batch: dict) -> tuple[torch.Tensor, dict]:
        """A training clip (`latents` (b, t, s, c), `actions` (b, t-1), `indices` (b, t, s) where
        the tokenizer is VQ) -> (scalar loss, detached metrics)."""

    # ---- sampling with KV caches ------------------------------------------------------------------------
    def context(self, inputs: torch.Tensor, context_level: int | None,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Known frames (b, n, s, c) -> (the frames as the caches hold them, their levels (b, n)):
        latents noised to the context level (default: the config's)."""
        level = self.cfg.diffusion.context_level if context_level is None else context_level
        b, n = inputs.shape[:2]
        levels = torch.full((b, n), level, dtype=torch.long, device=inputs.device)
        noise = randn(inputs.shape, inputs.device, generator)
        return self.diffusion.q_sample(inputs.float(), levels, noise), levels

    def history_free_context(self, inputs: torch.Tensor,
                             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Known frames (b, n, s, c) -> (the frames as the history-free branch holds them, their
        levels (b, n)): pure noise at the top level K. Diffusion Forcing draws each frame's level
        from [0, K] independently, so a past *all* at K is almost never seen in training (benchmarks
        1.7); the dynamics' `history_dropout` trains it. The frames' own trace at K (alpha_K * x0;
        alpha_K = 1e-3 for the sigmoid and cosine schedules) is left out, so the branch is exactly
        independent of them."""
        b, n = inputs.shape[:2]
        top = self.cfg.diffusion.levels
        levels = torch.full((b, n), top, dtype=torch.long, device=inputs.device)
        noise = randn(inputs.shape, inputs.device, generator)
        return self.diffusion.q_sample(torch.zeros_like(inputs, dtype=torch.float32), levels, noise), levels

    @torch.no_grad()
    def observe(self, run: Backbone, state: RolloutState, inputs: torch.Tensor, actions: torch.Tensor | None,
                context_level: int | None = None, generator: torch.Generator | None = None) -> None:
        """Append known frames (b, n, ...) to the caches; actions (b, n) into each frame, or None.
        A state with a history-free branch gets them in both (rows b.. as `history_free_context`,
        with the same actions)."""
        x, levels = self.context(inputs, context_level, generator)
        if state.history_free:
            free, free_levels = self.history_free_context(inputs, generator)
            x, levels = torch.cat([x, free]), torch.cat([levels, free_levels])  # (2b, n, ...), (2b, n)
            actions = None if actions is None else torch.cat([actions, actions])
        b, n = x.shape[:2]
        if self.cfg.num_actions and actions is None:
            actions = torch.full((b, n), self.null_action, dtype=torch.long, device=x.device)
        # frame by frame keeps the cache within the window for long prompts
        for i in range(n):
            a_i = None if actions is None else actions[:, i:i + 1]
            run(self.embed(x[:, i:i + 1]), levels[:, i:i + 1], a_i, start=state.position, caches=state.caches,
                commit=True)
            state.position += 1

    @abstractmethod
    def generate_frame(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, batch: int, device,
                       steps: int | None = None, cfg_scale: float = 1.0, eta: float | None = None,
                       context_level: int | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None, history_guidance: float = 1.0) -> torch.Tensor:
        """Sample the next frame given the cached past and its action (b, 1) int (None when
        unconditioned), append it to the caches and return it (b, 1, ...). Options a model has
        no use for are ignored (see `Dynamics.generate_frame`; history guidance is refused there
        for a model without `guides_history`)."""

    def generate_chunk(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, horizon: int,
                       batch: int, device, **options) -> torch.Tensor:
        """Sample `horizon` frames together by a Diffusion-Forcing scheduling matrix."""
        raise ValueError(f"scheduling-matrix rollouts denoise whole frames, which the {self.name!r} frame model "
                         f"does not (use schedule='autoregressive')")

