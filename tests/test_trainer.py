import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from driftless import checkpoint
from driftless.train.distributed import DistInfo
from driftless.train.stages import StageArgs, run_stage
from driftless.train.trainer import TrainConfig, Trainer, lr_at

from conftest import make_store


def _stage(store, out, steps, stop_after=0, resume=False, kind="tokenizer"):
    train = TrainConfig(steps=steps, batch_size=2, warmup=2, log_every=2, val_every=0, save_every=100,
                        stop_after=stop_after, seed=3)
    # the LAM leaves its VQ warm-up after 2 steps, so a resume crosses its k-means step and the
    # quantised phase's dead-code resets
    overrides = {"vq_warmup": 2} if kind == "lam" else {}
    return run_stage(StageArgs(kind=kind, data=str(store), out=str(out), preset="debug", train=train,
                               workers=0, device="cpu", resume=resume, clip_len=4, stats_batches=2,
                               overrides=overrides))


def _weights(path, ema=False):
    return checkpoint.read_weights(path, ema=ema)


@pytest.mark.parametrize("kind", ["tokenizer", "lam"])
def test_resume_continues_exactly(tmp_path, kind):
    store = make_store(tmp_path / "store", episodes=3, length=10)
    _stage(store.root, tmp_path / "straight", 6, kind=kind)
    first = _stage(store.root, tmp_path / "split", 6, stop_after=3, kind=kind)
    assert first["stopped"] == "stop_after" and first["step"] == 3
    second = _stage(store.root, tmp_path / "split", 6, resume=True, kind=kind)
    assert second["step"] == 6
    a, b = tmp_path / "straight" / "checkpoint", tmp_path / "split" / "checkpoint"
    for ema in (False, True):
        wa, wb = _weights(a, ema), _weights(b, ema)
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{k} differs after resume (ema={ema})"
    sa, sb = checkpoint.read_train_state(a), checkpoint.read_train_state(b)
    assert sa["step"] == sb["step"] == 6 and sa["samples_seen"] == sb["samples_seen"]
    if kind == "tokenizer":  # latent statistics were fitted and stored after training
        assert checkpoint.read_header(b)["config"]["latent_mean"] is not None
    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r.get("split") == "train"] == [2, 4, 6]


class Flaky(nn.Module):
    """Loss is NaN on chosen steps."""

    def __init__(self, bad_steps):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.bad = set(bad_steps)
        self.calls = 0

    def training_loss(self, batch):
        loss = ((self.w - batch["x"]) ** 2).mean()
        if self.calls in self.bad:
            loss = loss * float("nan")
        self.calls += 1
        return loss, {}


def _batches(start):
    while True:
        yield {"x": torch.zeros(3)}


def test_nonfinite_steps_are_skipped_then_training_stops_with_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(steps=10, warmup=1, log_every=1, val_every=0, save_every=2, max_nonfinite=3, lr=0.1)
    model = Flaky(bad_steps={2})
    t = Trainer(model, cfg, tmp_path, DistInfo(), "toy", {"a": 1})
    summary = t.fit(_batches)
    assert summary["stopped"] == "steps" and summary["nonfinite_total"] == 1
    assert torch.isfinite(model.w).all()
    events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "event" in x]
    assert len(events) == 1 and events[0]["step"] == 2

    model2 = Flaky(bad_steps=set(range(4, 100)))
    t2 = Trainer(model2, cfg, tmp_path / "b", DistInfo(), "toy", {"a": 1})
    summary2 = t2.fit(_batches)
    assert summary2["stopped"] == "nonfinite"
    saved = checkpoint.read_weights(tmp_path / "b" / "checkpoint", ema=False)["w"]
    assert torch.isfinite(saved).all()
    assert checkpoint.read_train_state(tmp_path / "b" / "checkpoint")["step"] == 4  # last good save


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55, abs=1e-6)
    assert lr_at(55, cfg, time_fraction=1.0) == pytest.approx(0.1)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_identically(tmp_path):
    store = make_store(tmp_path / "store", episodes=4, length=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "driftless", "train", "tokenizer", "--data", str(store.root), "--out", str(tmp_path / "run"),
           "--preset", "debug", "--steps", "4", "--batch-size", "2", "--workers", "0", "--device", "cpu",
           "--clip-len", "4", "--warmup", "1", "--log-every", "2", "--val-every", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{") and "ranks_in_sync" in line]
    assert len(summaries) == 2, res.stdout
    assert all(s["ranks_in_sync"] for s in summaries)
    assert summaries[0]["weights_checksum"] == summaries[1]["weights_checksum"]
    state = checkpoint.read_train_state(tmp_path / "run" / "checkpoint")
    assert state["world_size"] == 2 and state["batch_size"] == 2
    # stopped halfway and resumed on 2 processes: the same weights as the uninterrupted run
    halves = [arg if arg != str(tmp_path / "run") else str(tmp_path / "halves") for arg in cmd]
    for extra in (["--stop-after", "2"], ["--resume"]):
        res = subprocess.run([*halves, *extra], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    resumed = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{") and "ranks_in_sync" in line]
    assert resumed and resumed[0]["step"] == 4
    assert resumed[0]["weights_checksum"] == summaries[0]["weights_checksum"]
    # resumed by one process: only with the same global batch (2 x 2), which continues the same data stream
    one = [sys.executable, "-m", "driftless", *cmd[cmd.index("driftless") + 1:], "--resume"]
    res = subprocess.run(one, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0 and "global batch 4" in res.stderr and "--batch-size 4" in res.stderr, res.stderr[-2000:]
    bigger = [*one, "--batch-size", "4", "--steps", "6"]
    res = subprocess.run(bigger, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    state = checkpoint.read_train_state(tmp_path / "run" / "checkpoint")
    assert state["step"] == 6 and state["world_size"] == 1 and state["batch_size"] == 4


@pytest.mark.slow
def test_torchrun_time_budget_keeps_ranks_identical(tmp_path):
    """A time-budgeted schedule reads the clock: every rank must step with the same learning rate
    (seen failing on 2 H200s, 2026-11-29: each rank read its own clock and the weights drifted apart)."""
    store = make_store(tmp_path / "store", episodes=4, length=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29519",
           "-m", "driftless", "train", "tokenizer", "--data", str(store.root), "--out", str(tmp_path / "run"),
           "--preset", "debug", "--steps", "100000", "--time-budget", "0.08", "--batch-size", "2", "--workers", "0",
           "--device", "cpu", "--clip-len", "4", "--warmup", "1", "--log-every", "3", "--val-every", "0",
           "--save-every", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{") and "ranks_in_sync" in line]
    assert len(summaries) == 2, res.stdout
    assert {s["stopped"] for s in summaries} == {"time_budget"}
    assert summaries[0]["step"] == summaries[1]["step"] > 6
    assert all(s["ranks_in_sync"] for s in summaries), summaries


def test_tensorboard_scalars_are_written(tmp_path):
    cfg = TrainConfig(steps=3, warmup=1, log_every=1, val_every=0, save_every=0, tensorboard=True)
    Trainer(Flaky(bad_steps=set()), cfg, tmp_path, DistInfo(), "toy", {"a": 1}).fit(_batches)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_in_memory_training_writes_nothing_and_keeps_its_log(tmp_path, monkeypatch):
    from driftless.train.memory import random_batches, train_in_memory

    monkeypatch.chdir(tmp_path)
    model = Flaky(bad_steps=set())
    cfg = TrainConfig(steps=6, warmup=1, log_every=2, val_every=0, save_every=2, lr=0.1, ema_decay=0.0)
    batches = random_batches(lambda b, g: {"x": torch.rand(3, generator=g)}, batch_size=1, seed=0)
    ema, log, summary = train_in_memory(model, cfg, batches, progress=False)
    assert summary["step"] == 6 and [r["step"] for r in log] == [2, 4, 6]
    assert list(tmp_path.iterdir()) == []  # no run folder, checkpoint or metrics file
    assert torch.equal(ema.w, model.w)  # ema_decay 0: the EMA copy is the model
    first = [next(batches(0))["x"], next(batches(4))["x"]]
    it = batches(0)
    assert [torch.equal(a, b) for a, b in zip(first, [next(it)["x"] for _ in range(5)][::4])] == [True, True]
    with pytest.raises(ValueError, match="diverged"):
        cfg.max_nonfinite = 3
        train_in_memory(Flaky(bad_steps=set(range(100))), cfg, batches, progress=False)


@pytest.mark.slow
def test_compiled_training_step_gives_the_eager_loss(tmp_path):
    """torch.compile (on by default with CUDA) changes how a step is computed, not what: on the
    CPU the compiled tokenizer's losses over three steps match the eager ones within 1e-4
    relative (kernels fuse and reorder float sums), and so do the weights after them."""
    import torch._inductor.config as inductor_config

    store = make_store(tmp_path / "store", episodes=3, length=10)
    losses, weights = {}, {}
    # compiled code draws its random numbers (the KL bottleneck's sample) from its own generator
    # unless told to use torch's: the same noise makes the two runs comparable. (The config's own
    # patch, not monkeypatch: monkeypatch's undo leaves the option hidden, and every later
    # torch.export in the process - the ONNX export tests - then fails reading it.)
    with inductor_config.patch(fallback_random=True):
        for compiled in (False, True):
            train = TrainConfig(steps=3, batch_size=2, warmup=1, log_every=1, val_every=0, save_every=100, seed=3,
                                compile=compiled)
            out = tmp_path / f"compiled-{compiled}"
            run_stage(StageArgs(kind="tokenizer", data=str(store.root), out=str(out), preset="debug", train=train,
                                workers=0, device="cpu", clip_len=4, stats_batches=1))
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            losses[compiled] = [r["loss"] for r in lines if r.get("split") == "train"]
            weights[compiled] = _weights(out / "checkpoint")
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    for k, w in weights[False].items():
        assert torch.allclose(weights[True][k], w, rtol=1e-3, atol=1e-5), k


def test_resume_a_checkpoint_saved_before_a_config_field_existed(tmp_path):
    """A field added to a model config later (with a default that keeps old behaviour) must not
    stop --resume of a run saved before it: the saved config is read with today's defaults."""
    store = make_store(tmp_path / "store", episodes=3, length=10)
    _stage(store.root, tmp_path / "run", 4, stop_after=2)
    cfg_path = tmp_path / "run" / "checkpoint" / "config.json"
    header = json.loads(cfg_path.read_text())
    for stack in ("encoder", "decoder"):
        del header["config"][stack]["temporal_window"]  # as written before the field existed
    cfg_path.write_text(json.dumps(header))
    assert _stage(store.root, tmp_path / "run", 4, resume=True)["step"] == 4


@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_compiled_lam_trains_past_its_vq_warm_up(tmp_path, monkeypatch, scope):
    """The LAM's k-means initialisation and dead-code resets rewrite its codebook during the
    forward pass. Traced by torch.compile, that rewrite was an in-place update of a parameter the
    compiled backward had saved, and the first step after the VQ warm-up failed (seen on the
    H200 under torchrun; compile scope "model" traces the codebook, "blocks" does not). AOT
    autograd's eager backend runs the same tracing without Inductor's code generation, which
    keeps this test short on a CPU."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    store = make_store(tmp_path / "store", episodes=3, length=10)
    train = TrainConfig(steps=5, batch_size=2, warmup=1, log_every=1, val_every=0, save_every=100, seed=3,
                        compile=True, compile_scope=scope)
    summary = run_stage(StageArgs(kind="lam", data=str(store.root), out=str(tmp_path / "lam"), preset="debug",
                                  train=train, workers=0, device="cpu", clip_len=4, overrides={"vq_warmup": 2}))
    lines = [json.loads(x) for x in (tmp_path / "lam" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if r.get("split") == "train"]
    assert summary["step"] == 5 and len(losses) == 5 and all(map(math.isfinite, losses))


class Blocks(nn.Module):
    """Two ST blocks and a record of whether they ran compiled."""

    def __init__(self):
        super().__init__()
        from driftless.nn.st_transformer import STBlock, STConfig

        cfg = STConfig(dim=16, depth=2, heads=2, cond_dim=0, temporal_window=4)
        self.blocks = nn.ModuleList([STBlock(cfg), STBlock(cfg)])
        self.seen = []

    def training_loss(self, batch):
        self.seen.append([b._compiled_call_impl is not None for b in self.blocks])
        h = batch["x"]
        for b in self.blocks:
            h = b(h, None, torch.arange(h.shape[1]))
        return h.pow(2).mean(), {}


def test_compile_scope_blocks_compiles_each_block_during_training_only(tmp_path, monkeypatch):
    """--compile-scope blocks (the default): every ST block runs compiled while the Trainer trains
    and is eager again afterwards (the model leaves as it came); scope model compiles the whole
    loss instead and leaves the blocks alone; a model without blocks is compiled whole."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))

    def batches(start):
        while True:
            yield {"x": torch.randn(2, 3, 4, 16)}

    for scope in ("blocks", "model"):
        model = Blocks()
        cfg = TrainConfig(steps=2, warmup=1, log_every=1, val_every=0, save_every=0, compile=True, compile_scope=scope)
        t = Trainer(model, cfg, tmp_path / scope, DistInfo(), "toy", {"a": 1})
        t.fit(batches)
        assert model.seen == [[scope == "blocks"] * 2] * 2
        assert all(b._compiled_call_impl is None for b in model.blocks)
        assert (t.forward is t._eager_forward) == (scope == "blocks")
    flat = Trainer(Flaky(bad_steps=set()), TrainConfig(steps=1, warmup=1, compile=True), tmp_path / "flat", DistInfo(),
                   "toy", {"a": 1})
    assert flat.forward is not flat._eager_forward  # torch.compile's wrapper: nothing to compile piecewise


def test_a_compile_cache_file_carries_the_compiled_artifacts(tmp_path):
    """--compile-cache FILE: a compiled run writes what it compiled to FILE, a later process
    hands it to torch.compile; a missing file is fine and a damaged one costs a compile, not the
    run (a warning names it)."""
    from driftless.train import compile_cache

    path = tmp_path / "cache" / "h200.bin"
    assert compile_cache.load(path) == 0
    cfg = TrainConfig(steps=2, warmup=1, log_every=1, val_every=0, save_every=0, compile=True,
                      compile_cache=str(path))
    Trainer(Flaky(bad_steps=set()), cfg, tmp_path / "run", DistInfo(), "toy", {"a": 1}).fit(_batches)
    assert path.stat().st_size > 0
    code = "from driftless.train import compile_cache; import sys; print(compile_cache.load(sys.argv[1]))"
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0 and int(res.stdout.split()[-1]) > 0, res.stderr[-2000:]
    path.write_bytes(b"not a cache")
    with pytest.warns(UserWarning, match="could not be read"):
        assert compile_cache.load(path) == 0


def test_a_model_can_ask_for_one_step_uncompiled(tmp_path, monkeypatch):
    """`eager_step` (read after before_train_step): that step's forward runs as plain Python,
    the others through the compiled graph, which is traced once (its Python runs only then)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))

    class OneEager(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))
            self.steps, self.eager_step, self.python_runs, self.after_3 = 0, False, [], None

        def before_train_step(self):
            self.steps += 1
            self.eager_step = self.steps == 3
            if self.steps == 4:
                self.after_3 = list(self.python_runs)

        def training_loss(self, batch):
            self.python_runs.append(torch.compiler.is_compiling())
            return ((self.w - batch["x"]) ** 2).mean(), {}

    model = OneEager()
    cfg = TrainConfig(steps=5, warmup=1, log_every=1, val_every=0, save_every=0, compile=True)
    Trainer(model, cfg, tmp_path, DistInfo(), "toy", {"a": 1}).fit(_batches)
    # traced at step 1; step 3 ran as Python, outside any compiled region; no other step did
    assert model.python_runs[0] is True and model.after_3[-1] is False and model.python_runs.count(False) == 1
