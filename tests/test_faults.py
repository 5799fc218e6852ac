"""The fault suite of issue 18, "Lose nothing, lock no one out": each probe that once lost data,
hung, crashed or locked players out, as a user or an attacker would run it (loopback only),
and what it must do now. docs/reliability.md has the table (probe, before, after).

Every case is bounded in time; the socket cases use a real uvicorn server on 127.0.0.1 with short
timeouts, the rest drive the library directly. The whole file runs in well under a minute on
two CPU cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Tab, make_store

import driftless
from driftless import checkpoint
from driftless.config import to_dict
from driftless.models import registry
from driftless.train.stages import StageArgs, run_stage
from driftless.train.trainer import TrainConfig


# ------------------------------------------------------------------------------------------------
# 1. training never overwrites a run it was not told to overwrite
def _train(store, out, steps=2, **kw):
    train = TrainConfig(steps=steps, batch_size=2, warmup=1, log_every=1, val_every=0, save_every=100, seed=3)
    return run_stage(StageArgs(kind="tokenizer", data=str(store), out=str(out), preset="debug", train=train,
                               workers=0, device="cpu", clip_len=4, stats_batches=1, **kw))


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished two-step tokenizer run: (store, run folder)."""
    root = tmp_path_factory.mktemp("run")
    store = make_store(root / "store", episodes=2, length=8)
    _train(store.root, root / "run")
    return store.root, root / "run"


def test_1_a_fresh_run_into_a_folder_holding_a_run_is_refused(trained_run, tmp_path):
    store, run = trained_run
    before = _files(run)
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--force"):
        _train(store, run)
    assert _files(run) == before  # nothing touched
    # the command line says the same and exits 1
    from driftless.cli import main

    args = ["train", "tokenizer", "--data", str(store), "--out", str(run), "--preset", "debug", "--steps", "1",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--clip-len", "4"]
    assert main(args) == 1 and _files(run) == before
    with pytest.raises(ValueError, match="contradict"):
        _train(store, run, resume=True, force=True)
    # --force starts over (a copy, so the module's run stays as it is)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    summary = _train(store, copy, steps=1, force=True)
    assert summary["step"] == 1 and checkpoint.read_train_state(copy / "checkpoint")["step"] == 1


@pytest.mark.parametrize("argv", [
    ["world", "build", "--tokenizer", "T", "--dynamics", "D"],
    ["train", "latents", "--data", "S", "--tokenizer", "T"],
    ["plan", "train", "--data", "M"],
    ["forecast", "train", "--data", "synthetic"],
    ["export", "onnx", "coinrun"],
    ["export", "web", "coinrun"],
])
def test_1_other_commands_refuse_an_out_that_holds_something(argv, tmp_path, capsys):
    """Worlds, latent caches, the showcases' checkpoints and exports (a folder a user may have
    pointed at anything) are as much work to remake as a training run: their commands refuse an --out that holds something (before reading any input)
    unless --force, and change nothing."""
    from driftless.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(argv + ["--out", str(out)]) == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_1_resume_never_starts_fresh_over_surviving_weights(trained_run, tmp_path):
    import shutil

    store, run = trained_run
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "checkpoint" / "config.json").unlink()  # the weights survive, their config does not
    before = _files(broken)
    with pytest.raises(checkpoint.CheckpointError, match="cannot resume.*Nothing was changed.*--force"):
        _train(store, broken, steps=4, resume=True)
    assert _files(broken) == before
    # an empty folder (or none) still starts fresh with --resume
    assert _train(store, tmp_path / "new", steps=1, resume=True)["step"] == 1


# ------------------------------------------------------------------------------------------------
# 9. weights are checked against the checksums recorded at save; a crash state loads everywhere
def _flip_a_weight_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    data[8 + header_len + (len(data) - 8 - header_len) // 2] ^= 0x10  # inside the tensor data
    path.write_bytes(bytes(data))


def test_9_bit_flipped_weights_are_refused_on_load_and_resume(trained_run, tmp_path):
    import shutil

    store, run = trained_run
    ckpt = tmp_path / "run" / "checkpoint"
    shutil.copytree(run, tmp_path / "run")
    assert set(checkpoint.verify(ckpt)) == {"model.safetensors", "ema.safetensors", "train_state.pt"}
    registry.load_model(ckpt)
    _flip_a_weight_bit(ckpt / "ema.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="ema.safetensors is truncated or corrupt.*SHA-256"):
        registry.load_model(ckpt)
    with pytest.raises(checkpoint.CheckpointError, match="cannot resume.*SHA-256"):
        _train(store, tmp_path / "run", steps=4, resume=True)
    # the shipped world records its checksums too
    from driftless.world.world import ASSETS

    assert checkpoint.verify(ASSETS / "coinrun" / "dynamics") == ["model.safetensors"]


def test_9_load_reads_the_old_copy_a_crash_left(tmp_path):
    from driftless.world.debug import make_debug_world

    world = make_debug_world(tmp_path / "w")
    ref = driftless.load(world).rollout(np.zeros((1, 64, 64, 3), np.uint8), [1, 2], seed=0)
    os.replace(world, tmp_path / "w.old")  # the state between the two renames of a save
    np.testing.assert_array_equal(driftless.load(world).rollout(np.zeros((1, 64, 64, 3), np.uint8), [1, 2], seed=0),
                                  ref)
    tok = tmp_path / "tok"
    cfg = registry.preset("tokenizer", "debug")
    checkpoint.save(tok, "tokenizer", to_dict(cfg), registry.build("tokenizer", cfg).state_dict())
    os.replace(tok, tmp_path / "tok.old")
    assert driftless.load(tok).dynamics is None  # a lone tokenizer checkpoint, from its .old copy


# ------------------------------------------------------------------------------------------------
# 2, 3 and 10 (warnings): ingestion names every failure, takes any file name, streams frames
def _write_video(path: Path, n: int, size: int = 16, rate: int = 30) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.width, s.height, s.pix_fmt = size, size, "yuv420p"
        for i in range(n):
            img = np.zeros((size, size, 3), np.uint8)
            img[:, :, 0] = (7 * i) % 256
            img[: size // 2, (i % size), 1] = 255
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def test_2_a_file_name_that_is_not_utf8_is_ingested_and_failures_are_named(tmp_path):
    pytest.importorskip("av")
    from driftless.data.store import EpisodeStore

    src = tmp_path / "in"
    src.mkdir()
    _write_video(src / "a.mp4", 6)
    _write_video(src / "tmp.mp4", 5)
    os.rename(src / "tmp.mp4", os.path.join(os.fsencode(src), b"caf\xe9.mp4"))  # Latin-1 bytes, not UTF-8
    with open(os.path.join(os.fsencode(src), b"bro\xffken.mp4"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(3000))
    _write_video(src / "z.mp4", 4)
    out = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(Path(driftless.__file__).parents[1])}
    r = __import__("subprocess").run([sys.executable, "-m", "driftless", "data", "videos", "--in", str(src),
                                      "--out", str(out), "--size", "16"], capture_output=True, text=True,
                                     env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    store = EpisodeStore(out)
    assert sorted(store.info(i)["source"] for i in range(store.num_episodes)) == ["a.mp4", "caf\\xe9.mp4", "z.mp4"]
    assert "ingested 3" in r.stdout and "1 failed" in r.stdout and "failed: bro\\xffken.mp4:" in r.stdout
    # the warning names the file, and not the line of driftless that raised it
    assert "warning: skipping unreadable video bro\\xffken.mp4" in r.stderr
    assert "videos.py" not in r.stderr and "warnings.warn" not in r.stderr


def test_2_any_failure_of_one_file_is_named_and_counted(tmp_path, monkeypatch):
    pytest.importorskip("av")
    import driftless.data.videos as videos

    src = tmp_path / "in"
    src.mkdir()
    for name, n in (("a.mp4", 3), ("b.mp4", 4), ("c.mp4", 5)):
        _write_video(src / name, n)
    real = videos.square_resize

    def fails_on_b(img, size, area=False):  # e.g. a bug or an odd pixel format, for one file only
        if img.getpixel((0, 0))[0] == 0 and img.size == (16, 16) and fails_on_b.file == "b.mp4":
            raise KeyError("pixel format")
        return real(img, size, area)

    real_read = videos.read_video

    def read(path, **kw):
        fails_on_b.file = Path(path).name
        return real_read(path, **kw)

    monkeypatch.setattr(videos, "square_resize", fails_on_b)
    monkeypatch.setattr(videos, "read_video", read)
    with pytest.warns(UserWarning, match="b.mp4"):
        summary = videos.ingest_videos(src, tmp_path / "store", size=16, verbose=False)
    assert summary["ingested"] == 2 and summary["failed_files"] == ["b.mp4"]
    assert "KeyError" in summary["errors"]["b.mp4"]


def test_3_ingestion_streams_frames_instead_of_holding_the_video(tmp_path):
    pytest.importorskip("av")
    import tracemalloc

    from driftless.data.store import EpisodeStore
    from driftless.data.videos import ingest_videos

    src = tmp_path / "in"
    src.mkdir()
    n = 1000  # 1000 frames of 32x32x3: 3.1 MB held whole (twice: a list, then a stack) before
    _write_video(src / "long.mp4", n)
    tracemalloc.start()
    try:
        summary = ingest_videos(src, tmp_path / "store", size=32, verbose=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["frames"] == n and EpisodeStore(tmp_path / "store").num_frames == n
    assert peak < 1.5e6, f"ingestion held {peak / 1e6:.1f} MB of a {n * 32 * 32 * 3 / 1e6:.1f} MB video"


# ------------------------------------------------------------------------------------------------
# 4. a batch of sessions too large for memory is refused up front; stateless calls go in chunks
def _zeros(b, t=1):
    return np.broadcast_to(np.zeros((1, 1, 64, 64, 3), np.uint8), (b, t, 64, 64, 3))


def test_4_a_batch_that_does_not_fit_is_refused_before_any_work(monkeypatch):
    from driftless import runtime

    world = driftless.load("coinrun")
    monkeypatch.setattr(runtime, "available_memory", lambda device: 16 * 2**30)  # a 16 GiB machine
    per = world.session_bytes(1)
    assert 5e6 < per < 1e8  # the shipped world: its KV caches, measured on one session
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"batch of 4096 sessions needs about .* GB .* at most \d+"):
        world.reset(_zeros(4096))
    with pytest.raises(ValueError, match="at most"):
        world.rollout(_zeros(4096), np.zeros((4096, 3), np.int64))
    assert time.perf_counter() - t < 1.0 and not world.in_session
    monkeypatch.setattr(runtime, "available_memory", lambda device: 4 * per)
    world.reset(_zeros(2))  # what fits still runs
    assert world.step(np.array([1, 2])).shape == (2, 64, 64, 3)


def test_4_stateless_calls_run_a_large_batch_in_chunks(debug_world, monkeypatch):
    import driftless.world.world as ww

    world = driftless.load(debug_world)
    video = np.random.default_rng(0).integers(0, 256, (6, 3, 64, 64, 3), dtype=np.uint8)
    z, acts = world.encode(video), world.infer_actions(video)
    frames = world.decode(z)
    seen = []
    real = world.tokenizer.encode
    monkeypatch.setattr(world.tokenizer, "encode", lambda v: seen.append(v.shape[0]) or real(v))
    monkeypatch.setattr(ww, "CHUNK_FRAMES", 6)  # two items of three frames per chunk
    np.testing.assert_allclose(world.encode(video), z, atol=1e-5)
    assert seen == [2, 2, 2]
    np.testing.assert_array_equal(world.infer_actions(video), acts)
    assert np.abs(world.decode(z).astype(int) - frames).max() <= 1


# ------------------------------------------------------------------------------------------------
# 6. sampling options are checked before anything runs; non-finite frames are detected
BAD_OPTIONS = [dict(temperature=float("nan")), dict(temperature=float("inf")), dict(cfg_scale=1e30),
               dict(cfg_scale=float("nan")), dict(eta=-1.0), dict(steps=0), dict(steps=2.5), dict(steps="4"),
               dict(steps=True), dict(window=0), dict(context_level=-1)]


def test_6_bad_sampling_values_are_refused_and_the_session_survives(debug_world):
    world, ref = driftless.load(debug_world), driftless.load(debug_world)
    ctx = np.zeros((2, 64, 64, 3), np.uint8)
    world.reset(ctx, seed=1)
    ref.reset(ctx, seed=1)
    for i, option in enumerate(BAD_OPTIONS):
        name = next(iter(option))
        with pytest.raises(ValueError, match="sampling option " + name):
            world.step(1, **option)
        np.testing.assert_array_equal(world.step(i % 4), ref.step(i % 4))  # the refused call changed nothing
        with pytest.raises(ValueError, match="sampling option " + name):
            world.rollout(ctx, [1], **option)  # (refused before it would reset the session)
    fresh = driftless.load(debug_world)
    for option in BAD_OPTIONS:
        with pytest.raises(ValueError, match="sampling option"):
            fresh.reset(ctx, **option)
        assert not fresh.in_session


def test_6_nonfinite_latents_raise_and_end_the_session(debug_world):
    world = driftless.load(debug_world)
    with pytest.raises(ValueError, match="latents must be finite"):
        world.decode(np.full((1, world.tokenizer.cfg.tokens_per_frame, world.tokenizer.cfg.latent_dim), np.nan,
                             np.float32))
    world.reset(np.zeros((2, 64, 64, 3), np.uint8))
    world.step(1)
    with torch.no_grad():  # weights gone bad (a diverged run): the model makes NaNs
        next(world.dynamics.frame.parameters()).fill_(float("nan"))
    from driftless.world.world import NonFiniteError

    with pytest.raises(NonFiniteError, match="NaN or infinite.*session was ended"):
        world.step(1)
    with pytest.raises(ValueError, match="no session"):
        world.step(1)
    with pytest.raises(NonFiniteError):
        world.rollout(np.zeros((2, 64, 64, 3), np.uint8), [1, 1], schedule="pyramid", chunk=2)


# ------------------------------------------------------------------------------------------------
# 10 (API). clear errors for a batch of 0, a string action, zero steps
def test_10_rough_edges_of_the_api_give_clear_errors(debug_world):
    world = driftless.load(debug_world)
    for call, match in ((lambda: world.reset(np.zeros((0, 1, 64, 64, 3), np.uint8)), "batch of 0"),
                        (lambda: world.encode(np.zeros((0, 2, 64, 64, 3), np.uint8)), "batch of 0"),
                        (lambda: world.rollout(np.zeros((0, 1, 64, 64, 3), np.uint8), np.zeros((0, 2), int)),
                         "batch of 0"),
                        (lambda: world.decode(np.zeros((0, 1, *world.encode(np.zeros((1, 64, 64, 3), np.uint8)).shape[1:]),
                                                       np.float32)), "at least one"),
                        (lambda: world.reset(np.zeros((1, 64, 64, 3), np.uint8), steps=0), "steps"),
                        (lambda: world.rollout(np.zeros((1, 64, 64, 3), np.uint8), ["1"]), "integers")):
        with pytest.raises(ValueError, match=match):
            call()
    world.reset(np.zeros((1, 64, 64, 3), np.uint8))
    for action in ("3", None, 2.5, [True], {"a": 1}):
        with pytest.raises(ValueError, match=r"actions must be integers in \[0, 4\)"):
            world.step(action)
    assert world.step(np.int64(3)).shape == (64, 64, 3)


# ------------------------------------------------------------------------------------------------
# 5, 7, 8: the play server (protocol driven directly, and a real uvicorn server on loopback)
class _Levels:
    """A start source in the I/O pool like Procgen's, without Procgen."""

    available, reason = True, ""

    def frame(self, level, rng):
        return np.full((1, 64, 64, 3), 90, np.uint8), {"level": 10500}

    def warm(self):
        pass


def _server(world, **options):
    from driftless.serve.protocol import PlayServer
    from driftless.serve.session import PlayConfig

    return PlayServer(world, PlayConfig.build(**options), level_source=_Levels())


def test_5_recording_downloads_neither_starve_players_nor_encode_twice(debug_world, monkeypatch):
    from driftless.serve import media
    from driftless.serve.protocol import Busy

    gate = threading.Event()
    real_mp4, real_add = media.encode_mp4, media.GifWriter.add
    added = []

    def slow_mp4(*args, **kw):  # an encode that takes as long as the test wants
        gate.wait(20)
        return real_mp4(*args, **kw)

    def counted_add(self, frame):
        added.append(1)
        return real_add(self, frame)

    monkeypatch.setattr(media, "encode_mp4", slow_mp4)
    monkeypatch.setattr(media.GifWriter, "add", counted_add)

    async def test(server):
        rec = Tab(server)
        await rec.ask({"type": "start", "source": "level"})
        await rec.ask({"type": "record", "on": True})
        for a in range(8):
            await rec.ask({"type": "step", "action": a % 4})
        await server.run_media(lambda: None)  # the media thread has caught up with the recording
        frames = rec.conn.session.recorded()
        assert len(added) == len(frames) == 9  # each frame encoded once, while it was recorded
        gif, kind, _ = await server.recording(rec.conn.session.id, "gif")
        assert len(added) == 9 and kind == "image/gif"
        assert (await server.recording(rec.conn.session.id, "gif"))[0] == gif and len(added) == 9  # nothing anew
        assert gif == media.encode_gif(frames, server.config.tick_fps, server.config.record_scale)
        # eight MP4 downloads at once: two encode or wait on the media thread, six are told to retry
        downloads = [asyncio.ensure_future(server.recording(rec.conn.session.id, "mp4")) for _ in range(8)]
        await asyncio.sleep(0.2)
        busy = [d for d in downloads if d.done() and isinstance(d.exception(), Busy)]
        assert len(busy) == 6
        try:  # meanwhile a new player starts at once: levels and frames do not queue behind encodes
            t = time.perf_counter()
            started, frame = await asyncio.wait_for(Tab(server).ask({"type": "start", "source": "level"}), 5)
            assert started["type"] == "started" and isinstance(frame, bytes)
            assert time.perf_counter() - t < 5
        finally:
            gate.set()
        for d in downloads:
            if d not in busy:
                data, kind, name = await d
                assert kind == "video/mp4" and name.endswith(".mp4") and len(data) > 100

    with _server(debug_world, max_pending_encodes=2, max_sessions=3) as server:
        asyncio.run(test(server))


def test_7_host_allowlist_refuses_a_dns_rebinding_page(debug_world):
    from fastapi.testclient import TestClient

    from driftless.serve.app import create_app
    from driftless.serve.protocol import Refused

    async def test(server):
        # the rebinding page's own name: Origin and Host agree, and it is still refused
        with pytest.raises(Refused) as e:
            server.open(lambda r: None, origin="http://rebind.attacker.example:8000", host="rebind.attacker.example:8000")
        assert e.value.reply["code"] == "host" and "--allow-host" in e.value.reply["message"]
        for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST.:8000", "192.168.1.7:8000"):
            Tab(server, origin=f"http://{host}", host=host).conn.close()

    with _server(debug_world) as server:
        asyncio.run(test(server))
    from driftless.serve.protocol import host_allowed

    assert host_allowed("play.example:8000", ("play.example",)) and host_allowed("anything", ("*",))
    assert not host_allowed("localhost.attacker.example", ()) and not host_allowed("127.0.0.1.nip.io", ())
    with TestClient(create_app(debug_world, warm=False), base_url="http://rebind.attacker.example") as client:
        r = client.get("/api/info")
        assert r.status_code == 421 and "--allow-host" in r.json()["error"]
        assert client.get("/").status_code == 421
        assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200
    with TestClient(create_app(debug_world, warm=False, allowed_hosts=["rebind.attacker.example"]),
                    base_url="http://rebind.attacker.example") as client:
        assert client.get("/api/info").status_code == 200


def test_8_a_client_that_stops_reading_loses_only_its_own_session(debug_world):
    async def test(server):
        async def never(reply):  # the socket's buffers are full: nothing is ever taken
            await asyncio.Event().wait()

        async def silence():
            await asyncio.sleep(3600)

        honest = Tab(server)
        stuck = server.open(never)
        t = time.perf_counter()
        slow = asyncio.ensure_future(stuck.serve(silence))
        await honest.ask({"type": "start", "source": "level"})
        for a in range(4):  # the other player's frames keep coming meanwhile
            (frame,) = await asyncio.wait_for(honest.ask({"type": "step", "action": a}), 2)
            assert isinstance(frame, bytes)
        assert await asyncio.wait_for(slow, 3) == "slow" and time.perf_counter() - t < 3
        assert server.manager.ids == [honest.conn.session.id]  # its place is free again
        Tab(server).conn.close()

    with _server(debug_world, max_sessions=2, send_timeout_s=0.5) as server:
        asyncio.run(test(server))


def _raw_websocket(port: int) -> socket.socket:
    """A WebSocket handshake from a client that will never read a byte."""
    import base64

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    return s


def test_8_sockets_that_never_read_lock_players_out_for_seconds_not_minutes(debug_world):
    """A real server on 127.0.0.1: two sockets that never read take both places; the server's
    keepalive drops them within ping_interval + ping_timeout and a player gets in."""
    pytest.importorskip("uvicorn")
    from websockets.sync.client import connect

    from driftless.serve.app import create_app, listen, make_server

    app = create_app(debug_world, warm=False, max_sessions=2, ping_interval_s=0.5, ping_timeout_s=1.0)
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = make_server(app, log_level="critical")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    raw = []
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        raw = [_raw_websocket(port) for _ in range(2)]
        time.sleep(0.2)
        assert len(app.state.manager) == 2  # every place taken by a socket that never reads
        t = time.perf_counter()
        first = None
        while time.perf_counter() - t < 8:
            with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2, close_timeout=1) as ws:
                first = json.loads(ws.recv(timeout=2))
                if first["type"] == "ready":
                    break
                assert first["code"] == "full"
            time.sleep(0.1)
        assert first is not None and first["type"] == "ready", first
        assert time.perf_counter() - t < 4  # (the server used to keep them for 80 s)
    finally:
        for s in raw:
            s.close()
        server.should_exit = True
        thread.join(10)


# ------------------------------------------------------------------------------------------------
# 10 (play). a busy port is an error before anything is printed
def test_10_play_on_a_busy_port_says_so_before_printing_a_url(capsys):
    pytest.importorskip("uvicorn")
    from driftless.cli import main

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        assert main(["play", "--port", str(busy.getsockname()[1]), "--device", "cpu"]) == 1
    finally:
        busy.close()
    out, err = capsys.readouterr()
    assert "already in use" in err and "--port" in err and "open http" not in out
