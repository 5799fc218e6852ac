"""World: a trained tokenizer + latent action model + dynamics model you can play.

    world = driftless.load("coinrun")          # shipped world, or a world folder
    world.reset(first_frames, seed=0)           # uint8 (..., T0, H, W, 3)
    frame = world.step(3)                       # -> uint8 (..., H, W, 3)
    video = world.rollout(first_frames, [3, 3, 1], seed=0)

A world folder holds `world.json` (sampler defaults, action map) and the `tokenizer/`, `lam/`
and `dynamics/` checkpoint folders. Sessions are batched (leading axis) and deterministic for a
seed: all sampling noise comes from one generator seeded at `reset`.

Every input is checked on the host before anything runs on the device: frames, actions and
sampling options (finite, in range) give a ValueError saying what was expected, and a batch of
sessions that would not fit the device's free memory is refused up front (`session_bytes`).
A frame whose latents come out non-finite raises `NonFiniteError` and ends the session, instead of
turning every later frame black. Stateless calls (`encode`, `decode`, `infer_actions`) run large
batches in chunks of at most `CHUNK_FRAMES` frames.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from driftless import checkpoint, runtime
from driftless.diffusion.guidance import MAX_GUIDANCE  # the guidance scales' bound, shared with the dynamics
from driftless.models.common import as_int_tensor, as_tensor, check_video
from driftless.models.registry import load_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MAX_STEPS = 1000  # sampling steps per frame; more than the diffusion levels adds nothing
MAX_TEMPERATURE = 100.0  # a noise or softmax scale beyond this gives noise, then overflow
CHUNK_FRAMES = 256  # frames of one chunk of encode / decode / infer_actions on a large batch
TRANSIENT_FACTOR = 1.25  # peak over KV caches: 15 MB per session over 13.9 MB of caches (shipped world, CPU)
MEMORY_HEADROOM = 0.8  # the share of free memory a batch of sessions may plan to use


class NonFiniteError(ValueError):
    """The model produced NaN or infinite values: the session that did is ended."""


def _check_number(name: str, value, lo: float, hi: float, integer: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"sampling option {name} must be {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}], "
                         f"got {type(value).__name__} {str(value)[:40]!r}")
    if not math.isfinite(float(value)) or not lo <= value <= hi:
        raise ValueError(f"sampling option {name} must be {'an integer' if integer else 'a finite number'} in "
                         f"[{lo:g}, {hi:g}], got {value!r}")


@dataclass
class SamplingOptions:
    """Defaults for generating frames; every field can be overridden per call."""

    steps: int = 8  # per frame: DDIM steps (forcing), unmasking steps (mar), MaskGIT steps (maskgit)
    cfg_scale: float = 1.0  # classifier-free guidance on the action (1 = off)
    # forcing: guide only the first cfg_steps denoising steps, the noisiest, where a frame's motion is
    # decided (None: every step). Fewer than steps leaves the last step one pass, so fused_commit works.
    # Frame by frame only: scheduling-matrix rollouts (`rollout(schedule=...)`) guide every step
    cfg_steps: int | None = None
    context_level: int | None = None  # noise level the past is held at (None: the model's default)
    eta: float = 0.0  # DDIM stochasticity (forcing only)
    # frames attended by the dynamics (the new one included) and kept at reset, at most the model's
    # training window (None: that window, the dynamics' context_window); fixed for a session
    window: int | None = None
    temperature: float = 1.0  # initial noise scale (forcing), head noise (mar), softmax temperature (maskgit)
    # history guidance (forcing; 1 = off): past-free + w * (past - past-free) per denoising step; a
    # session started with it runs the history-free branch too (models/frame_forcing.py)
    history_guidance: float = 1.0
    # forcing: the last denoising pass, started at context_level, appends the frame to the dynamics'
    # caches: one backbone pass fewer per frame (models/frame_forcing.py). Needs cfg_scale 1, no
    # history guidance and 2 steps or more.
    fused_commit: bool = False

    def __post_init__(self) -> None:
        """Finite and in range (a NaN temperature once turned every later frame of a session black)."""
        _check_number("steps", self.steps, 1, MAX_STEPS, integer=True)
        _check_number("cfg_scale", self.cfg_scale, 0.0, MAX_GUIDANCE)
        _check_number("eta", self.eta, 0.0, 1.0)
        _check_number("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        _check_number("history_guidance", self.history_guidance, 0.0, MAX_GUIDANCE)
        if self.context_level is not None:
            _check_number("context_level", self.context_level, 0, MAX_STEPS * 1000, integer=True)
        if self.window is not None:
            _check_number("window", self.window, 1, 1 << 20, integer=True)
        if self.cfg_steps is not None:
            _check_number("cfg_steps", self.cfg_steps, 0, MAX_STEPS, integer=True)

    def updated(self, **kwargs) -> "SamplingOptions":
        unknown = sorted(set(kwargs) - set(asdict(self)))
        if unknown:
            raise ValueError(f"unknown sampling option(s) {unknown}; known: {sorted(asdict(self))}")
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


@dataclass
class _Session:
    batch: int
    batched: bool
    generator: torch.Generator
    dyn_state: object
    dec_caches: list
    dec_pos: int | torch.Tensor  # a device counter in CUDA-graph sessions
    last_frame: torch.Tensor  # (b, h, w, 3) uint8
    history: list = field(default_factory=list)
    static: bool = False  # static KV caches: steps may be replayed as a CUDA graph
    graph: object = None  # the FrameGraph of the current sampling options
    finite: torch.Tensor | None = None  # 0-d bool on the device: every latent generated so far was finite


class World:
    def __init__(self, tokenizer, lam, dynamics, meta: dict | None = None, device="cpu",
                 cuda_graphs: bool | None = None):
        """`cuda_graphs`: on a GPU, replay each `step` as a CUDA graph (world/graphs.py) where the
        frame model allows; None (default) = on with CUDA."""
        self.cuda_graphs = cuda_graphs
        self.tokenizer = tokenizer
        self.lam = lam
        self.dynamics = dynamics
        self.meta = dict(meta or {})
        self.device = torch.device(device)
        self.sampling = SamplingOptions(**self.meta.get("sampling", {}))
        self._session: _Session | None = None
        self._per_session_bytes: int | None = None  # measured on first need (session_bytes)
        if dynamics is not None:
            dynamics.frame.check_tokenizer(tokenizer)  # latent_dim; maskgit: a VQ tokenizer of its codebook

    # ---- properties -----------------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        if self.dynamics is not None and self.dynamics.cfg.num_actions:
            return self.dynamics.cfg.num_actions
        return self.lam.cfg.num_actions if self.lam is not None else 0

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.tokenizer.cfg.resolution)

    @property
    def action_map(self) -> dict:
        """Keyboard keys -> latent actions, learned from true actions (see `driftless world build`)."""
        return self.meta.get("action_map", {})

    # ---- encoder / decoder ---------------------------------------------------------------------
    def _video(self, frames, name: str, min_frames: int = 1) -> tuple[torch.Tensor, bool]:
        t = check_video(frames, self.resolution, name, min_frames)
        batched = t.dim() == 5
        t = t if batched else t.unsqueeze(0)
        return t.to(self.device), batched

    @staticmethod
    def _chunked(fn, x: torch.Tensor) -> torch.Tensor:
        """fn over a batch (b, t, ...) in chunks of whole items of at most CHUNK_FRAMES frames (one
        call when it fits), each result brought to the CPU: memory stays bounded for any batch."""
        b, t = x.shape[0], max(1, x.shape[1])
        items = max(1, CHUNK_FRAMES // t)
        if b <= items:
            return fn(x).cpu()
        return torch.cat([fn(x[i:i + items]).cpu() for i in range(0, b, items)])

    def encode(self, frames) -> np.ndarray:
        """uint8 (..., T, H, W, 3) -> normalised latents float32 (..., T, tokens, channels)."""
        video, batched = self._video(frames, "frames")
        z = self._chunked(lambda v: self.tokenizer.encode(v).float(), video).numpy()
        return z if batched else z[0]

    def decode(self, latents) -> np.ndarray:
        """latents (..., T, tokens, channels) -> uint8 frames (..., T, H, W, 3)."""
        z = as_tensor(latents, "latents").float()
        s, c = self.tokenizer.cfg.tokens_per_frame, self.tokenizer.cfg.latent_dim
        if z.dim() not in (3, 4) or tuple(z.shape[-2:]) != (s, c):
            raise ValueError(f"latents must have shape (T, {s}, {c}) or (B, T, {s}, {c}), got {tuple(z.shape)}")
        if z.shape[-3] < 1 or (z.dim() == 4 and z.shape[0] < 1):
            raise ValueError(f"latents need at least one frame and one batch item, got shape {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            bad = int((~torch.isfinite(z)).sum())
            raise ValueError(f"latents must be finite: {bad} of {z.numel()} values are NaN or infinite")
        batched = z.dim() == 4
        z = z if batched else z.unsqueeze(0)
        out = self._chunked(lambda x: self.tokenizer.decode(x.to(self.device)), z).numpy()
        return out if batched else out[0]

    def infer_actions(self, video) -> np.ndarray:
        """uint8 (..., T, H, W, 3) -> latent actions int64 (..., T-1), one per transition."""
        if self.lam is None:
            raise ValueError("this world has no latent action model")
        v, batched = self._video(video, "video", min_frames=2)
        acts = self._chunked(self.lam.infer_actions, v).numpy().astype(np.int64)
        return acts if batched else acts[0]

    # ---- what the dynamics model reads and writes (its frame model decides) -----------------------
    def _dynamics_inputs(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (b, t, h, w, 3) -> (what the dynamics observes, normalised latents for the decoder):
        latents for both, or VQ code indices (b, t, s) and their code vectors for maskgit."""
        return self.dynamics.frame.inputs_from_video(self.tokenizer, video)

    def _latents(self, out: torch.Tensor) -> torch.Tensor:
        """The dynamics model's output -> normalised latents (b, t, s, c) for the decoder."""
        return self.dynamics.frame.to_latents(self.tokenizer, out)

    # ---- interactive session -------------------------------------------------------------------
    def _need_dynamics(self) -> None:
        if self.dynamics is None:
            raise ValueError("this world has only a tokenizer; reset/step/rollout need a dynamics model")

    def _actions(self, action, batch: int) -> torch.Tensor | None:
        if not self.dynamics.cfg.num_actions:
            if action is not None:
                raise ValueError("this world's dynamics model is unconditioned: pass action=None")
            return None
        a = as_int_tensor(action, "actions", f" in [0, {self.num_actions})").reshape(-1)
        if a.numel() == 1 and batch > 1:
            a = a.expand(batch)
        if a.numel() != batch:
            raise ValueError(f"expected {batch} action(s) (one per session in the batch), got {a.numel()}")
        if bool((a < 0).any()) or bool((a >= self.num_actions).any()):
            raise ValueError(f"actions must lie in [0, {self.num_actions}), got {a.tolist()}")
        return a.to(self.device)

    def _graphs_on(self) -> bool:
        return (self.device.type == "cuda" and self.cuda_graphs is not False and self.dynamics is not None
                and self.dynamics.frame.capturable)

    @torch.no_grad()
    def reset(self, context, seed: int = 0, actions=None, **sampling) -> np.ndarray:
        """Start a session from context frames uint8 (..., T0, H, W, 3); returns the last one.

        The context's own transitions are labelled with LAM-inferred actions unless `actions`
        (..., T0-1) are given. Sampling options given here become the session's defaults.
        """
        return self._reset(context, seed, actions, static=self._graphs_on(), **sampling)

    def _options(self, base: SamplingOptions, sampling: dict) -> SamplingOptions:
        """`base` updated by per-call options, checked (on the host, before anything is launched)."""
        opts = base.updated(**sampling)
        levels = getattr(getattr(self.dynamics.cfg, "diffusion", None), "levels", None)
        if opts.context_level is not None and levels is not None and opts.context_level > levels:
            raise ValueError(f"sampling option context_level must be in [0, {levels}], got {opts.context_level}")
        if opts.window is not None:
            try:
                self.dynamics.check_window(opts.window)
            except ValueError as e:
                raise ValueError(f"sampling option {e}") from None
        if opts.fused_commit:
            if not getattr(self.dynamics.frame, "fuses_commit", False):
                raise ValueError(f"sampling option fused_commit needs the forcing frame model, not "
                                 f"{self.dynamics.frame.name!r}")
            guided_last = self.dynamics.frame.guides_last_step(opts.cfg_scale, opts.cfg_steps, opts.steps)
            if guided_last or opts.history_guidance != 1.0:
                raise ValueError("sampling option fused_commit keeps the keys of the last denoising pass, so it needs "
                                 "one pass in that step: cfg_scale 1 or cfg_steps below steps, and history_guidance 1")
        if opts.cfg_steps is not None and not getattr(self.dynamics.frame, "fuses_commit", False):
            raise ValueError(f"sampling option cfg_steps needs the forcing frame model, not "
                             f"{self.dynamics.frame.name!r}")
        return opts

    def session_bytes(self, batch: int, frames: int = 1, extra_frames: int = 0) -> int:
        """Estimated peak memory of a session of `batch` items from `frames` context frames (plus
        `extra_frames` generated and returned, as by `rollout`): its KV caches, measured once on a
        batch of one, times TRANSIENT_FACTOR for the activations, plus the frames themselves."""
        if self._per_session_bytes is None:
            saved = self._session, getattr(self, "_session_opts", None)
            h, w = self.resolution
            try:
                self._reset(np.zeros((1, 1, h, w, 3), np.uint8), 0, None, static=False)
                self._per_session_bytes = _tensor_bytes(self._session.dyn_state, self._session.dec_caches)
            finally:
                self._session, self._session_opts = saved
        h, w = self.resolution
        window = self.sampling.window or self.dynamics.cfg.context_window
        pixels = h * w * 3
        return int(batch * (TRANSIENT_FACTOR * self._per_session_bytes + min(frames, window) * pixels * 4
                            + extra_frames * pixels * 2))

    def _check_memory(self, context, extra_frames: int = 0) -> None:
        """Refuse a batch of sessions that would not fit the device's free memory (before any work)."""
        shape = getattr(context, "shape", None)
        if shape is None or len(shape) != 5 or shape[0] <= 1:
            return  # one session: its size is the model's, whatever the input
        free = runtime.available_memory(self.device)
        if free is None:
            return
        b = int(shape[0])
        need = self.session_bytes(b, int(shape[1]), extra_frames)
        budget = MEMORY_HEADROOM * free
        if need > budget:
            each = need / b
            most = int(budget // each)
            raise ValueError(f"a batch of {b} sessions needs about {need / 1e9:.1f} GB ({each / 1e6:.1f} MB each) but "
                             f"{free / 1e9:.1f} GB of {self.device.type} memory is free; use batches of at most "
                             f"{most} (several calls)" if most >= 1 else
                             f"not even one session fits the {free / 1e9:.2f} GB of free {self.device.type} memory")

    def _reset(self, context, seed: int, actions, static: bool, extra_frames: int = 0, **sampling) -> np.ndarray:
        self._need_dynamics()
        opts = self._options(self.sampling, sampling)
        self._check_memory(context, extra_frames)
        video, batched = self._video(context, "context")
        self._drop_session()
        b, t0 = video.shape[:2]
        window = opts.window or self.dynamics.cfg.context_window
        if t0 > window:
            video = video[:, -window:]
            t0 = window
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        dyn_in, z = self._dynamics_inputs(video)  # latents (b, t0, s, c) or code indices (b, t0, s)
        per_frame = self._context_actions(video, actions)
        # caches of the window's size (arguments only where needed: a dynamics stand-in may take none)
        dyn_state = self.dynamics.new_state(**({"static": True} if static else {}),
                                            **({"window": opts.window} if opts.window is not None else {}),
                                            **_history(opts))
        self.dynamics.observe(dyn_state, dyn_in, per_frame, context_level=opts.context_level, generator=g)
        dec_caches = self.tokenizer.decoder.new_cache(static=True) if static else self.tokenizer.decoder.new_cache()
        if static:  # static caches take one frame at a time, at a device position
            dec_pos = torch.zeros((), dtype=torch.long, device=self.device)
            for i in range(t0):
                self.tokenizer.decode_step(z[:, i:i + 1], dec_caches, dec_pos, window=self._decoder_window(window))
                dec_pos += 1
        else:
            self.tokenizer.decode_step(z, dec_caches, 0, window=self._decoder_window(window))
            dec_pos = t0
        self._session = _Session(batch=b, batched=batched, generator=g, dyn_state=dyn_state, dec_caches=dec_caches,
                                 dec_pos=dec_pos, last_frame=video[:, -1], static=static,
                                 finite=torch.ones((), dtype=torch.bool, device=self.device))
        self._session_opts = opts
        last = video[:, -1].cpu().numpy()
        return last if batched else last[0]

    def _context_actions(self, video: torch.Tensor, actions) -> torch.Tensor | None:
        """Per-frame actions (b, t0) of context frames uint8 (b, t0, h, w, 3), the null action
        first: the given transitions `actions` (b, t0-1), else the LAM's (dynamics trained on
        them), else null throughout; None for a dynamics model without actions."""
        if not self.dynamics.cfg.num_actions:
            return None
        b, t0 = video.shape[:2]
        if actions is not None:
            trans = self._transition_actions(actions, b, t0)
        elif t0 > 1 and self.lam is not None and self.dynamics.cfg.action_source == "lam":
            trans = self.lam.infer_actions(video)
        else:
            trans = None
        return self.dynamics.frame_actions(trans, b, t0, self.device)

    def _decoder_window(self, window: int) -> int:
        return max(1, window - 1)

    def _transition_actions(self, actions, b: int, t0: int) -> torch.Tensor:
        a = as_int_tensor(actions, "context actions", f" in [0, {self.num_actions})")
        a = a.reshape(b, -1) if a.dim() <= 1 and b == 1 else a
        if tuple(a.shape) != (b, t0 - 1):
            raise ValueError(f"context actions must have shape ({b}, {t0 - 1}), got {tuple(a.shape)}")
        if bool((a < 0).any()) or bool((a >= self.num_actions).any()):
            raise ValueError(f"actions must lie in [0, {self.num_actions})")
        return a.to(self.device)

    def end_session(self) -> None:
        """Forget the running session now (its KV caches and CUDA graph are freed at once rather
        than at garbage collection); `step` then needs a new `reset`."""
        self._drop_session()

    def _drop_session(self) -> None:
        s, self._session = self._session, None
        if s is not None and s.graph is not None:
            s.graph.release()  # breaks the session <-> graph cycle (see world/graphs.py)
            s.graph = None

    @property
    def in_session(self) -> bool:
        return self._session is not None

    @torch.no_grad()
    def step(self, action=None, **sampling) -> np.ndarray:
        """Generate the next frame for `action` (int, or int array (B,)); uint8 (..., H, W, 3)."""
        self._need_dynamics()
        if self._session is None:
            raise ValueError("no session: call world.reset(context_frames) first")
        s = self._session
        opts = self._options(self._session_opts, sampling)
        if opts.window != self._session_opts.window:
            raise ValueError(f"sampling option window is fixed for a session (its KV caches are sized at reset): "
                             f"this one attends to {self._session_opts.window or self.dynamics.cfg.context_window} "
                             f"frames; pass window={opts.window} to reset instead")
        a = self._actions(action, s.batch)
        if s.static and self.device.type == "cuda":
            frame = self._graph(s, opts, a)(a)
        else:
            frame = self._frame(s, opts, a)
        s.last_frame = frame
        out = frame.cpu().numpy()
        if not bool(s.finite):  # (read after the frame: no extra wait for the device)
            self._nonfinite()
        return out if s.batched else out[0]

    def _nonfinite(self):
        self._drop_session()  # its caches hold the NaNs: every later frame would be broken too
        raise NonFiniteError("the model produced NaN or infinite latents, so this frame would be black; the "
                             "session was ended (call reset to start again). Likely causes: extreme sampling "
                             "options, or damaged or diverged weights")

    def _frame(self, s: _Session, opts: SamplingOptions, a: torch.Tensor | None) -> torch.Tensor:
        """One frame of the session for actions `a` (b,): sample, extend the caches, decode ->
        uint8 (b, h, w, 3) on the device."""
        z = self._latents(self.dynamics.generate_frame(
            s.dyn_state, a, steps=opts.steps, cfg_scale=opts.cfg_scale, eta=opts.eta,
            context_level=opts.context_level, temperature=opts.temperature, generator=s.generator,
            batch=s.batch, device=self.device, **_history(opts), **_fused(opts), **_cfg_steps(opts)))
        s.finite.logical_and_(torch.isfinite(z).all())  # on the device, in place: capturable, no sync
        window = opts.window or self.dynamics.cfg.context_window
        frame = self.tokenizer.decode_step(z, s.dec_caches, s.dec_pos, window=self._decoder_window(window))[:, 0]
        s.dec_pos += 1  # (in place for a device counter)
        return frame

    def _graph(self, s: _Session, opts: SamplingOptions, a: torch.Tensor | None):
        """The session's FrameGraph for these sampling options (a new one when they change)."""
        from driftless.world.graphs import FrameGraph

        key = (opts, a is None)
        if s.graph is None or s.graph.key != key:
            if s.graph is not None:
                s.graph.release()
            action = torch.zeros(s.batch, dtype=torch.long, device=self.device) if a is not None else None
            s.graph = FrameGraph(lambda: self._frame(s, opts, action), action, s.generator, self.device,
                                 on_new_generator=lambda g: setattr(s, "generator", g))
            s.graph.key = key
        return s.graph

    @torch.no_grad()
    def rollout(self, context, actions, seed: int = 0, progress: bool = False, context_actions=None,
                schedule: str = "autoregressive", chunk: int = 4, uncertainty: float = 1.0,
                **sampling) -> np.ndarray:
        """Context uint8 (..., T0, H, W, 3) and actions int (..., N) -> uint8 (..., T0+N, H, W, 3):
        the context frames followed by N generated ones. `context_actions` (..., T0-1) label the
        context's own transitions (default: inferred by the LAM).

        `schedule="autoregressive"` (default) finishes each frame before the next, with a KV cache;
        "pyramid" (later frames kept noisier by `uncertainty` rows each) and "full_sequence"
        denoise `chunk` frames together following a Diffusion-Forcing scheduling matrix, then
        slide on to the next chunk: unbounded either way."""
        self._need_dynamics()
        self._options(self.sampling, sampling)  # checked before anything runs
        video, batched = self._video(context, "context")
        acts = None
        if self.dynamics.cfg.num_actions:
            acts = as_int_tensor(actions, "actions", f" in [0, {self.num_actions})")
            acts = acts if batched else acts.unsqueeze(0)
            if acts.dim() != 2 or acts.shape[0] != video.shape[0]:
                raise ValueError(f"actions must have shape (N,) or (B, N) matching the context batch "
                                 f"{video.shape[0]}, got {tuple(acts.shape)}")
            n = acts.shape[1]
        else:
            n = int(actions) if np.isscalar(actions) else len(actions)
        # scheduling-matrix chunks attend several frames at once: not with static caches
        self._reset(video, seed, context_actions, static=self._graphs_on() and schedule == "autoregressive",
                    extra_frames=n, **sampling)
        frames = [video.cpu()]
        steps = range(n)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="rollout", unit="frame")
        if schedule == "autoregressive":
            for i in steps:
                f = self.step(None if acts is None else acts[:, i])
                frames.append(torch.from_numpy(f if f.ndim == 4 else f[None])[:, None])
        else:
            frames += self._rollout_chunks(acts, n, schedule, chunk, uncertainty, progress)
        out = torch.cat(frames, dim=1).numpy()
        return out if batched else out[0]

    def _rollout_chunks(self, acts, n: int, schedule: str, chunk: int, uncertainty: float, progress: bool) -> list:
        s, opts = self._session, self._session_opts
        window = opts.window or self.dynamics.cfg.context_window
        out, done = [], 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=f"rollout ({schedule})", unit="frame")
        while done < n:
            h = min(chunk, n - done)
            a = None if acts is None else self._chunk_actions(acts[:, done:done + h], s.batch)
            z = self.dynamics.generate_chunk(
                s.dyn_state, a, schedule=schedule, steps=opts.steps, uncertainty=uncertainty,
                cfg_scale=opts.cfg_scale, eta=opts.eta, context_level=opts.context_level,
                temperature=opts.temperature, generator=s.generator, batch=s.batch, device=self.device, horizon=h,
                **_history(opts))
            if not bool(torch.isfinite(z).all()):
                self._nonfinite()
            video = self.tokenizer.decode_step(z, s.dec_caches, s.dec_pos, window=self._decoder_window(window))
            s.dec_pos += h
            s.last_frame = video[:, -1]
            out.append(video.cpu())
            done += h
            if bar is not None:
                bar.update(h)
        if bar is not None:
            bar.close()
        return out

    def _chunk_actions(self, a, batch: int) -> torch.Tensor:
        a = torch.as_tensor(a).long()
        if bool((a < 0).any()) or bool((a >= self.num_actions).any()):
            raise ValueError(f"actions must lie in [0, {self.num_actions}), got {a.unique().tolist()}")
        return a.to(self.device)


def _fused(opts: SamplingOptions) -> dict:
    """The fused-commit option for the dynamics calls, given only when on."""
    return {"fused_commit": True} if opts.fused_commit else {}


def _cfg_steps(opts: SamplingOptions) -> dict:
    """The guided-steps option for the dynamics calls, given only when set (None = every step)."""
    return {"cfg_steps": opts.cfg_steps} if opts.cfg_steps is not None else {}


def _history(opts: SamplingOptions) -> dict:
    """The history-guidance option for the dynamics calls, given only when on (1 = off)."""
    return {"history_guidance": opts.history_guidance} if opts.history_guidance != 1.0 else {}


def _tensor_bytes(*objs) -> int:
    """Bytes of the tensors reachable from `objs` (lists, dicts, objects' attributes), each
    storage counted once."""
    seen, storages, total, stack = set(), set(), 0, list(objs)
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            if st.data_ptr() not in storages:
                storages.add(st.data_ptr())
                total += st.nbytes()
            continue
        if id(o) in seen or isinstance(o, (torch.nn.Module, type, str, bytes, int, float)) or o is None:
            continue
        seen.add(id(o))
        if isinstance(o, (list, tuple, set)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif hasattr(o, "__dict__"):
            stack.extend(vars(o).values())
    return total


def _load_component(path: Path, meta: dict, kind: str, device):
    name = meta.get(kind, kind)
    if name is None or checkpoint.find(path / name) is None:
        return None
    return load_model(path / name, device, kind=kind)


def load(name_or_path: str | Path = "coinrun", device="cpu", threads: int | None = None,
         cuda_graphs: bool | None = None) -> World:
    """Load a world folder (or the shipped world by name, or a lone tokenizer checkpoint).
    `cuda_graphs`: see `World` (default: on with CUDA)."""
    path = Path(name_or_path)
    # a crash between the two renames of a save leaves the previous copy at PATH.old (as --resume knows)
    for marker in ("world.json", "config.json"):
        if (checkpoint.recover(path, marker) / marker).exists():
            path = checkpoint.recover(path, marker)
            break
    if not path.exists():
        shipped = ASSETS / str(name_or_path)
        if shipped.exists():
            path = shipped
        else:
            names = sorted(p.name for p in ASSETS.iterdir() if p.is_dir()) if ASSETS.exists() else []
            raise FileNotFoundError(f"no world at {name_or_path!r}: not a folder, and not a shipped world "
                                    f"(shipped: {names})")
    if threads:
        torch.set_num_threads(threads)
    if (path / "config.json").exists():  # a bare checkpoint: must be a tokenizer
        return World(load_model(path, device, kind="tokenizer"), None, None, {}, device)
    meta_path = path / "world.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a world folder (no world.json) nor a checkpoint (no config.json)")
    meta = json.loads(meta_path.read_text())
    tok = _load_component(path, meta, "tokenizer", device)
    if tok is None:
        raise FileNotFoundError(f"{path} has no tokenizer checkpoint")
    lam = _load_component(path, meta, "lam", device)
    dyn = _load_component(path, meta, "dynamics", device)
    world = World(tok, lam, dyn, meta, device, cuda_graphs=cuda_graphs)
    world.path = path  # the world folder: the action map's preview strips live there
    return world
