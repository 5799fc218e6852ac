"""The play protocol driven directly (no FastAPI, no sockets): PlayServer / PlayConnection."""

import ast
import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import Tab as BaseTab
from PIL import Image

import driftless
from driftless.serve.protocol import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    NotFound,
    PlayServer,
    Refused,
)
from driftless.serve.session import PlayConfig, unpack_frame

ACTION_MAP = {"keys": {"ArrowLeft": 1, "ArrowRight": 2, "ArrowUp": 3, "ArrowDown": 0},
              "groups": {"none": 0, "left": 1, "right": 2, "jump": 3}, "accuracy": 0.5}
WEB = ("fastapi", "starlette", "uvicorn")


@pytest.fixture(scope="module")
def play_world(tmp_path_factory):
    from driftless.world.debug import make_debug_world
    from driftless.world.world import load

    return load(make_debug_world(tmp_path_factory.mktemp("protocol") / "world", action_map=ACTION_MAP))


def png_bytes(seed=0, size=(48, 80)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class Tab(BaseTab):
    """conftest's Tab with checks of the replies this file asks about."""

    async def error(self, message) -> dict:
        (reply,) = await self.ask(message)
        assert reply["type"] == "error" and reply["message"], reply
        return reply

    async def frame(self, message):
        (reply,) = await self.ask(message)
        return unpack_frame(reply)


def play(world, test, **options):
    """Run `test(server)` on an event loop with a server built from `options`."""
    with PlayServer(world, PlayConfig.build(**options)) as server:
        asyncio.run(test(server))


def test_malformed_messages_answered_and_session_survives(play_world):
    async def test(server):
        tab = Tab(server)
        assert (await tab.error({"type": "step", "action": 0}))["code"] == "not_started"
        assert (await tab.error('{"type": "restart"}'))["code"] == "not_started"
        started, first = await tab.ask(png_bytes())
        assert started == {"type": "started", "source": "upload", "detail": {"bytes": len(png_bytes())},
                           "frames": 1}
        assert unpack_frame(first)[0]["start"]
        bad = [("{not json", "bad_json"), ("", "bad_json"), (None, "bad_message"), ([1, 2], "bad_message"),
               ({"action": 1}, "bad_message"), ('{"type": 7}', "bad_message"), ({"type": "teleport"}, "unknown_type"),
               ({"type": "step"}, "bad_action"), ({"type": "step", "action": 4}, "bad_action"),
               ({"type": "step", "action": True}, "bad_action"), ('{"type": "step", "action": 1.0}', "bad_action"),
               ({"type": "record", "on": "yes"}, "bad_message"), ({"type": "start", "source": "moon"}, "bad_source"),
               ({"type": "start", "source": "level", "level": 1.5}, "bad_level"),
               ({"type": "start", "source": "clip"}, "no_source"),
               (json.dumps({"type": "ping", "pad": "x" * 300}), "too_large")]
        for message, code in bad:
            err = await tab.error(message)
            assert err["code"] == code and err["about"] is None, (message, err)
        assert "start, restart, step, record, ping" in (await tab.error({"type": "teleport"}))["message"]
        assert "empty" in (await tab.error(None))["message"]
        for data, code in ((b"GIF89a" + b"\0" * 40, "bad_image"), (b"\0" * 20_001, "too_large")):
            err = await tab.error(data)
            assert err["code"] == code and err["about"] == "upload"
        head, _ = await tab.frame({"type": "step", "action": 2})  # still alive and counting from the start
        assert head["index"] == 1 and head["action"] == 2

    play(play_world, test, max_text_bytes=256, max_upload_bytes=20_000)


def test_ready_action_and_reset(play_world):
    async def test(server):
        tab = Tab(server)
        await tab.conn.ready()
        (ready,) = tab.replies
        tab.replies = []
        assert ready["type"] == "ready" and ready["session"] == tab.conn.session.id
        assert ready["world"]["num_actions"] == 4 and ready["world"]["action_map"]["keys"]["ArrowRight"] == 2
        assert ready["limits"]["max_text_bytes"] == 4096 and ready["sessions"] == {"used": 1, "max": 3}
        assert ready["tick_fps"] == 15.0 and ready["sources"]["upload"] and not ready["sources"]["clip"]

        _, first = await tab.ask(png_bytes(seed=3))
        first = unpack_frame(first)[1]
        frames = []
        for i, a in enumerate((1, 2, 3)):
            head, frame = await tab.frame(json.dumps({"type": "step", "action": a}))
            assert head["index"] == i + 1 and head["action"] == a and not head["start"] and not head["recorded"]
            frames.append(frame)
        assert any(not np.array_equal(first, f) for f in frames)
        head, again = await tab.frame({"type": "restart"})  # reset to the prompt: the first frame, index 0
        assert head["start"] and head["index"] == 0 and head["action"] is None
        np.testing.assert_array_equal(again, first)
        assert await tab.ask({"type": "ping", "t": 2.5}) == [{"type": "pong", "t": 2.5}]
        assert await tab.ask({"type": "ping", "t": "soon"}) == [{"type": "pong", "t": None}]

    play(play_world, test, max_sessions=3)


def test_session_limit_origin_and_close(play_world):
    async def test(server):
        a = Tab(server, origin="http://localhost:8000", host="localhost:8000")
        with pytest.raises(Refused) as full:
            Tab(server)
        assert full.value.close_code == CLOSE_TRY_AGAIN_LATER and full.value.reason == "server full"
        assert full.value.reply["type"] == "error" and full.value.reply["code"] == "full"
        assert "1 of 1" in full.value.reply["message"] and server.status()["sessions"] == {"used": 1, "max": 1}
        a.conn.close()  # the slot frees when the tab's connection closes
        with pytest.raises(Refused) as foreign:
            Tab(server, origin="http://evil.example", host="localhost:8000")
        assert foreign.value.reply["code"] == "origin" and foreign.value.close_code == CLOSE_POLICY
        assert len(server.manager) == 0  # a refused origin never takes a session

        b = Tab(server)
        ended = []
        world = b.conn.session.world
        world.end_session = lambda: ended.append(True)  # the session's own World, not the shared one
        await b.ask(png_bytes())
        b.conn.close()
        assert ended == [True] and len(server.manager) == 0 and b.conn.session.prompt is None
        started, _ = await Tab(server).ask(png_bytes())  # and the freed slot takes a new tab
        assert started["type"] == "started"

    play(play_world, test, max_sessions=1)


def test_recording_limit_and_download(play_world):
    async def test(server):
        tab = Tab(server)
        sid = tab.conn.session.id
        await tab.ask(png_bytes())
        with pytest.raises(NotFound, match="nothing recorded"):
            await server.recording(sid, "gif")
        (rec,) = await tab.ask({"type": "record", "on": True})
        assert rec["on"] and rec["frames"] == 1 and rec["max"] == 3 and rec["reason"] is None
        assert rec["download"] == {f: f"/api/sessions/{sid}/recording.{f}" for f in ("gif", "mp4")}
        for _ in range(2):
            assert (await tab.frame({"type": "step", "action": 1}))[0]["recorded"]
        frame, stopped = await tab.ask({"type": "step", "action": 1})  # the limit: a frame, then why it stopped
        assert not unpack_frame(frame)[0]["recorded"]
        assert stopped["type"] == "recording" and not stopped["on"] and stopped["reason"] == "limit"
        assert stopped["frames"] == 3
        data, media_type, name = await server.recording(sid, "gif")
        assert data[:6] == b"GIF89a" and media_type == "image/gif" and name.endswith(".gif")
        assert Image.open(io.BytesIO(data)).size == (64 * 2, 64 * 2)
        for s, fmt, why in ((sid, "avi", ".gif or .mp4"), ("nope", "gif", "no such session")):
            with pytest.raises(NotFound, match=why):
                await server.recording(s, fmt)

    play(play_world, test, max_record_frames=3, record_scale=2)


def test_model_failure_answered_but_transport_failure_raised(play_world):
    async def test(server):
        tab = Tab(server)
        await tab.ask(png_bytes())

        def broken(action):
            raise RuntimeError("the GPU fell over")

        step, tab.conn.session.step = tab.conn.session.step, broken
        err = await tab.error({"type": "step", "action": 1})
        assert err["code"] == "internal" and "RuntimeError: the GPU fell over" in err["message"]
        tab.conn.session.step = step
        assert (await tab.frame({"type": "step", "action": 1}))[0]["index"] == 1

        tries = []

        async def gone(reply):
            tries.append(reply)
            raise ConnectionResetError("the tab closed")

        cut = server.open(gone)
        for message in ({"type": "ping"}, png_bytes()):  # a pong; a start message before the frame
            with pytest.raises(ConnectionResetError):  # not answered with "internal" to a client that is gone
                await cut.receive(message)
        assert [r["type"] for r in tries] == ["pong", "started"]

    play(play_world, test)


def test_play_config_build():
    base = PlayConfig(max_sessions=2, tick_fps=10)
    assert PlayConfig.build(base) is base
    merged = PlayConfig.build(base, tick_fps=20)
    assert (merged.max_sessions, merged.tick_fps, base.tick_fps) == (2, 20, 10)
    with pytest.raises(ValueError, match="unknown play option"):
        PlayConfig.build(frames_per_second=3)
    with pytest.raises(ValueError, match="max_sessions"):
        PlayConfig.build(max_sessions=0)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_layers_web_framework_only_in_serve_app_and_cli():
    root = Path(driftless.__file__).parent
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        names = _imports(path)
        if rel != "serve/app.py" and not rel.startswith("cli/"):
            web = sorted(n for n in names if n.split(".")[0] in WEB)
            assert not web, f"{rel} imports a web framework ({web}); only serve/app.py and cli may"
        if rel.startswith("serve/"):
            assert not [n for n in names if n == "driftless.cli" or n.startswith("driftless.cli.")], rel
    code = ("import sys, driftless.serve.protocol, driftless.serve.session, driftless.serve.media; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {WEB!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
