"""The play server over real WebSockets (FastAPI TestClient): protocol, limits, sessions."""

import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from driftless.serve import media  # noqa: E402
from driftless.serve.app import create_app  # noqa: E402
from driftless.serve.session import PlayConfig, noop_action, pack_frame, unpack_frame  # noqa: E402

ACTION_MAP = {"keys": {"ArrowLeft": 1, "ArrowRight": 2, "ArrowUp": 3, " ": 3, "ArrowDown": 0},
              "groups": {"none": 0, "left": 1, "right": 2, "jump": 3, "left_jump": 1, "right_jump": 3},
              "accuracy": 0.61, "majority_baseline": 0.4}


@pytest.fixture(scope="module")
def play_world(tmp_path_factory):
    from driftless.world.debug import make_debug_world
    from driftless.world.world import load

    world = load(make_debug_world(tmp_path_factory.mktemp("play") / "world", action_map=ACTION_MAP))
    yield world


def png_bytes(w=96, h=64, seed=0, fmt="PNG"):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def client_for(world, **kw):
    kw.setdefault("warm", False)
    kw.setdefault("allowed_hosts", ("testserver",))  # the name TestClient sends as Host
    return TestClient(create_app(world, **kw))


def recv_error(ws):
    msg = ws.receive_json()
    assert msg["type"] == "error", msg
    return msg


def start_upload(ws, data=None):
    ws.send_bytes(data or png_bytes())
    started = ws.receive_json()
    assert started["type"] == "started" and started["source"] == "upload"
    head, frame = unpack_frame(ws.receive_bytes())
    assert head["start"] and head["index"] == 0 and head["action"] is None
    return head, frame


def step(ws, action):
    ws.send_text(json.dumps({"type": "step", "action": action}))
    return unpack_frame(ws.receive_bytes())


def test_ready_step_and_frame_protocol(play_world):
    with client_for(play_world) as client, client.websocket_connect("/ws") as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready" and len(ready["session"]) >= 16
        w = ready["world"]
        assert w["num_actions"] == play_world.num_actions == 4 and w["resolution"] == [64, 64]
        assert w["action_map"]["keys"]["ArrowRight"] == 2 and w["action_map"]["accuracy"] == pytest.approx(0.61)
        assert w["noop"] == 0 and ready["limits"]["max_upload_bytes"] == PlayConfig().max_upload_bytes
        assert ready["sessions"] == {"used": 1, "max": 4}

        _, first = start_upload(ws)
        frames = [first]
        for i, a in enumerate([1, 2, 3, 3]):
            head, frame = step(ws, a)
            assert head["index"] == i + 1 and head["action"] == a and not head["start"] and head["ms"] > 0
            assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
            frames.append(frame)
        assert any(not np.array_equal(frames[0], f) for f in frames[1:])  # the world moves

        # restart goes back to the prompt: the start frame again, counter at 0
        ws.send_text(json.dumps({"type": "restart"}))
        head, again = unpack_frame(ws.receive_bytes())
        assert head["start"] and head["index"] == 0
        np.testing.assert_array_equal(again, first)
        ws.send_text(json.dumps({"type": "ping", "t": 12.5}))
        assert ws.receive_json() == {"type": "pong", "t": 12.5}


def test_malformed_messages_answered_and_session_survives(play_world):
    with client_for(play_world, max_text_bytes=4500) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "step", "action": 0}))
        assert recv_error(ws)["code"] == "not_started"
        ws.send_text(json.dumps({"type": "restart"}))
        assert recv_error(ws)["code"] == "not_started"
        start_upload(ws)
        bad = [
            ("{not json", "bad_json"),
            ("[1, 2, 3]", "bad_message"),
            ('{"action": 1}', "bad_message"),
            ('{"type": 7}', "bad_message"),
            ('{"type": "teleport"}', "unknown_type"),
            ('{"type": "step"}', "bad_action"),
            ('{"type": "step", "action": 4}', "bad_action"),
            ('{"type": "step", "action": -1}', "bad_action"),
            ('{"type": "step", "action": 1.5}', "bad_action"),
            ('{"type": "step", "action": true}', "bad_action"),
            ('{"type": "step", "action": "1"}', "bad_action"),
            ('{"type": "record"}', "bad_message"),
            ('{"type": "start", "source": "moon"}', "bad_source"),
            ('{"type": "start", "source": "level", "level": "ten"}', "bad_level"),
            ('{"type": "start", "source": "clip"}', "no_source"),
            ("[" * 2000 + "]" * 2000, "bad_json"),  # nesting deep enough to exhaust the parser's recursion
            ("[" * 100000, "too_large"),
            (json.dumps({"type": "step", "action": 1, "pad": "x" * 4500}), "too_large"),
            ("", "bad_json"),
        ]
        for text, code in bad:
            ws.send_text(text)
            err = recv_error(ws)
            assert err["code"] == code, (text[:40], err)
            assert err["message"]
        ws.send_text('{"type": "start", "source": "level", "level": 42}')
        assert recv_error(ws)["code"] in ("bad_level", "no_source")
        head, _ = step(ws, 2)  # still alive and counting from where it was
        assert head["index"] == 1 and head["action"] == 2


def test_uploads_validated(play_world):
    limit = 20_000
    with client_for(play_world, max_upload_bytes=limit) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        big = png_bytes(200, 200)  # random pixels barely compress: > 100 kB
        assert len(big) > limit
        ws.send_bytes(big)
        err = recv_error(ws)
        assert err["code"] == "too_large" and err["about"] == "upload" and str(limit) in err["message"]
        for data in (b"", b"GIF89a" + b"\0" * 50, media.PNG_MAGIC + b"\0" * 100, png_bytes()[:200]):
            ws.send_bytes(data)
            assert recv_error(ws)["code"] == "bad_image"
        gif = io.BytesIO()
        Image.new("RGB", (10, 10)).save(gif, format="GIF")
        ws.send_bytes(gif.getvalue())
        assert recv_error(ws)["code"] == "bad_image"
        # a JPEG of another size and aspect is center-cropped and resized to the world's 64x64
        img = np.zeros((60, 180, 3), dtype=np.uint8)
        img[:, 60:120] = (250, 20, 20)  # the center third is red, the sides black
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        _, frame = start_upload(ws, buf.getvalue())
        assert frame.shape == (64, 64, 3)
        assert frame[..., 0].mean() > 200 and frame[..., 1].mean() < 60  # only the red center survives


def test_image_pixel_limit_checked_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")  # a few kB that would decode to 9 Mpx
    data = buf.getvalue()
    assert len(data) < 100_000
    with pytest.raises(media.ImageError, match="pixels"):
        media.load_image_bytes(data, (64, 64), media.ImageLimits(max_bytes=10**6, max_pixels=1_000_000))
    rgba = io.BytesIO()
    Image.new("RGBA", (32, 32), (255, 255, 255, 0)).save(rgba, format="PNG")
    out = media.load_image_bytes(rgba.getvalue(), (16, 16))  # transparent -> black background
    assert out.shape == (16, 16, 3) and out.max() == 0


def test_session_cap_and_disconnect_cleanup(play_world):
    with client_for(play_world, max_sessions=2) as client:
        manager = client.app.state.manager
        with client.websocket_connect("/ws") as a:
            a.receive_json()
            with client.websocket_connect("/ws") as b:
                b.receive_json()
                assert len(manager) == 2
                with client.websocket_connect("/ws") as c:
                    err = c.receive_json()
                    assert err["type"] == "error" and err["code"] == "full" and "2 of 2" in err["message"]
                    with pytest.raises(WebSocketDisconnect) as closed:
                        c.receive_json()
                    assert closed.value.code == 1013
                assert len(manager) == 2
                info = client.get("/api/info").json()
                assert info["sessions"] == {"used": 2, "max": 2}
                start_upload(b)
                step(b, 1)
                sid_b = manager.ids[-1]
            # b disconnected: its slot and its state are gone, a new tab fits again
            for _ in range(100):
                if len(manager) == 1:
                    break
                import time
                time.sleep(0.01)
            assert len(manager) == 1 and sid_b not in manager.ids
            assert client.get(f"/api/sessions/{sid_b}/recording.gif").status_code == 404
            with client.websocket_connect("/ws") as d:
                assert d.receive_json()["type"] == "ready"
                start_upload(d)
                head, _ = step(d, 3)
                assert head["index"] == 1
        assert len(manager) == 0 and manager.opened == 3 and manager.closed == 3


def test_disconnect_while_busy_leaves_server_healthy(play_world):
    with client_for(play_world) as client:
        for _ in range(3):  # close abruptly right after queueing work
            with client.websocket_connect("/ws") as ws:
                ws.receive_json()
                ws.send_bytes(png_bytes())
                ws.send_text(json.dumps({"type": "step", "action": 1}))
        import time

        for _ in range(200):
            if len(client.app.state.manager) == 0:
                break
            time.sleep(0.01)
        assert len(client.app.state.manager) == 0
        assert client.get("/api/info").status_code == 200


def test_two_sessions_are_independent(play_world):
    with client_for(play_world) as client, client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        ra, rb = a.receive_json(), b.receive_json()
        assert ra["session"] != rb["session"]
        start_upload(a, png_bytes(seed=1))
        _, fb = start_upload(b, png_bytes(seed=2))
        for _ in range(3):
            step(a, 1)
        head_b, _ = step(b, 2)
        assert head_b["index"] == 1  # a's steps did not advance b
        head_a, _ = step(a, 1)
        assert head_a["index"] == 4


def test_record_and_download(play_world):
    with client_for(play_world, max_record_frames=6, record_scale=2) as client, client.websocket_connect("/ws") as ws:
        sid = ws.receive_json()["session"]
        start_upload(ws)
        assert client.get(f"/api/sessions/{sid}/recording.gif").status_code == 404  # nothing recorded
        ws.send_text(json.dumps({"type": "record", "on": True}))
        rec = ws.receive_json()
        assert rec["type"] == "recording" and rec["on"] and rec["frames"] == 1  # the frame on screen
        assert rec["download"]["mp4"] == f"/api/sessions/{sid}/recording.mp4"
        for a in (1, 2, 3):
            head, _ = step(ws, a)
            assert head["recorded"]
        ws.send_text(json.dumps({"type": "record", "on": False}))
        rec = ws.receive_json()
        assert not rec["on"] and rec["frames"] == 4
        head, _ = step(ws, 0)
        assert not head["recorded"]

        gif = client.get(rec["download"]["gif"])
        assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
        assert "attachment" in gif.headers["content-disposition"]
        im = Image.open(io.BytesIO(gif.content))
        assert im.size == (128, 128) and 2 <= im.n_frames <= 4  # Pillow merges identical frames

        mp4 = client.get(rec["download"]["mp4"])
        assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
        import av

        with av.open(io.BytesIO(mp4.content)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 4 and frames[0].shape == (128, 128, 3)
        assert client.get(f"/api/sessions/{sid}/recording.avi").status_code == 404
        assert client.get("/api/sessions/nope/recording.gif").status_code == 404

        # the recording stops by itself at max_record_frames and says why
        ws.send_text(json.dumps({"type": "record", "on": True}))
        assert ws.receive_json()["frames"] == 1
        for a in range(5):
            head, _ = step(ws, a % 4)
            assert head["recorded"]
        head, _ = step(ws, 0)
        assert not head["recorded"]
        msg = ws.receive_json()
        assert msg["type"] == "recording" and not msg["on"] and msg["reason"] == "limit" and msg["frames"] == 6


def test_dataset_clip_start(play_world, tmp_path):
    from conftest import make_store

    store = make_store(tmp_path / "store", episodes=3, length=10)
    with client_for(play_world, data=store.root, context_frames=3) as client, client.websocket_connect("/ws") as ws:
        ready = ws.receive_json()
        assert ready["sources"]["clip"] and ready["sources"]["upload"]
        ws.send_text(json.dumps({"type": "start", "source": "clip"}))
        started = ws.receive_json()
        assert started["type"] == "started" and started["source"] == "clip" and started["frames"] == 3
        d = started["detail"]
        head, frame = unpack_frame(ws.receive_bytes())
        assert head["start"]
        # the prompt's last frame is what the world shows first
        np.testing.assert_array_equal(frame, store.frames(d["episode"], d["start"] + 2, d["start"] + 3)[0])


def test_level_start_when_procgen_installed(play_world):
    pytest.importorskip("procgen")
    with client_for(play_world) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["sources"]["level"]
        ws.send_text(json.dumps({"type": "start", "source": "level", "level": 10734}))
        started = ws.receive_json()
        assert started["source"] == "level" and started["detail"]["level"] == 10734
        head, frame = unpack_frame(ws.receive_bytes())
        assert head["start"] and frame.std() > 5  # a real CoinRun frame, not a blank
        ws.send_text(json.dumps({"type": "start", "source": "level", "level": 5}))  # a training level
        assert recv_error(ws)["code"] == "bad_level"


def test_cross_origin_refused_and_page_served(play_world):
    with client_for(play_world) as client:
        with client.websocket_connect("/ws", headers={"origin": "http://evil.example"}) as ws:
            assert ws.receive_json()["code"] == "origin"
        with client.websocket_connect("/ws", headers={"origin": "http://testserver"}) as ws:
            assert ws.receive_json()["type"] == "ready"
        page = client.get("/")
        assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
        assert page.text.index("/static/ui.js") < page.text.index("/static/app.js")  # the shared script first
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("/static/ui.js", "/static/app.js", "/static/style.css"):
            assert client.get(asset).status_code == 200
        assert "http" not in client.get("/static/style.css").text  # no external fonts or CDNs


def test_frame_packing_round_trip_and_noop():
    f = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    head, g = unpack_frame(pack_frame(f, 300, 2, 1.5, start=False, recorded=True))
    np.testing.assert_array_equal(f, g)
    assert head["index"] == 300 and head["action"] == 2 and head["recorded"] and not head["start"]
    assert unpack_frame(pack_frame(f, 0, None, 0, True, False))[0]["action"] is None
    with pytest.raises(ValueError):
        unpack_frame(b"\x01" * 10)
    assert noop_action(ACTION_MAP) == 0
    assert noop_action({"keys": {}, "groups": {"none": 3}}) == 3
    assert noop_action({}) == 0


def test_bad_config_rejected(play_world):
    with pytest.raises(ValueError, match="max_sessions"):
        create_app(play_world, max_sessions=0)
    with pytest.raises(ValueError, match="unknown play option"):
        create_app(play_world, frames_per_second=3)
    with pytest.raises(ValueError, match="window must be >= 1"):
        create_app(play_world, window=0)


def test_play_window_reaches_the_world(play_world):
    """`driftless play --window N`: sessions attend to N frames, as `World.step(window=N)` does;
    a one-frame window plays other frames than the world's own."""
    def frames(**options):
        with client_for(play_world, seed=7, **options) as client, client.websocket_connect("/ws") as ws:
            ws.receive_json()
            start_upload(ws, png_bytes(seed=10))
            return [step(ws, k % 4)[1] for k in range(6)]

    own = frames()
    trained = play_world.dynamics.cfg.context_window
    assert all(np.array_equal(f, g) for f, g in zip(own, frames(window=trained))), "its own window: same frames"
    assert not all(np.array_equal(f, g) for f, g in zip(own, frames(window=1))), "one frame: other frames"


def _two_sessions(world, workers, interleave):
    """Frames of two sessions (fixed seed) stepping 4 times; concurrently when interleave."""
    out = {0: [], 1: []}
    with client_for(world, inference_workers=workers, seed=7) as client, \
            client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        wss = [a, b]
        for i, ws in enumerate(wss):
            ws.receive_json()
            start_upload(ws, png_bytes(seed=10 + i))
        for k in range(4):
            if interleave:  # both requests in flight before either answer is read
                for i, ws in enumerate(wss):
                    ws.send_text(json.dumps({"type": "step", "action": (k + i) % 4}))
                for i, ws in enumerate(wss):
                    out[i].append(unpack_frame(ws.receive_bytes())[1])
            else:
                for i, ws in enumerate(wss):
                    out[i].append(step(ws, (k + i) % 4)[1])
    return out


def test_parallel_workers_match_serial(play_world):
    serial = _two_sessions(play_world, workers=1, interleave=False)
    parallel = _two_sessions(play_world, workers=2, interleave=True)
    for i in (0, 1):
        for f, g in zip(serial[i], parallel[i]):
            np.testing.assert_array_equal(f, g)
    assert not np.array_equal(serial[0][-1], serial[1][-1])
