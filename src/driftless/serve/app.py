"""The play server's web wiring: one static page, a JSON info route, recording downloads and one
WebSocket per browser tab.

    app = create_app("path/to/world", max_sessions=4)
    make_server(app).run(sockets=[listen("127.0.0.1", 8000)])   # keepalive and limits from its PlayConfig

The protocol itself (messages, checks, replies, sessions) lives in `serve.protocol`, which
imports no web framework; this module only moves its messages: JSON objects as text, frames
as binary WebSocket messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocketDisconnect, WebSocketState

from driftless.serve.protocol import CLOSE_POLICY, Busy, NotFound, PlayServer, Refused, Reply, host_name
from driftless.serve.session import LevelSource, PlayConfig

log = logging.getLogger("driftless.serve")
STATIC = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self' ws: wss:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'")


def create_app(world_or_path, max_sessions: int = 4, data: str | Path | None = None, device: str = "cpu",
               config: PlayConfig | None = None, level_source: LevelSource | None = None, warm: bool = True,
               **overrides):
    """Build the FastAPI app for a World (or a world folder / shipped name).

    max_sessions: tabs at once; data: an episode store for "dataset clip" prompts; any
    `PlayConfig` field can be given as a keyword; warm: load procgen in the background at
    startup so the first random level is quick."""
    if config is None:
        overrides["max_sessions"] = max_sessions
    cfg = PlayConfig.build(config, **overrides)
    server = PlayServer(world_or_path, cfg, data=data, device=device, level_source=level_source)

    @asynccontextmanager
    async def lifespan(app):
        if warm:
            server.warm()
        yield
        server.shutdown()

    app = FastAPI(title="driftless play", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server, app.state.world, app.state.config = server, server.world, cfg
    app.state.manager, app.state.levels, app.state.clips = server.manager, server.levels, server.clips

    @app.middleware("http")
    async def security_headers(request, call_next):
        host = request.headers.get("host")
        if not server.host_allowed(host):  # a DNS-rebinding page reaches us under its own name
            response = JSONResponse({"error": f"this server does not answer to the name {host_name(host)[:80]!r}; "
                                              f"start it with --allow-host NAME to allow it"}, status_code=421)
        else:
            response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    async def api_info():
        return server.status()

    @app.get("/api/actions/{action}.png")
    async def action_preview(action: int):
        try:
            return Response(server.preview(action), media_type="image/png")
        except NotFound as e:
            raise HTTPException(404, str(e)) from e

    @app.get("/api/sessions/{sid}/recording.{fmt}")
    async def download(sid: str, fmt: str):
        try:
            data, media_type, name = await server.recording(sid, fmt)
        except NotFound as e:
            raise HTTPException(404, str(e)) from e
        except Busy as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "5"}) from e
        return Response(data, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.exception_handler(404)
    async def not_found(request, exc):
        detail = getattr(exc, "detail", "not found")
        return JSONResponse({"error": detail}, status_code=404)

    @app.websocket("/ws")
    async def play(ws: WebSocket):
        async def send(reply: Reply) -> None:
            if isinstance(reply, dict):
                await ws.send_text(json.dumps(reply))
            else:
                await ws.send_bytes(reply)

        try:  # the session opens before accepting, so sessions open in the order tabs connect
            conn = server.open(send, origin=ws.headers.get("origin"), host=ws.headers.get("host", ""))
        except Refused as e:
            await ws.accept()
            await send(e.reply)
            await ws.close(code=e.close_code, reason=e.reason)
            return
        try:
            await ws.accept()
        except Exception:  # noqa: BLE001 - the client left during the handshake
            conn.close()
            raise
        async def receive():
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return None
            data = message.get("bytes")
            return data if data is not None else message.get("text")

        try:
            ended = await conn.serve(receive)  # closes the session whatever happens
            if ended == "idle":
                await ws.close(code=1000)
            elif ended == "slow":  # its session is gone already; the socket goes when the client does
                with contextlib.suppress(TimeoutError):  # (the close frame may queue behind unread frames)
                    async with asyncio.timeout(cfg.send_timeout_s):
                        await ws.close(code=CLOSE_POLICY, reason="not reading")
        except WebSocketDisconnect:
            pass
        except Exception:  # noqa: BLE001 - e.g. sending on a socket the client just closed
            if ws.client_state == WebSocketState.CONNECTED and ws.application_state == WebSocketState.CONNECTED:
                log.exception("session %s ended by an error", conn.session.id[:6])
        finally:
            conn.close()

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a ValueError saying why not (a port in use, above all)
    before anything is printed or served."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: not an address of this machine ({e.strerror})") from e
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is already in use (another driftless play or another server); "
                             f"stop it or pick another port with --port") from e
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.set_inheritable(True)
    return sock


def make_server(app, log_level: str = "warning"):
    """A uvicorn server for `app` with its PlayConfig's transport settings: the WebSocket message
    cap above the upload limit (so oversized uploads get a clear error reply) and the keepalive
    pings that drop a tab that stopped answering. Run it with `.run(sockets=[listen(...)])`."""
    import uvicorn

    cfg = app.state.config
    config = uvicorn.Config(app, log_level=log_level, ws_max_size=4 * cfg.max_upload_bytes + 65536,
                            ws_ping_interval=cfg.ping_interval_s, ws_ping_timeout=cfg.ping_timeout_s)
    return uvicorn.Server(config)
