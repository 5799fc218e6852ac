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
