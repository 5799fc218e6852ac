"""Play sessions: one browser tab = one `PlaySession`, each with its own `World` state.

All sessions share the loaded modules (tokenizer, LAM, dynamics); a World object only holds
one session's KV caches and random generator, so each session gets its own light World built
from the shared modules. The blocking methods here (`start`, `restart`, `step`) run in the
server's inference thread pool; a per-session lock serialises them, so a session never runs
two model calls at once while different sessions can.

Starting frames come from `StartSources`: a Procgen CoinRun test-split level (levels
10500-10999, hard mode) generated on the fly when procgen is installed, a clip of a stored
dataset (`--data STORE`), or an uploaded image (validated in `media`).
"""

from __future__ import annotations

import importlib.util
import secrets
import struct
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from driftless.serve import media
from driftless.serve.media import ImageLimits

# binary frame message: kind, flags, height, width, action (-1: none), frame index, server ms
FRAME_HEADER = struct.Struct("<BBHHhIf")  # 16 bytes, little-endian
FRAME_KIND = 1
FLAG_START = 1  # the first frame after a (re)start
FLAG_RECORDING = 2  # the frame was recorded
TEST_LEVELS = (10500, 11000)  # the CoinRun test split (see driftless.data.coinrun.SPLITS)


@dataclass
class PlayConfig:
    """Server and session settings (every field is a `create_app` keyword)."""

    max_sessions: int = 4  # tabs playing at once; one more is told the server is full
    tick_fps: float = 15.0  # frames per second the page asks for while a key is held or idle
    denoise_steps: int | None = None  # sampling steps per frame (None: the world's default)
    window: int | None = None  # frames the dynamics attends to (None: the world's trained context window)
    context_frames: int = 4  # frames of a dataset clip used as the prompt
    max_upload_bytes: int = 4 * 1024 * 1024  # an uploaded PNG/JPEG, encoded
    max_upload_pixels: int = 16_000_000  # its width * height
    max_text_bytes: int = 4096  # a JSON control message
    max_record_frames: int = 1800  # 2 minutes at 15 FPS; recording stops there
    record_scale: int = 4  # nearest-neighbour scale of downloaded GIF/MP4
    idle_timeout_s: float = 900.0  # a tab that sends nothing for this long is disconnected
    inference_workers: int = 1  # threads running model calls (sessions in parallel)
    seed: int | None = None  # base seed for start frames and sampling (None: random)
    # names the server answers to besides localhost and IP addresses ("*": any); a DNS-rebinding page
    # reaches the server under its own name, which is refused (Host header checked on every request)
    allowed_hosts: tuple[str, ...] = ()
    send_timeout_s: float = 10.0  # a reply the client does not take within this ends its session
    ping_interval_s: float = 5.0  # the server pings every tab this often (WebSocket keepalive) ...
    ping_timeout_s: float = 10.0  # ... and drops one that does not answer within this
    max_pending_encodes: int = 2  # recording downloads encoding or waiting at once; more are told to retry
    # a `driftless export onnx` folder of this world: sessions play through ONNX Runtime on the CPU
    # (world/onnx_play.py) with onnx_threads threads per graph call; None: the PyTorch world
    onnx: str | None = None
    onnx_threads: int = 1

    def __post_init__(self) -> None:
        self.allowed_hosts = tuple(str(h).strip().lower() for h in (self.allowed_hosts or ()) if str(h).strip())
        for name in ("max_sessions", "context_frames", "max_upload_bytes", "max_upload_pixels", "max_text_bytes",
                     "max_record_frames", "record_scale", "inference_workers", "max_pending_encodes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)}")
        if not 0 < float(self.tick_fps) <= 240:
            raise ValueError(f"tick_fps must be in (0, 240], got {self.tick_fps}")
        if self.denoise_steps is not None and int(self.denoise_steps) < 1:
            raise ValueError(f"denoise_steps must be >= 1, got {self.denoise_steps}")
        if self.window is not None and int(self.window) < 1:
            raise ValueError(f"window must be >= 1 frame, got {self.window}")
        for name in ("idle_timeout_s", "send_timeout_s", "ping_interval_s", "ping_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def build(cls, base: PlayConfig | None = None, **options) -> PlayConfig:
        """`base` (default: every default) with `options` replaced; an unknown option is a ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown play option(s) {unknown}; known: {sorted(known)}")
        if base is not None and not options:
            return base
        return cls(**{**(asdict(base) if base is not None else {}), **options})

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=int(self.max_upload_bytes), max_pixels=int(self.max_upload_pixels))


class SessionsFull(RuntimeError):
    pass


class NoStartSource(ValueError):
    pass


def noop_action(action_map: dict) -> int:
    """The action played when no key is held: the map's ArrowDown / "none" group, else 0."""
    keys, groups = action_map.get("keys", {}) or {}, action_map.get("groups", {}) or {}
    for a in (keys.get("ArrowDown"), groups.get("none")):
        if isinstance(a, int) and not isinstance(a, bool):
            return a
    return 0


def resize_frames(frames: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
    """uint8 (T, h, w, 3) -> (T, H, W, 3) at the world's resolution (center crop + resize)."""
    from PIL import Image

    from driftless.serve.media import fit_to

    if tuple(frames.shape[1:3]) == tuple(resolution):
        return np.ascontiguousarray(frames)
    return np.stack([fit_to(Image.fromarray(f), resolution) for f in frames])


# ---------------------------------------------------------------------------------- sources
class LevelSource:
    """First frames of Procgen CoinRun test levels, made on the fly (procgen imported lazily)."""

    def __init__(self, mode: str = "hard"):
        self.mode = mode
        self._lock = threading.Lock()  # procgen env construction is not re-entrant
        self._error: str | None = None

    @property
    def available(self) -> bool:
        return self._error is None and importlib.util.find_spec("procgen") is not None

    @property
    def reason(self) -> str:
        if importlib.util.find_spec("procgen") is None:
            return 'Procgen is not installed (pip install "driftless[procgen]")'
        return self._error or ""

    def frame(self, level: int | None, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """-> (uint8 (1, 64, 64, 3), {"level": n}) for `level` (random test level if None)."""
        lo, hi = TEST_LEVELS
        level = int(rng.integers(lo, hi)) if level is None else int(level)
        if not lo <= level < hi:
            raise ValueError(f"level must be a CoinRun test level in [{lo}, {hi}), got {level}")
        if not self.available:
            raise NoStartSource(f"random test levels need Procgen: {self.reason}")
        from driftless.data.coinrun import import_procgen

        try:
            with self._lock:
                env_cls = import_procgen()
                env = env_cls(num=1, env_name="coinrun", start_level=level, num_levels=1,
                              distribution_mode=self.mode, rand_seed=int(rng.integers(2**31 - 1)), num_threads=0)
                _, obs, _ = env.observe()
                frame = np.array(obs["rgb"][:1], dtype=np.uint8)  # (1, 64, 64, 3)
                if hasattr(env, "close"):
                    env.close()
        except ImportError as e:
            self._error = str(e)
            raise NoStartSource(f"random test levels need Procgen: {e}") from e
        return frame, {"level": level, "mode": self.mode}

    def warm(self) -> None:
        """Construct one env so that the first player does not wait for procgen to load."""
        if self.available:
            try:
                self.frame(TEST_LEVELS[0], np.random.default_rng(0))
            except Exception as e:  # noqa: BLE001 - reported to players as "unavailable"
                self._error = f"Procgen failed to start: {e}"


class ClipSource:
    """Prompt clips from a stored dataset (`driftless data` store)."""

    def __init__(self, path: str | Path, context_frames: int = 4):
        from driftless.data.store import EpisodeStore

        self.path = Path(path)
        if not (self.path / "store.json").exists():
            raise FileNotFoundError(f"--data {self.path} is not an episode store (no store.json)")
        self.store = EpisodeStore(self.path)
        self.context = int(context_frames)
        lengths = self.store.episode_lengths
        self.episodes = np.nonzero(lengths >= 1)[0]
        if len(self.episodes) == 0:
            raise ValueError(f"the store at {self.path} holds no episodes")

    def clip(self, rng: np.random.Generator, episode: int | None = None) -> tuple[np.ndarray, dict]:
        ep = int(rng.choice(self.episodes)) if episode is None else int(episode)
        n = int(self.store.episode_lengths[ep])
        t = min(self.context, n)
        start = int(rng.integers(0, n - t + 1))
        frames = np.array(self.store.frames(ep, start, start + t), dtype=np.uint8)  # (t, H, W, 3)
        return frames, {"episode": ep, "start": start, "frames": t}


# ---------------------------------------------------------------------------------- sessions
class PlaySession:
    """One player's world state, prompt, frame counter and recording."""

    def __init__(self, sid: str, world, config: PlayConfig, seed: int):
        self.id = sid
        self.world = world
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()  # held during model calls
        self._rec_lock = threading.Lock()  # held only briefly, so the event loop never waits on a model call
        self.prompt: np.ndarray | None = None  # (T0, H, W, 3) the current start frames
        self.prompt_info: dict = {}
        self.frame: np.ndarray | None = None  # (H, W, 3) the frame on screen
        self.index = 0  # frames generated since the last (re)start
        self.total_steps = 0
        self.recording = False
        self.record_frames: list[np.ndarray] = []
        self.record_stopped_by_limit = False
        # the recording as a GIF, encoded as it is made (`encode_recording`, on the server's media thread)
        self.gif = media.GifWriter(config.tick_fps, config.record_scale)
        self.encode_scheduled = False  # an encode_recording call is queued (set and read on the event loop)
        self._mp4: tuple | None = None  # (writer, frames) -> the last MP4 made, for repeated downloads
        self.created = time.time()

    @property
    def started(self) -> bool:
        return self.prompt is not None

    def _sampling(self) -> dict:
        out = {"steps": int(self.config.denoise_steps)} if self.config.denoise_steps else {}
        if self.config.window:
            out["window"] = int(self.config.window)
        return out

    def _record(self, frame: np.ndarray) -> bool:
        with self._rec_lock:
            if not self.recording:
                return False
            if len(self.record_frames) >= self.config.max_record_frames:
                self.recording = False
                self.record_stopped_by_limit = True
                return False
            self.record_frames.append(frame)
            return True

    # the three blocking calls below run in the inference thread pool
    def start(self, prompt: np.ndarray, info: dict) -> tuple[np.ndarray, bool, float]:
        """Reset the world on prompt frames (T0, H, W, 3) -> (frame, recorded, ms)."""
        prompt = np.ascontiguousarray(prompt, dtype=np.uint8)
        if prompt.ndim != 4 or prompt.shape[1:] != (*self.world.resolution, 3):
            raise ValueError(f"prompt must be uint8 (T0, {self.world.resolution[0]}, {self.world.resolution[1]}, 3), "
                             f"got {prompt.shape}")
        with self.lock:
            t = time.perf_counter()
            frame = self.world.reset(prompt, seed=int(self.rng.integers(2**31 - 1)), **self._sampling())
            ms = (time.perf_counter() - t) * 1000
            self.prompt, self.prompt_info = prompt, dict(info)
            self.frame, self.index = np.ascontiguousarray(frame), 0
            return self.frame, self._record(self.frame), ms

    def restart(self) -> tuple[np.ndarray, bool, float]:
        if self.prompt is None:
            raise ValueError("nothing to restart: start from a level, a clip or an image first")
        return self.start(self.prompt, self.prompt_info)

    def step(self, action: int) -> tuple[np.ndarray, bool, float]:
        with self.lock:
            if self.prompt is None:
                raise ValueError("the session has not started: send a start message or upload an image first")
            t = time.perf_counter()
            frame = self.world.step(int(action))
            ms = (time.perf_counter() - t) * 1000
            self.frame = np.ascontiguousarray(frame)
            self.index += 1
            self.total_steps += 1
            return self.frame, self._record(self.frame), ms

    # recording (called from the event loop)
    def set_recording(self, on: bool) -> None:
        with self._rec_lock:
            if on and not self.recording:
                self.record_frames = [] if self.frame is None else [self.frame]
                self.record_stopped_by_limit = False
                self.gif = media.GifWriter(self.config.tick_fps, self.config.record_scale)  # a new recording
            self.recording = bool(on)

    def recorded(self) -> list[np.ndarray]:
        with self._rec_lock:
            return list(self.record_frames)

    # encoding (called on the server's one media thread, so never two at once)
    def encode_recording(self) -> tuple[media.GifWriter, list[np.ndarray]]:
        """Encode the recorded frames the GIF does not hold yet; -> (the GIF, the recorded frames)."""
        with self._rec_lock:
            gif, frames = self.gif, list(self.record_frames)
        gif.extend(frames[gif.added:])
        return gif, frames

    def recording_bytes(self, fmt: str) -> bytes:
        """The recording as GIF (mostly encoded already) or MP4 (encoded now, kept for a repeat)."""
        gif, frames = self.encode_recording()
        if not frames:
            raise ValueError("nothing recorded")
        if fmt == "gif":
            return gif.getvalue()
        key = (gif, len(frames))
        if self._mp4 is None or self._mp4[0] != key:
            self._mp4 = (key, media.encode_mp4(frames, self.config.tick_fps, self.config.record_scale))
        return self._mp4[1]

    def close(self) -> None:
        """Forget the world state and recording (a model call still running keeps its own references)."""
        with self._rec_lock:
            self.recording = False
            self.record_frames = []
            self.gif = media.GifWriter(self.config.tick_fps, self.config.record_scale)
            self._mp4 = None
        self.world.end_session()  # drop the KV caches now rather than at garbage collection
        self.prompt = self.frame = None


def pack_frame(frame: np.ndarray, index: int, action: int | None, ms: float, start: bool, recorded: bool) -> bytes:
    """A binary frame message: 16-byte header (FRAME_HEADER) + raw RGB bytes, row-major."""
    h, w = frame.shape[:2]
    flags = (FLAG_START if start else 0) | (FLAG_RECORDING if recorded else 0)
    head = FRAME_HEADER.pack(FRAME_KIND, flags, h, w, -1 if action is None else int(action),
                             int(index) & 0xFFFFFFFF, float(ms))
    return head + np.ascontiguousarray(frame, dtype=np.uint8).tobytes()


def unpack_frame(data: bytes) -> tuple[dict, np.ndarray]:
    """Inverse of `pack_frame` (for tests and Python clients)."""
    if len(data) < FRAME_HEADER.size:
        raise ValueError(f"a frame message has a {FRAME_HEADER.size}-byte header, got {len(data)} bytes")
    kind, flags, h, w, action, index, ms = FRAME_HEADER.unpack_from(data)
    body = np.frombuffer(data, dtype=np.uint8, offset=FRAME_HEADER.size)
    if kind != FRAME_KIND or body.size != h * w * 3:
        raise ValueError(f"not a frame message (kind {kind}, {body.size} bytes for {h}x{w})")
    head = {"kind": kind, "start": bool(flags & FLAG_START), "recorded": bool(flags & FLAG_RECORDING),
            "height": h, "width": w, "action": None if action < 0 else action, "index": index, "ms": ms}
    return head, body.reshape(h, w, 3)


class SessionManager:
    """Creates sessions up to the cap, hands out unguessable ids, forgets closed ones."""

    def __init__(self, base_world, config: PlayConfig):
        self.base = base_world
        self.config = config
        self._sessions: dict[str, PlaySession] = {}
        self._lock = threading.Lock()
        self._seeds = np.random.SeedSequence(config.seed)
        self.opened = 0
        self.closed = 0
        self._graphs = None  # the ONNX Runtime sessions every OnnxWorld shares (config.onnx)
        if config.onnx:
            from driftless.world.onnx_play import OnnxPlayer, OnnxWorld

            self._graphs = OnnxPlayer(config.onnx, threads=int(config.onnx_threads))
            OnnxWorld(base_world, graphs=self._graphs)  # refuses an export of another world now, not per tab

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def open(self) -> PlaySession:
        from driftless.world.world import World

        with self._lock:
            if len(self._sessions) >= self.config.max_sessions:
                raise SessionsFull(f"the server is full: {len(self._sessions)} of {self.config.max_sessions} "
                                   f"sessions are in use. Close another tab or try again later.")
            b = self.base
            if self._graphs is not None:
                from driftless.world.onnx_play import OnnxWorld

                world = OnnxWorld(b, graphs=self._graphs)
            else:
                world = World(b.tokenizer, b.lam, b.dynamics, b.meta, b.device, cuda_graphs=b.cuda_graphs)
            sid = secrets.token_urlsafe(16)
            seed = int(self._seeds.spawn(1)[0].generate_state(1)[0])
            session = PlaySession(sid, world, self.config, seed)
            self._sessions[sid] = session
            self.opened += 1
            return session

    def get(self, sid: str) -> PlaySession | None:
        with self._lock:
            return self._sessions.get(sid)

    def close(self, sid: str) -> None:
        with self._lock:
            session = self._sessions.pop(sid, None)
        if session is not None:
            session.close()
            self.closed += 1
