"""`driftless train world` under torchrun: two CPU processes (gloo) run the whole debug pipeline,
stop and continue it, and hand a run to another process count."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from driftless import checkpoint
from driftless.cli import main
from driftless.train.world_plan import TRAINED
from driftless.train.world_run import RUN_FILE

from conftest import world_weights

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(stores, out, *extra, nproc=2):
    """`torchrun --nproc-per-node NPROC -m driftless train world ...` on the debug preset."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(_free_port()), "-m", "driftless", "train", "world", "--data", str(stores / "toy-train"), "--out",
           str(out), "--preset", "debug", "--device", "cpu", "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def _summaries(stdout: str) -> list[dict]:
    """The summary lines of `train world` (the JSON objects with a "state")."""
    found = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "state" in record:
                found.append(record)
    return found


def _status(out) -> dict:
    return json.loads((out / RUN_FILE).read_text())


@pytest.fixture(scope="module")
def straight(world_stores, tmp_path_factory):
    """An uninterrupted two-process run: its folder and the torchrun result."""
    out = tmp_path_factory.mktemp("ddp") / "straight"
    return out, _torchrun(world_stores, out)


@pytest.mark.slow
def test_train_world_on_two_processes(straight):
    """Two processes: every trained stage runs DDP on both (its checkpoint says world_size 2, the
    ranks end in sync), rank 0 alone builds, evaluates and reports (one summary line)."""
    a, res = straight
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = _summaries(res.stdout)
    assert len(summaries) == 1, res.stdout
    assert summaries[0]["state"] == "done" and summaries[0]["world"] == str(a / "world")
    assert res.stdout.count("tokenizer   PSNR") == 1  # the evaluation's summary: rank 0 only
    status = _status(a)
    assert status["state"] == "done" and status["current"] is None
    assert all(e["state"] == "done" for e in status["stages"].values())
    assert status["invocations"][-1]["processes"] == 2
    for s in TRAINED:
        entry = status["stages"][s]
        assert entry["step"] == 4 and entry["processes"] == 2 and entry["ranks_in_sync"] is True, s
        state = checkpoint.read_train_state(a / s / "checkpoint")
        assert state["world_size"] == 2 and state["step"] == 4, s
        assert state["batch_size"] == status["plan"]["stages"][s]["batch_size"], s
    assert (a / "world" / "world.json").exists() and (a / "eval.json").exists()
    assert json.loads((a / "eval.json").read_text())["data"]["path"].endswith("toy-test")


@pytest.mark.slow
def test_a_two_process_run_stopped_and_continued_gives_the_same_world(world_stores, straight, tmp_path):
    """Stopped mid-dynamics and continued by the same command on two processes: the world of the
    uninterrupted run, bit for bit, and its evaluation."""
    a, first = straight
    assert first.returncode == 0, first.stderr[-3000:]
    b = tmp_path / "interrupted"
    res = _torchrun(world_stores, b, "--stop-after", "dynamics:1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert [s["state"] for s in _summaries(res.stdout)] == ["stopped"]
    status = _status(b)
    assert status["state"] == "stopped" and status["current"] == {"stage": "dynamics", "step": 1}
    assert not (b / "world").exists()
    res = _torchrun(world_stores, b)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [s["state"] for s in _summaries(res.stdout)] == ["done"]
    status = _status(b)
    assert status["state"] == "done" and len(status["invocations"]) == 2
    assert checkpoint.read_train_state(b / "dynamics" / "checkpoint")["world_size"] == 2
    wa, wb = world_weights(a), world_weights(b)
    for c in TRAINED:
        assert wa[c].keys() == wb[c].keys() and all(torch.equal(wa[c][k], wb[c][k]) for k in wa[c]), c
    ra, rb = (json.loads((x / "eval.json").read_text()) for x in (a, b))
    for key in ("reconstruction", "rollout", "delta", "drift"):
        assert ra[key] == rb[key], key


@pytest.mark.slow
def test_another_process_count_continues_a_stage_with_its_global_batch(world_stores, tmp_path):
    """A tokenizer stopped on 2 processes x batch 2 continues on 1 process x batch 4 (the same
    global batch, which the trainer allows); 3 processes cannot split it: refused once, by
    rank 0, and every rank exits instead of waiting for it."""
    out = tmp_path / "run"
    res = _torchrun(world_stores, out, "--stop-after", "tokenizer:2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert checkpoint.read_train_state(out / "tokenizer" / "checkpoint")["world_size"] == 2

    res = _torchrun(world_stores, out, nproc=3)
    assert res.returncode != 0
    assert res.stderr.count("error: cannot continue the tokenizer stage") == 1, res.stderr[-3000:]
    assert "global batch 4" in res.stderr and "divides 4" in res.stderr
    assert "]: Traceback" not in res.stderr  # no rank's traceback ([rankN]: ...): the ranks exit cleanly
    state = checkpoint.read_train_state(out / "tokenizer" / "checkpoint")
    assert state["world_size"] == 2 and state["step"] == 2  # nothing was trained

    rc = main(["train", "world", "--data", str(world_stores / "toy-train"), "--out", str(out), "--preset", "debug",
               "--device", "cpu", "--no-progress", "--stop-after", "tokenizer"])
    assert rc == 0
    state = checkpoint.read_train_state(out / "tokenizer" / "checkpoint")
    assert (state["world_size"], state["batch_size"], state["step"]) == (1, 4, 4)
    entry = _status(out)["stages"]["tokenizer"]
    assert entry["state"] == "done" and entry["processes"] == 1 and entry["batch_size"] == 4
    assert [i["processes"] for i in _status(out)["invocations"]] == [2, 3, 1]


@pytest.mark.slow
def test_a_failure_on_rank_0_ends_every_rank(tmp_path):
    """Rank 0 checks the settings alone; when it refuses them, the other rank does not wait for
    it: both exit with status 1, and the error is said once (by rank 0). The two ranks are
    started by hand, as torchrun would, but without its agent (which would end rank 1 itself)."""
    port = _free_port()
    args = ["-m", "driftless", "train", "world", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"),
            "--preset", "debug", "--device", "cpu"]
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        procs.append(subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    try:
        results = [(p.communicate(timeout=120), p.returncode) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    (_, err0), rc0 = results[0]
    (out1, err1), rc1 = results[1]
    assert rc0 == rc1 == 1, (err0[-2000:], err1[-2000:])
    assert "error: --data" in err0 and "not an episode store" in err0
    assert "not an episode store" not in err1 and "Traceback" not in err1 and not out1, err1[-2000:]
    assert not (tmp_path / "run").exists()
