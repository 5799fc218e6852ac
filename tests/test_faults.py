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

import driftless
from driftless import checkpoint
from driftless.config import to_dict
from driftless.models import registry
from driftless.train.stages import StageArgs, run_stage
from driftless.train.trainer import TrainConfig

from conftest import make_store


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
    n = 1500  # 1500 frames of 32x32x3: 4.6 MB held whole (twice, list and stack) before
    _write_video(src / "long.mp4", n)
    tracemalloc.start()
    try:
        summary = ingest_videos(src, tmp_path / "store", size=32, verbose=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["frames"] == n and EpisodeStore(tmp_path / "store").num_frames == n
    assert peak < 1.5e6, f"ingestion held {peak / 1e6:.1f} MB of a {n * 32 * 32 * 3 / 1e6:.1f} MB video"
