"""The play protocol without a web framework: `PlayServer` (one per server) and
`PlayConnection` (one per browser tab).

    server = PlayServer(world, PlayConfig(max_sessions=2))
    conn = server.open(send)              # send: async callable taking a dict (JSON) or bytes (a frame)
    await conn.ready()                    # -> {"type": "ready", ...}
    await conn.receive(png_bytes)         # -> {"type": "started", ...}, then a binary frame
    await conn.receive('{"type": "step", "action": 1}')   # -> a binary frame
    conn.close()

Messages on `/ws` (see docs/playing.md for the full table):

client -> server, JSON text (at most `max_text_bytes`):
    {"type": "start", "source": "auto"|"level"|"clip", "level": 10734?}   new prompt, new frame
    {"type": "restart"}                      the same prompt again (new sampling seed)
    {"type": "step", "action": 3}            one generated frame for latent action 3
    {"type": "record", "on": true|false}     start / stop recording
    {"type": "ping", "t": 123.4}             -> {"type": "pong", "t": 123.4}
client -> server, binary: a PNG/JPEG file (at most `max_upload_bytes`) to start from.

server -> client: JSON messages "ready" (world, action map, limits), "started", "recording",
"pong", "error" {"code", "message", "about"}; binary frame messages: a 16-byte header
(`session.FRAME_HEADER`) and the raw RGB bytes of one frame.

Model calls run in a thread pool (never on the event loop); a connection's messages are
handled one after another, so a session never runs two model calls at once. Bad input of any
kind is answered with an "error" message and the session carries on. The transport (the
FastAPI app in `serve.app`) only reads messages, hands them to `PlayConnection.serve` and
writes what `send` is given.

What one client does cannot lock out the others:
- a connection has at most one reply in flight, and a reply the client does not take within
  `send_timeout_s` ends that client's session (`SlowClient`), freeing its place; the transport
  drops tabs that stop answering its pings (`ping_interval_s`, `ping_timeout_s`);
- recordings are encoded on their own single, low-priority media thread (GIFs while they are
  recorded), never in the pools that start levels or run the model, and at most
  `max_pending_encodes` downloads encode or wait at once (more are told to retry: `Busy`);
- requests whose Host header names neither this machine (localhost, an IP address) nor one of
  `allowed_hosts` are refused, so a DNS-rebinding page cannot reach the server under its own name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from driftless.serve import media
from driftless.serve.session import (ClipSource, LevelSource, NoStartSource, PlayConfig, PlaySession, SessionManager,
                                     SessionsFull, noop_action, pack_frame, resize_frames)

log = logging.getLogger("driftless.serve")
CLOSE_TRY_AGAIN_LATER = 1013  # WebSocket close codes
CLOSE_POLICY = 1008
RECORDING_FORMATS = {"gif": "image/gif", "mp4": "video/mp4"}

Reply = dict | bytes  # a JSON message or a binary frame message
Send = Callable[[Reply], Awaitable[None]]


class ClientError(ValueError):
    """A bad message from a client: answered with {"type": "error", "code": code}."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Refused(Exception):
    """A connection turned away before its session starts: send `reply`, then close with `close_code`."""

    def __init__(self, code: str, message: str, close_code: int, reason: str | None = None):
        super().__init__(message)
        self.reply = error_message(code, message)
        self.close_code, self.reason = close_code, reason


class NotFound(LookupError):
    """A download that does not exist (HTTP 404)."""


class Busy(RuntimeError):
    """Too many downloads are being encoded: try again shortly (HTTP 503)."""


class SlowClient(ConnectionError):
    """The client did not take a reply within `send_timeout_s`: its session ends."""


def error_message(code: str, message: str, about: str | None = None) -> dict:
    return {"type": "error", "code": code, "message": message, "about": about}


LOCAL_NAMES = ("localhost",)


def host_name(host: str) -> str:
    """The name of a Host header: lower case, without port, brackets or a trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:host.index("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def host_allowed(host: str | None, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a request's Host header names this server: localhost, an IP address (which no DNS
    rebinding can produce: the page's origin would be that address itself), or a name in
    `allowed` ("*" allows any). No Host header: not a browser (scripts, tests)."""
    if not host:
        return True
    if "*" in allowed:
        return True
    name = host_name(host)
    if name in LOCAL_NAMES or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _lower_priority() -> None:
    """Run this worker thread at a lower CPU priority (Linux: a thread's own nice value), so that
    encoding yields to generating frames."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def same_origin(origin: str | None, host: str) -> bool:
    """A browser's Origin header names this server's own Host (no Origin: not a browser)."""
    if not origin:
        return True  # not a browser (scripts, tests)
    return origin.split("://", 1)[-1].rstrip("/") == host


def load_world(world_or_path, device: str = "cpu"):
    """A playable World from a World, a world folder or a shipped name."""
    from driftless.world.world import World, load

    world = world_or_path if isinstance(world_or_path, World) else load(world_or_path, device=device)
    if world.dynamics is None:
        raise ValueError("this world has no dynamics model, so it cannot be played; pass a world folder "
                         "built with `driftless world build --dynamics ...`")
    return world


def world_info(world, config: PlayConfig) -> dict:
    am = dict(world.action_map or {})
    keys = {k: int(v) for k, v in (am.get("keys") or {}).items() if isinstance(v, int) and 0 <= v < world.num_actions}
    groups = {k: int(v) for k, v in (am.get("groups") or {}).items()
              if isinstance(v, int) and 0 <= v < world.num_actions}
    acc = am.get("accuracy")
    held = am.get("heldout") or {}
    return {
        "name": world.meta.get("name", "world"),
        "resolution": list(world.resolution),
        "num_actions": int(world.num_actions),
        "action_map": {"keys": keys, "groups": groups,
                       "accuracy": float(acc) if isinstance(acc, (int, float)) else None,
                       "majority_baseline": am.get("majority_baseline"),
                       # what keys do (world/controls.py): how the map was fitted, per-key accuracy, what
                       # each latent action looks like; previews are added by PlayServer
                       "method": am.get("method", "cooccurrence" if keys else None),
                       "key_accuracy": am.get("key_accuracy") or {}, "effects": am.get("effects") or {},
                       "motion": am.get("motion") or [], "game": (am.get("fit") or {}).get("game"),
                       "heldout_starts": held.get("starts"),
                       "previous_accuracy": (held.get("previous_accuracy") or {}).get("mean"),
                       "previews": {}},
        "noop": noop_action({"keys": keys, "groups": groups}) if world.num_actions else 0,
        "denoise_steps": int(config.denoise_steps or world.sampling.steps),
    }


def action_previews(world, max_bytes: int = 1 << 20) -> dict[int, bytes]:
    """The preview strips the action map lists (`world refit-actions` writes them), read once."""
    folder = getattr(world, "path", None)
    spec = (world.action_map or {}).get("previews") or {}
    out = {}
    if folder is None or not isinstance(spec.get("files"), dict):
        return out
    base = (Path(folder) / str(spec.get("folder", "previews"))).resolve()
    for code, name in spec["files"].items():
        path = (base / str(name)).resolve()
        if (str(code).isdigit() and int(code) < world.num_actions and path.parent == base and path.is_file()
                and path.stat().st_size <= max_bytes):
            out[int(code)] = path.read_bytes()
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class PlayServer:
    """What every connection shares: the world, settings, sessions, start sources and thread pools."""

    def __init__(self, world_or_path, config: PlayConfig | None = None, data: str | Path | None = None,
                 device: str = "cpu", level_source: LevelSource | None = None):
        self.config = cfg = config or PlayConfig()
        self.world = load_world(world_or_path, device)
        self.info = world_info(self.world, cfg)
        self.previews = action_previews(self.world)  # {latent action: PNG bytes}
        self.info["action_map"]["previews"] = {str(a): f"/api/actions/{a}.png" for a in sorted(self.previews)}
        self.levels = level_source or LevelSource()
        self.clips = ClipSource(data, cfg.context_frames) if data else None
        self.manager = SessionManager(self.world, cfg)
        self.infer_pool = ThreadPoolExecutor(max_workers=cfg.inference_workers, thread_name_prefix="driftless-infer")
        self.io_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="driftless-io")  # start frames, uploads
        # recordings: one thread of its own at a lower priority, so encoding never delays a player's frames
        self.media_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftless-media",
                                             initializer=_lower_priority)
        self.encoding = 0  # downloads being encoded or waiting for the media thread (event loop only)

    def host_allowed(self, host: str | None) -> bool:
        return host_allowed(host, self.config.allowed_hosts)

    async def run_io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    async def run_media(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.media_pool, fn, *args)

    def encode_soon(self, session: PlaySession) -> None:
        """Encode a session's newly recorded frames in the background (at most one queued pass each)."""
        if session.encode_scheduled:
            return
        session.encode_scheduled = True

        def encode() -> None:
            session.encode_scheduled = False  # frames recorded from now on schedule another pass
            try:
                session.encode_recording()
            except Exception:  # noqa: BLE001 - a download encodes again and reports the error
                log.exception("session %s: encoding the recording failed", session.id[:6])

        try:
            self.media_pool.submit(encode)
        except RuntimeError:  # shut down
            session.encode_scheduled = False

    async def run_model(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.infer_pool, fn, *args)

    def warm(self) -> None:
        """Load procgen in the background (call from a running event loop) so the first random level is quick."""
        if self.levels.available:
            asyncio.get_running_loop().run_in_executor(self.io_pool, self.levels.warm)

    def shutdown(self) -> None:
        self.infer_pool.shutdown(wait=False, cancel_futures=True)
        self.io_pool.shutdown(wait=False, cancel_futures=True)
        self.media_pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> PlayServer:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def preview(self, action: int) -> bytes:
        """The preview strip (PNG) of a latent action, or `NotFound`."""
        if action not in self.previews:
            raise NotFound(f"no preview of latent action {action}")
        return self.previews[action]

    def sources(self) -> dict:
        levels, clips = self.levels, self.clips
        return {"level": levels.available, "clip": clips is not None, "upload": True,
                "level_reason": None if levels.available else levels.reason,
                "clip_reason": None if clips is not None
                else "start the server with --data STORE to play dataset clips"}

    def status(self) -> dict:
        """The world, tick rate, start sources and session count (`/api/info`)."""
        return {"world": self.info, "tick_fps": self.config.tick_fps, "sources": self.sources(),
                "sessions": {"used": len(self.manager), "max": self.config.max_sessions}}

    def open(self, send: Send, origin: str | None = None, host: str = "") -> PlayConnection:
        """A session for a new tab, or `Refused` (a name this server does not answer to, another
        site's page, or every session in use)."""
        if not self.host_allowed(host):
            raise Refused("host", f"this server does not answer to the name {host_name(host)[:80]!r} (start it with "
                                  f"--allow-host NAME to allow it)", CLOSE_POLICY)
        if not same_origin(origin, host):
            raise Refused("origin", "connections are accepted only from this server's own page", CLOSE_POLICY)
        try:
            session = self.manager.open()
        except SessionsFull as e:
            raise Refused("full", str(e), CLOSE_TRY_AGAIN_LATER, reason="server full") from e
        return PlayConnection(self, session, send)

    async def recording(self, sid: str, fmt: str) -> tuple[bytes, str, str]:
        """A session's recording encoded as `fmt` -> (data, media type, file name), or `NotFound`."""
        if fmt not in RECORDING_FORMATS:
            raise NotFound("recordings download as .gif or .mp4")
        session = self.manager.get(sid)
        if session is None:
            raise NotFound("no such session (it ends when its tab closes)")
        if not session.recorded():
            raise NotFound("nothing recorded yet: press Record, play a little, then download")
        if self.encoding >= self.config.max_pending_encodes:
            raise Busy(f"{self.encoding} recordings are being encoded; try again in a few seconds")
        self.encoding += 1
        try:
            data = await self.run_media(session.recording_bytes, fmt)
        finally:
            self.encoding -= 1
        name = f"driftless-{self.info['name']}-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
        return data, RECORDING_FORMATS[fmt], name


class PlayConnection:
    """One tab's session: takes its messages one at a time and answers through `send`."""

    def __init__(self, server: PlayServer, session: PlaySession, send: Send):
        self.server, self.session, self._send = server, session, send
        self.config, self.world = server.config, server.world
        self.transport_failed = False
        self.closed = False

    async def emit(self, reply: Reply) -> None:
        """Send one reply; `SlowClient` if the client does not take it within `send_timeout_s` (a
        client that stops reading loses its own session, and nobody else waits for it)."""
        timeout = self.config.send_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self._send(reply)
        except TimeoutError as e:
            self.transport_failed = True
            raise SlowClient(f"session {self.session.id[:6]}: the client took no reply for {timeout:g} s") from e
        except BaseException:
            self.transport_failed = True  # the client is gone: not an error of the message being handled
            raise

    async def error(self, code: str, message: str, about: str | None = None) -> None:
        await self.emit(error_message(code, message, about))

    async def ready(self) -> None:
        """The first message of a connection: the world, the limits and this session's id."""
        cfg, manager = self.config, self.server.manager
        log.info("session %s opened (%d/%d)", self.session.id[:6], len(manager), cfg.max_sessions)
        status = self.server.status()
        await self.emit({"type": "ready", "session": self.session.id, "world": status["world"],
                         "tick_fps": status["tick_fps"], "sources": status["sources"],
                         "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_text_bytes": cfg.max_text_bytes,
                                    "max_record_frames": cfg.max_record_frames},
                         "sessions": status["sessions"]})

    async def idle(self) -> None:
        """Tell the client it sent nothing for `idle_timeout_s` (the transport then closes)."""
        await self.error("idle", f"no input for {self.config.idle_timeout_s:.0f} s: session closed")

    async def serve(self, receive: Callable[[], Awaitable[str | bytes | None]]) -> str:
        """Run the connection: "ready", then each message `receive` returns (None: the client left)
        until the client leaves, idles for `idle_timeout_s` or stops taking replies. Returns why it
        ended: "closed", "idle" or "slow"; the session is closed in every case (and a failing
        transport still raises)."""
        try:
            await self.ready()
            while True:
                try:
                    async with asyncio.timeout(self.config.idle_timeout_s):
                        message = await receive()
                except TimeoutError:
                    await self.idle()
                    return "idle"
                if message is None:
                    return "closed"
                await self.receive(message)
        except SlowClient as e:
            log.info("%s: session ended", e)
            return "slow"
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        manager = self.server.manager
        manager.close(self.session.id)
        log.info("session %s closed (%d/%d)", self.session.id[:6], len(manager), self.config.max_sessions)

    async def receive(self, message: str | bytes | dict | None) -> None:
        """One client message: JSON text, an already decoded JSON object, or the bytes of an uploaded image.

        Every reply (frames, status, errors) goes through `send`; a bad message or a failing model
        call is answered with an "error" message. Only a failing `send` raises."""
        about = "upload" if isinstance(message, (bytes, bytearray)) else None
        try:
            if isinstance(message, (bytes, bytearray)):
                await self.on_upload(bytes(message))
            elif isinstance(message, str):
                await self.on_text(message)
            elif message is None:
                raise ClientError("bad_message", "empty message")
            else:
                await self.on_message(message)
        except ClientError as e:
            await self.error(e.code, str(e), about)
        except Exception as e:  # noqa: BLE001 - a model or decoder failure must not end the server
            if self.transport_failed:
                raise
            log.exception("session %s: error while handling a message", self.session.id[:6])
            await self.error("internal", f"the server failed on this message ({type(e).__name__}: {e})", about)

    # ---------------------------------------------------------------------------- handlers
    async def on_text(self, text: str) -> None:
        if len(text.encode("utf-8", "surrogatepass")) > self.config.max_text_bytes:
            raise ClientError("too_large", f"control messages may be at most {self.config.max_text_bytes} bytes "
                                           f"(images go as binary messages)")
        try:
            msg = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ClientError("bad_json", f"messages must be JSON objects: {e}") from e
        await self.on_message(msg)

    async def on_message(self, msg) -> None:
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ClientError("bad_message", 'messages must be JSON objects with a string "type"')
        kind = msg["type"]
        handler = self.HANDLERS.get(kind)
        if handler is None:
            raise ClientError("unknown_type", f"unknown message type {kind[:40]!r}; expected one of "
                                              f"{', '.join(self.HANDLERS)}")
        await handler(self, msg)

    async def on_step(self, msg: dict) -> None:
        action, n = msg.get("action"), self.world.num_actions
        if not _is_int(action) or not 0 <= action < n:
            raise ClientError("bad_action", f"action must be an integer in [0, {n}), got {action!r}")
        if not self.session.started:
            raise ClientError("not_started", "start a level, a clip or upload an image before stepping")
        await self.send_frame(await self.server.run_model(self.session.step, action), action, start=False)

    async def on_restart(self, msg: dict) -> None:
        if not self.session.started:
            raise ClientError("not_started", "nothing to restart yet: start a level, a clip or upload an image")
        await self.send_frame(await self.server.run_model(self.session.restart), None, start=True)

    async def on_record(self, msg: dict) -> None:
        on = msg.get("on")
        if not isinstance(on, bool):
            raise ClientError("bad_message", f'"record" needs "on": true or false, got {on!r}')
        self.session.set_recording(on)
        await self.emit(self.recording_status())

    async def on_ping(self, msg: dict) -> None:
        t = msg.get("t")
        await self.emit({"type": "pong", "t": t if isinstance(t, (int, float)) else None})

    async def on_start(self, msg: dict) -> None:
        server, session = self.server, self.session
        source = msg.get("source", "auto")
        if source not in ("auto", "level", "clip"):
            raise ClientError("bad_source", f"source must be 'auto', 'level' or 'clip' (or upload an image), "
                                            f"got {source!r}")
        level = msg.get("level")
        if level is not None and not _is_int(level):
            raise ClientError("bad_level", f"level must be an integer CoinRun test level, got {level!r}")
        if source == "auto":
            source = "level" if server.levels.available else "clip" if server.clips is not None else None
            if source is None:
                raise ClientError("no_source", "no start frames available: " + server.levels.reason +
                                  "; start the server with --data STORE, or upload a PNG/JPEG")
        if source == "level":
            try:
                frames, detail = await server.run_io(server.levels.frame, level, session.rng)
            except NoStartSource as e:
                raise ClientError("no_source", f"{e}; use a dataset clip (--data STORE) or upload a PNG/JPEG") from e
            except ValueError as e:
                raise ClientError("bad_level", str(e)) from e
        else:
            if server.clips is None:
                raise ClientError("no_source", "no dataset: start the server with --data STORE to play dataset clips")
            frames, detail = await server.run_io(server.clips.clip, session.rng)
        await self.start_from(frames, source, detail)

    async def on_upload(self, data: bytes) -> None:
        cfg = self.config
        if len(data) > cfg.max_upload_bytes:
            raise ClientError("too_large", f"the upload is {len(data)} bytes; images may be at most "
                                           f"{cfg.max_upload_bytes} bytes")
        try:
            frame = await self.server.run_io(media.load_image_bytes, data, self.world.resolution, cfg.image_limits)
        except media.ImageError as e:
            raise ClientError("bad_image", str(e)) from e
        await self.start_from(frame[None], "upload", {"bytes": len(data)})

    HANDLERS = {"start": on_start, "restart": on_restart, "step": on_step, "record": on_record, "ping": on_ping}

    # ---------------------------------------------------------------------------- replies
    async def start_from(self, frames: np.ndarray, source: str, detail: dict) -> None:
        frames = resize_frames(frames, self.world.resolution)
        result = await self.server.run_model(self.session.start, frames, {"source": source, **detail})
        await self.emit({"type": "started", "source": source, "detail": detail, "frames": int(len(frames))})
        await self.send_frame(result, None, start=True)

    async def send_frame(self, result: tuple[np.ndarray, bool, float], action: int | None, start: bool) -> None:
        frame, recorded, ms = result
        session = self.session
        if recorded:
            self.server.encode_soon(session)
        await self.emit(pack_frame(frame, session.index, action, ms, start, recorded))
        if session.record_stopped_by_limit and not session.recording:
            session.record_stopped_by_limit = False
            await self.emit(self.recording_status(reason="limit"))

    def recording_status(self, reason: str | None = None) -> dict:
        session = self.session
        return {"type": "recording", "on": session.recording, "frames": len(session.record_frames),
                "max": self.config.max_record_frames, "reason": reason,
                "download": {f: f"/api/sessions/{session.id}/recording.{f}" for f in RECORDING_FORMATS}}
