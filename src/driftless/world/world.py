"""World: a trained tokenizer + latent action model + dynamics model you can play.

    world = driftless.load("coinrun")          # shipped world, or a world folder
    world.reset(first_frames, seed=0)           # uint8 (..., T0, H, W, 3)
    frame = world.step(3)                       # -> uint8 (..., H, W, 3)
    video = world.rollout(first_frames, [3, 3, 1], seed=0)

A world folder holds `world.json` (sampler defaults, action map) and the `tokenizer/`, `lam/`
and `dynamics/` checkpoint folders. Sessions are batched (leading axis) and deterministic for a
seed: all sampling noise comes from one generator seeded at `reset`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from driftless.models.common import as_tensor, check_video
from driftless.models.registry import load_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class SamplingOptions:
    """Defaults for generating frames; every field can be overridden per call."""

    steps: int = 8  # per frame: DDIM steps (forcing), unmasking steps (mar), MaskGIT steps (maskgit)
    cfg_scale: float = 1.0  # classifier-free guidance on the action (1 = off)
    context_level: int | None = None  # noise level the past is held at (None: the model's default)
    eta: float = 0.0  # DDIM stochasticity (forcing only)
    window: int | None = None  # frames of context attended (None: the model's training window)
    temperature: float = 1.0  # initial noise scale (forcing), head noise (mar), softmax temperature (maskgit)

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

    def encode(self, frames) -> np.ndarray:
        """uint8 (..., T, H, W, 3) -> normalised latents float32 (..., T, tokens, channels)."""
        video, batched = self._video(frames, "frames")
        z = self.tokenizer.encode(video).float().cpu().numpy()
        return z if batched else z[0]

    def decode(self, latents) -> np.ndarray:
        """latents (..., T, tokens, channels) -> uint8 frames (..., T, H, W, 3)."""
        z = as_tensor(latents, "latents").float()
        s, c = self.tokenizer.cfg.tokens_per_frame, self.tokenizer.cfg.latent_dim
        if z.dim() not in (3, 4) or tuple(z.shape[-2:]) != (s, c):
            raise ValueError(f"latents must have shape (T, {s}, {c}) or (B, T, {s}, {c}), got {tuple(z.shape)}")
        batched = z.dim() == 4
        z = (z if batched else z.unsqueeze(0)).to(self.device)
        out = self.tokenizer.decode(z).cpu().numpy()
        return out if batched else out[0]

    def infer_actions(self, video) -> np.ndarray:
        """uint8 (..., T, H, W, 3) -> latent actions int64 (..., T-1), one per transition."""
        if self.lam is None:
            raise ValueError("this world has no latent action model")
        v, batched = self._video(video, "video", min_frames=2)
        acts = self.lam.infer_actions(v).cpu().numpy().astype(np.int64)
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
        a = as_tensor(np.asarray(action) if not isinstance(action, torch.Tensor) else action, "action")
        if a.dtype.is_floating_point or a.dtype == torch.bool:
            raise ValueError(f"actions must be integers in [0, {self.num_actions}), got dtype {a.dtype}")
        a = a.long().reshape(-1)
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

    def _reset(self, context, seed: int, actions, static: bool, **sampling) -> np.ndarray:
        self._need_dynamics()
        video, batched = self._video(context, "context")
        b, t0 = video.shape[:2]
        opts = self.sampling.updated(**sampling)
        window = opts.window or self.dynamics.cfg.context_window
        if t0 > window:
            video = video[:, -window:]
            t0 = window
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        dyn_in, z = self._dynamics_inputs(video)  # latents (b, t0, s, c) or code indices (b, t0, s)
        per_frame = None
        if self.dynamics.cfg.num_actions:
            if actions is not None:
                trans = self._transition_actions(actions, b, t0)
            elif t0 > 1 and self.lam is not None and self.dynamics.cfg.action_source == "lam":
                trans = self.lam.infer_actions(video)
            else:
                trans = None
            per_frame = self.dynamics.frame_actions(trans, b, t0, self.device)
        dyn_state = self.dynamics.new_state(static=True) if static else self.dynamics.new_state()
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
                                 dec_pos=dec_pos, last_frame=video[:, -1], static=static)
        self._session_opts = opts
        last = video[:, -1].cpu().numpy()
        return last if batched else last[0]

    def _decoder_window(self, window: int) -> int:
        return max(1, window - 1)

    def _transition_actions(self, actions, b: int, t0: int) -> torch.Tensor:
        a = as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions, "actions").long()
        a = a.reshape(b, -1) if a.dim() <= 1 and b == 1 else a
        if tuple(a.shape) != (b, t0 - 1):
            raise ValueError(f"context actions must have shape ({b}, {t0 - 1}), got {tuple(a.shape)}")
        if bool((a < 0).any()) or bool((a >= self.num_actions).any()):
            raise ValueError(f"actions must lie in [0, {self.num_actions})")
        return a.to(self.device)

    def end_session(self) -> None:
        """Forget the running session now (its KV caches are freed at once rather than at
        garbage collection); `step` then needs a new `reset`."""
        self._session = None

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
        opts = self._session_opts.updated(**sampling)
        a = self._actions(action, s.batch)
        if s.static and self.device.type == "cuda":
            frame = self._graph(s, opts, a)(a)
        else:
            frame = self._frame(s, opts, a)
        s.last_frame = frame
        out = frame.cpu().numpy()
        return out if s.batched else out[0]

    def _frame(self, s: _Session, opts: SamplingOptions, a: torch.Tensor | None) -> torch.Tensor:
        """One frame of the session for actions `a` (b,): sample, extend the caches, decode ->
        uint8 (b, h, w, 3) on the device."""
        z = self._latents(self.dynamics.generate_frame(
            s.dyn_state, a, steps=opts.steps, cfg_scale=opts.cfg_scale, eta=opts.eta,
            context_level=opts.context_level, temperature=opts.temperature, generator=s.generator,
            batch=s.batch, device=self.device))
        window = opts.window or self.dynamics.cfg.context_window
        frame = self.tokenizer.decode_step(z, s.dec_caches, s.dec_pos, window=self._decoder_window(window))[:, 0]
        s.dec_pos += 1  # (in place for a device counter)
        return frame

    def _graph(self, s: _Session, opts: SamplingOptions, a: torch.Tensor | None):
        """The session's FrameGraph for these sampling options (a new one when they change)."""
        from driftless.world.graphs import FrameGraph

        key = (opts, a is None)
        if s.graph is None or s.graph.key != key:
            action = torch.zeros(s.batch, dtype=torch.long, device=self.device) if a is not None else None
            s.graph = FrameGraph(lambda: self._frame(s, opts, action), action, s.generator, self.device)
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
        video, batched = self._video(context, "context")
        acts = None
        if self.dynamics.cfg.num_actions:
            acts = as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions, "actions")
            acts = acts if batched else acts.unsqueeze(0)
            if acts.dim() != 2 or acts.shape[0] != video.shape[0]:
                raise ValueError(f"actions must have shape (N,) or (B, N) matching the context batch "
                                 f"{video.shape[0]}, got {tuple(acts.shape)}")
            n = acts.shape[1]
        else:
            n = int(actions) if np.isscalar(actions) else len(actions)
        # scheduling-matrix chunks attend several frames at once: not with static caches
        self._reset(video, seed, context_actions, static=self._graphs_on() and schedule == "autoregressive",
                    **sampling)
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
                temperature=opts.temperature, generator=s.generator, batch=s.batch, device=self.device, horizon=h)
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


def _load_component(path: Path, meta: dict, kind: str, device):
    name = meta.get(kind, kind)
    if name is None or not (path / name / "config.json").exists():
        return None
    return load_model(path / name, device, kind=kind)


def load(name_or_path: str | Path = "coinrun", device="cpu", threads: int | None = None,
         cuda_graphs: bool | None = None) -> World:
    """Load a world folder (or the shipped world by name, or a lone tokenizer checkpoint).
    `cuda_graphs`: see `World` (default: on with CUDA)."""
    path = Path(name_or_path)
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
