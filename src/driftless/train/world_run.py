"""`driftless train world`: from an episode store (or a Procgen game) to a built and evaluated
world in one command, in one run folder OUT:

    data/{train,val,test}   (--game only) random-agent episodes of a Procgen game
    tokenizer/              run_stage("tokenizer"): checkpoint/, metrics.jsonl, val/
    lam/                    run_stage("lam")
    latents/{train,val}     the stores encoded once with the tokenizer and the LAM
    dynamics/               run_stage("dynamics") on the latent cache
    world/                  the three EMA checkpoints in fp16, the action map fitted on val
    eval.json, eval-plots/  `driftless eval` on the test store, sized to the device
    run.json                what is done, where the current stage is, minutes spent (atomic)
    init/                   (--init-from only) the checkpoints each stage starts from

Budget. `--budget` minutes of the job's wall clock (GPU-minutes on one GPU) cover the whole
run except making the data: `--reserve` of it is kept for the latent cache, the world build and
the evaluation, the rest is split over tokenizer / LAM / dynamics by `--shares`, and each stage
trains for its share with the cosine schedule laid over time (`TrainConfig.time_budget`). A
stage starting afresh gets its share of what is left (`WorldRun._replan`), so what earlier
stages spent outside their training loops (building, loading data, statistics) comes off later
stages instead of being added to the run.
`--budget 0` trains each stage a fixed number of steps instead (the preset's, or --*-steps):
exactly reproducible, the default of the debug preset.

Resume. run.json is written atomically after every stage and at every stop; running the same
command again skips finished stages and continues the current one from its last checkpoint
(`run_stage(resume=True)`: model, EMA, optimizer, step, data position). `--max-minutes` (a time
limit for this invocation) and `--stop-after STAGE[:STEPS]` stop cleanly with a checkpoint at
the stop; a crash or kill loses the steps since the stage's last checkpoint (`save_every`)
and restarts the latent cache, world build or evaluation it interrupted. Step-based runs end
with the same world as an uninterrupted run, bit for bit on a CPU (the trainer's
resume is exact, and the later stages are deterministic functions of the checkpoints);
time-budgeted runs resume at the same stage and step with the time already spent counted, but
how many steps a minute holds is not reproducible. A run folder belongs to one configuration:
a command with different settings is refused, naming the difference (`--force` starts over).

Several processes. `torchrun --nproc-per-node N -m driftless train world ...` takes the same
flags: the process group is set up once (`train.distributed.setup`; each rank on the GPU of its
LOCAL_RANK) and destroyed at the end. The trained stages run on every rank with DDP, exactly as
`driftless train STAGE` under torchrun (`run_stage`; the plan's batch sizes are per process, so
the global batch is N times the plan's). Everything else, data generation, the latent cache,
world build, evaluation, run.json and the progress lines, runs on rank 0 alone (`_on_main`),
and rank 0 takes every decision (what is left, each stage's budget and StageArgs, stops from
--stop-after and --max-minutes, which the trainer itself checks with all-rank collectives) and
broadcasts it with run.json's status, on a CPU (gloo) group whose long timeout lets the other
ranks wait out rank 0's solo work (`RANK0_WAIT`); the broadcast is also the barrier after which
they see what rank 0 wrote. An exception on rank 0 there reaches the others (`PeerFailed`): all
ranks exit with rank 0's status instead of waiting. Minutes are the job's wall-clock minutes,
as with one process (N GPUs for B budget minutes are N x B GPU-minutes). A stage stopped on N
processes continues on M with its global batch (M x batch = N x batch: `_resume_batch`, the
trainer's rule, `Trainer._check_global_batch`); an M that cannot split it is refused before
anything runs. Every rank reads the stores and the files rank 0 writes: one machine, or a
shared file system.

This module sits above world/ and eval/ (it builds and evaluates the world it trains); it is
the one module of train/ that does, and only the CLI imports it (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from driftless import checkpoint
from driftless.config import to_dict
from driftless.runtime import default_device
from driftless.train.distributed import DistInfo, broadcast_object, cleanup, control_group, setup
from driftless.train.specs import StageArgs
from driftless.train.world_plan import (RESERVED, STAGES, TRAINED, WorldRunConfig, differences, identity,
                                        init_pairs, make_plan, parse_shares, stage_overrides, stop_rule)

RUN_FILE = "run.json"
FORMAT = "driftless-train-world"
# what a run writes in OUT (and --force removes); anything else there is left alone
OUTPUTS = (RUN_FILE, "data", "init", "tokenizer", "lam", "latents", "dynamics", "world", "world.tmp", "eval.json",
           "eval-plots")


# how long the other ranks wait while rank 0 works alone (data generation, latent cache, world
# build, evaluation) before their wait times out; torchrun ends them sooner if rank 0 dies
RANK0_WAIT = timedelta(hours=24)


class RunStopped(Exception):
    """This invocation stops here (time limit or --stop-after); the run continues next time."""


class RunFailed(RuntimeError):
    """A stage failed for good (non-finite losses): the run needs other settings."""


class PeerFailed(RuntimeError):
    """Under torchrun, on a rank other than 0: rank 0 failed in a part it runs alone (its own
    error says why); this rank stops too, with the exit status rank 0 gives."""

    def __init__(self, code: int):
        super().__init__(f"rank 0 failed (exit status {code}); its error message says why")
        self.code = code


# ---- data and init sources -------------------------------------------------------------------------
def _is_store(path: Path) -> bool:
    from driftless.data.store import STORE_FILE

    return (path / STORE_FILE).exists()


def find_split(train: str, split: str) -> str | None:
    """The `split` store beside a training store: DATA/../<split> for DATA/train, X-<split> for
    X-train, else None."""
    p = Path(train)
    candidates = [p.parent / split] if p.name == "train" else []
    if p.name.endswith("-train"):
        candidates.append(p.with_name(p.name[: -len("train")] + split))
    return next((str(c) for c in candidates if _is_store(c)), None)


def _init_folder(path: str) -> Path:
    """The folder --init-from PATH names: PATH itself, else the shipped world of that name (a path
    that is neither is returned as given, and does not exist)."""
    from driftless.world.world import ASSETS

    p = Path(path)
    if not p.exists() and (ASSETS / path / "world.json").exists():
        return ASSETS / path
    return p


def _init_sources(path: str) -> dict[str, Path]:
    """The checkpoint each stage starts from: the full checkpoints of an earlier run folder, or
    the components of a world folder (a shipped world by name), or single checkpoints named per
    stage ("tokenizer=CKPT[,lam=CKPT][,dynamics=CKPT]"; the stages not named start fresh)."""
    if "=" in path:
        found = {}
        for stage, ckpt in init_pairs(path):
            if stage not in TRAINED or not ckpt:
                raise ValueError(f"--init-from {path}: expected STAGE=CHECKPOINT pairs with STAGE one of "
                                 f"{', '.join(TRAINED)}, got {stage}={ckpt!r}")
            if not (Path(ckpt) / "config.json").exists():
                raise FileNotFoundError(f"--init-from {stage}={ckpt}: no checkpoint there (a folder with config.json)")
            found[stage] = Path(ckpt)
        return found
    p = _init_folder(path)
    if not p.exists():
        raise FileNotFoundError(f"--init-from {path}: no such world folder, run folder or shipped world")
    if (p / RUN_FILE).exists():
        found = {s: p / s / "checkpoint" for s in TRAINED if (p / s / "checkpoint" / "config.json").exists()}
    elif (p / "world.json").exists():
        meta = json.loads((p / "world.json").read_text())
        found = {s: p / meta[s] for s in TRAINED if meta.get(s)}
    else:
        raise ValueError(f"--init-from {path}: neither a world folder (world.json) nor a train-world run folder "
                         f"({RUN_FILE})")
    if not found:
        raise ValueError(f"--init-from {path}: it holds no tokenizer, LAM or dynamics checkpoint")
    return found


def init_sampling(path: str) -> tuple[dict, Path | None]:
    """The sampling options (world.json's `sampling`: context level, temperature, steps, ...) of the
    world --init-from names - a world folder, a shipped world's name, or an earlier run folder's
    built world - and the world.json they came from; ({}, None) for single checkpoints per stage or
    a run folder without a built world. A continued dynamics model starts from the settings tuned
    for it (`driftless world tune` chooses again on the new weights)."""
    if "=" in path:
        return {}, None
    p = _init_folder(path)
    for meta_path in (p / "world.json", p / "world" / "world.json"):
        if meta_path.exists():
            return dict(json.loads(meta_path.read_text()).get("sampling") or {}), meta_path
    return {}, None


def _fit_init(args, source: Path) -> tuple[Any, dict, list[str]]:
    """(this stage's model config, its state dict holding the weights of `source`, the names left
    fresh) for `args` (the stage's StageArgs); refuses, naming tensors, when `source` was a model
    of another shape. Only a LAM's decoder may be missing (a world drops it at build)."""
    from driftless.models import registry
    from driftless.train.specs import get_stage
    from driftless.train.stages import fit_action_rows
    from driftless.world.build import LAM_DECODER_PREFIXES

    spec = get_stage(args.kind)
    a = spec.resolve(args)
    cfg, _ = spec.with_clip_len(spec.configure(registry.preset(a.kind, a.preset), a), a.clip_len)
    torch.manual_seed(a.train.seed)
    state = registry.build(a.kind, cfg).state_dict()
    header = checkpoint.read_header(source, a.kind)
    weights = checkpoint.read_weights(source, ema=True)
    weights, note = fit_action_rows(a.kind, state, weights)
    if note:
        print(f"--init-from {source}: {note}", flush=True)
    shape = [f"{k} {tuple(v.shape)} (here {tuple(state[k].shape)})" for k, v in weights.items()
             if k in state and v.shape != state[k].shape]
    unexpected = [k for k in weights if k not in state]
    fresh = [k for k in state if k not in weights]
    missing = [k for k in fresh if not (a.kind == "lam" and k.startswith(LAM_DECODER_PREFIXES))]
    if shape or unexpected or missing:
        was = header.get("meta", {}).get("preset")
        parts = [f"shapes differ: {', '.join(shape[:2])}" if shape else "",
                 f"unexpected: {', '.join(unexpected[:2])}" if unexpected else "",
                 f"missing: {', '.join(missing[:2])}" if missing else ""]
        raise ValueError(f"--init-from: the {a.kind} at {source} (preset {was!r}) does not fit this run's {a.kind} "
                         f"(preset {a.preset!r}, --set {a.overrides or {}}): " + "; ".join(p for p in parts if p))
    state.update({k: v.float() for k, v in weights.items()})
    return cfg, state, fresh


# fitted from data (they travel with the weights, init_checkpoint) or set when a world is built
NOT_ARCHITECTURE = ("latent_mean", "latent_std", "inference_only")


def adopted_overrides(stage: str, preset: str, source: Path, overrides: dict, user: set[str] = frozenset()) -> dict:
    """The model-config fields of the checkpoint at `source` that differ from `stage`'s config in
    `preset` with the run's `overrides` (the preset plan's and --set), as dotted overrides: a
    stage continued with --init-from keeps what it was trained with (its latent channels, its
    depth, its history dropout), except the fields --set gives (`user`), those the other
    components fix (the dynamics' latent width, grid and action count come from the tokenizer
    and LAM of this run) and those a checkpoint of an older version does not record."""
    from driftless.config import override
    from driftless.models import registry
    from driftless.models.compose import dynamics_fields

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = json.loads(json.dumps(v))  # tuples as lists, as the checkpoint has them
        return out

    saved = flat(checkpoint.read_header(source, stage).get("config", {}))
    base = flat(to_dict(override(registry.preset(stage, preset), overrides)))
    derived = set(dynamics_fields(1, (1, 1), 1)) | {"action_source"} if stage == "dynamics" else set()
    return {k: v for k, v in saved.items() if k in base and base[k] != v and k not in user and k not in derived
            and k.rpartition(".")[2] not in NOT_ARCHITECTURE}


def init_checkpoint(args, source: Path, dest: Path) -> str:
    """Write the checkpoint a stage starts from (`_fit_init`) to `dest`; returns its path."""
    cfg, state, fresh = _fit_init(args, source)
    header = checkpoint.read_header(source, args.kind)
    config = to_dict(cfg)
    for key in ("latent_mean", "latent_std"):  # a tokenizer's fitted statistics travel with it
        if key in config and header.get("config", {}).get(key) is not None:
            config[key] = header["config"][key]
    checkpoint.save(dest, args.kind, config, state,
                    meta={"source": str(source), "fresh": fresh, "preset": header.get("meta", {}).get("preset")})
    return str(dest)


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _last_val(metrics: Path) -> dict:
    last = {}
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                r = json.loads(line)
                if r.get("split") == "val":
                    last = r
    return last


# ---- the run -------------------------------------------------------------------------------------
class WorldRun:
    """One invocation on a run folder: opens (or starts) it, then runs what is left.

    Under torchrun (`info.enabled`) every rank makes a WorldRun: the trained stages run on all
    of them (DDP, `run_stage`), everything else on rank 0 alone (`_on_main`), which also takes
    every decision (what is left, budgets, stops) and hands it to the others."""

    def __init__(self, cfg: WorldRunConfig, info: DistInfo | None = None):
        self.cfg = cfg
        self.init: dict[str, Path] = {}
        self.out = Path(cfg.out)
        self.info = info if info is not None else DistInfo(device=torch.device(default_device(cfg.device)))
        # one process: the device as asked ("cuda"); under torchrun: this rank's GPU (cuda:LOCAL_RANK)
        self.device = str(self.info.device) if self.info.enabled else default_device(cfg.device)
        self.t0 = time.time()
        self.ctrl = control_group(self.info, RANK0_WAIT)
        self.workers = cfg.workers if cfg.workers is not None else (4 if self.device.startswith("cuda") else 0)
        self.status: dict = {}
        self.paths, self.init = self._on_main(self._prepare)
        if not self.info.is_main:  # the settings rank 0 checked, and the run folder rank 0 opened (status)
            self._settings()
        self.plan = self.status["plan"]

    def _settings(self) -> None:
        self.stop = stop_rule(self.cfg.stop_after)
        self.overrides = stage_overrides(self.cfg)
        # a continued stage keeps the architecture it was trained with (--set still wins)
        self.adopted = {s: adopted_overrides(s, self.cfg.preset, self.init[s], self.overrides[s],
                                             {k.partition(".")[2] for k in self.cfg.overrides if k.startswith(s + ".")})
                        for s in TRAINED if s in self.init}
        for stage, keys in self.adopted.items():
            self.overrides[stage] = {**self.overrides[stage], **keys}  # (keys holds no --set field)
        self.ident = identity(self.cfg)

    def _prepare(self) -> tuple[dict, dict]:
        """(rank 0) Check the settings, open the run folder, write run.json; returns the data
        stores and the --init-from checkpoints."""
        cfg = self.cfg
        if bool(cfg.data) == bool(cfg.game):
            raise ValueError("give either --data STORE or --game NAME (to generate the data)")
        self.init = _init_sources(cfg.init_from) if cfg.init_from else {}
        self._settings()
        for stage, keys in self.adopted.items():
            if keys:
                self._say(f"{stage} from {self.init[stage]}: keeps its " + ", ".join(f"{k}={v}" for k, v in keys.items())
                          + f" (preset {cfg.preset!r} differs; --set {stage}.KEY=VALUE to change)")
        kept = [s for s, share in parse_shares(cfg.shares).items() if share == 0 and s not in self.init]
        if kept:
            raise ValueError(f"--shares gives the {' and '.join(kept)} stage(s) 0, which keeps the weights --init-from "
                             f"gives them untrained, but --init-from gives none for them (e.g. --init-from "
                             f"{kept[0]}=CHECKPOINT, or a share above 0)")
        self.paths = self._data_paths()
        self.status = self._open()
        self.plan = self.status["plan"]
        for stage in ("tokenizer", "lam"):  # fail before any training when an --init-from part does not fit
            ckpt = self.out / stage / "checkpoint" / "config.json"
            if stage in self.init and not ckpt.exists():
                _fit_init(self._train_args(stage), self.init[stage])
        self.out.mkdir(parents=True, exist_ok=True)
        self._write()
        return self.paths, self.init

    # -- ranks
    def _on_main(self, fn: Callable[..., Any], *args) -> Any:
        """fn(*args) on rank 0 alone; the other ranks wait for it (on the control group, which
        also acts as the barrier: what rank 0 wrote is there when they go on), then take its
        result and run.json status. An exception on rank 0 reaches every rank: RunStopped as
        itself, anything else as PeerFailed (rank 0 raises its own), so no rank is left waiting
        in a collective the others skipped. One process: just fn(*args)."""
        if not self.info.enabled:
            return fn(*args)
        if self.info.is_main:
            try:
                result = fn(*args)
            except RunStopped as e:
                broadcast_object(("stopped", str(e), self.status), self.info, self.ctrl)
                raise
            except BaseException as e:
                with contextlib.suppress(Exception):  # (a peer that is gone: rank 0's own error matters more)
                    broadcast_object(("failed", _exit_code(e), None), self.info, self.ctrl)
                raise
            broadcast_object(("ok", result, self.status), self.info, self.ctrl)
            return result
        kind, value, status = broadcast_object(None, self.info, self.ctrl)
        if status is not None:
            self.status = status
            self.plan = status["plan"]
        if kind == "stopped":
            raise RunStopped(value)
        if kind == "failed":
            raise PeerFailed(value)
        return value

    # -- run folder
    def _open(self) -> dict:
        """The run's status: run.json of OUT when its settings are this run's, else a new one
        (written by the caller once the run can start)."""
        cfg, out = self.cfg, self.out
        run_file = out / RUN_FILE
        if cfg.force and out.exists():
            if not run_file.exists() and any(p.name not in OUTPUTS for p in out.iterdir()):
                raise ValueError(f"--force: {out} is not a train-world run folder (no {RUN_FILE}); not removing it")
            generated = run_file.exists() and bool(json.loads(run_file.read_text()).get("config", {}).get("game"))
            for name in OUTPUTS:
                if name == "data" and not generated:  # data/ that the earlier run did not make is not ours
                    continue
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        if run_file.exists():
            status = json.loads(run_file.read_text())
            if status.get("format") != FORMAT:
                raise ValueError(f"{run_file} is not a {FORMAT} status file")
            diff = differences(status["config"], self.ident)
            if diff:
                raise ValueError(f"{out} holds a run with other settings ({'; '.join(diff)}): run the same command "
                                 f"as before to continue it, choose another --out, or add --force to start over "
                                 f"(removes its stages)")
        elif out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} is not empty and holds no {RUN_FILE}: choose another --out (or --force, which "
                             f"removes only what a run writes)")
        else:
            from driftless.eval.evaluate import resolve_size

            plan = make_plan(self.cfg, self.device)
            plan["eval"]["size"] = resolve_size(plan["eval"]["size"], self.device)  # auto: by this device
            status = {"format": FORMAT, "version": 1, "config": self.ident, "plan": plan, "state": "running",
                      "stages": {}, "current": None, "minutes": 0.0, "invocations": []}
        active = [s for s in STAGES if s != "data" or self.cfg.game]
        for s in active:
            status["stages"].setdefault(s, {"state": "pending", "minutes": 0.0})
        status["invocations"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": self.device,
                                      "processes": self.info.world_size, "max_minutes": self.cfg.max_minutes,
                                      "stop_after": self.cfg.stop_after})
        return status

    def _write(self, status: dict | None = None) -> None:
        status = status or self.status
        status["minutes"] = round(sum(s["minutes"] for s in status["stages"].values()), 4)
        checkpoint.atomic_write_json(self.out / RUN_FILE, status)

    def _data_paths(self) -> dict[str, str | None]:
        cfg = self.cfg
        if cfg.game:
            return {s: str(self.out / "data" / s) for s in ("train", "val", "test")}
        train = cfg.data
        if not _is_store(Path(train)) and _is_store(Path(train) / "train"):
            train = str(Path(train) / "train")  # a folder holding train/ val/ test/
        if not _is_store(Path(train)):
            raise FileNotFoundError(f"--data {cfg.data}: not an episode store (no store.json)")
        val = cfg.val_data or find_split(train, "val")
        test = cfg.test_data or find_split(train, "test")
        for name, path in (("--val-data", val), ("--test-data", test)):
            if path and not _is_store(Path(path)):
                raise FileNotFoundError(f"{name} {path}: not an episode store (no store.json)")
        return {"train": train, "val": val, "test": test}

    # -- progress
    def _elapsed_s(self) -> float:
        return time.time() - self.t0

    def _remaining_minutes(self) -> float | None:
        if not self.cfg.max_minutes:
            return None
        return self.cfg.max_minutes - self._elapsed_s() / 60

    def _say(self, text: str) -> None:
        if self.cfg.progress:
            print(f"[train world] {text}", flush=True)

    def eta_minutes(self) -> float | None:
        """Budget minutes still planned (None for a step-based run)."""
        if not self.plan["budget"]:
            return None
        st = self.status["stages"]
        left = sum(max(0.0, self.plan["stages"][s]["time_budget"] - st[s]["minutes"]) for s in TRAINED
                   if st[s]["state"] != "done")
        reserved = sum(st[s]["minutes"] for s in RESERVED)
        pending = any(st[s]["state"] != "done" for s in RESERVED)
        return left + (max(0.0, self.plan["reserve_minutes"] - reserved) if pending else 0.0)

    def _announce(self, stage: str, batch: int | None = None) -> None:
        active = self.active
        st = self.status["stages"]
        spent = sum(st[s]["minutes"] for s in active if s != "data")
        head = f"{active.index(stage) + 1}/{len(active)} {stage}"
        if stage in TRAINED:
            p = self.plan["stages"][stage]
            ws = self.info.world_size
            if not p["steps"]:
                what = "0 steps: the --init-from weights as they are"
            else:
                what = (f"{p['time_budget']:.2f} min" if p["time_budget"] else f"{p['steps']} steps") + \
                       f", batch {batch or p['batch_size']}" + (f" x {ws} processes" if ws > 1 else "")
            head += f" ({what})"
        eta = self.eta_minutes()
        if eta is None:
            tail = f"run time {spent:.2f} min so far; step-based, each stage's bar shows its ETA"
        else:
            tail = f"{spent:.2f} of {self.plan['budget']:g} budget minutes spent, ETA {_minutes(eta * 60)}"
        self._say(f"{head} | {tail}")

    @property
    def active(self) -> list[str]:
        """This run's stages, in order (run.json keeps its keys sorted)."""
        return [s for s in STAGES if s in self.status["stages"]]

    # -- stages
    def run(self) -> dict | None:
        """Run what is left; returns the summary on rank 0 (None on the other ranks)."""
        try:
            for stage in self.active:
                work = self._on_main(self._begin, stage)  # None: done already; the StageArgs of a trained stage
                if work is None:
                    continue
                if stage in TRAINED:
                    summary = self._fit(stage, work)  # every rank
                    self._on_main(self._end_training, stage, summary, work.train.batch_size)
                else:
                    self._on_main(self._run_alone, stage)
            result = self._on_main(self._done)
        except RunStopped as stop:  # (every rank: rank 0's stop reaches them all through _on_main)
            result = self._on_main(self._stopped, str(stop))
        return result if self.info.is_main else None

    def _begin(self, stage: str) -> StageArgs | bool | None:
        """(rank 0) Whether `stage` runs now: None when it is done, else marks it running and
        returns what to run (a trained stage: its StageArgs; else True). Raises RunStopped at a
        stop (--stop-after, --max-minutes)."""
        entry = self.status["stages"][stage]
        if entry["state"] in ("done", "skipped"):
            self._check_stop(stage)
            return None
        remaining = self._remaining_minutes()
        if remaining is not None and remaining <= 0:
            raise RunStopped(f"time limit (--max-minutes {self.cfg.max_minutes:g}) reached before {stage}")
        work: StageArgs | bool = True
        if stage in TRAINED:
            self._replan(stage)
            work = self._train_args(stage, batch=self._resume_batch(stage))
        self._announce(stage, batch=work.train.batch_size if stage in TRAINED else None)
        entry["state"] = "running"
        self.status["current"] = {"stage": stage, "step": entry.get("step")}
        self._write()
        self._started = time.time()
        if stage in TRAINED:
            try:
                work = self._with_init(stage, entry, work)
            except BaseException:
                self._add_minutes(entry)
                raise
        return work

    def _add_minutes(self, entry: dict) -> None:
        entry["minutes"] = round(entry["minutes"] + (time.time() - self._started) / 60, 4)
        self._write()

    def _run_alone(self, stage: str) -> None:
        """(rank 0) A stage that is not trained: data, latents, world, eval."""
        entry = self.status["stages"][stage]
        try:
            getattr(self, f"_stage_{stage}")(entry)
        finally:
            self._add_minutes(entry)
        self._finished(stage, entry)

    def _finished(self, stage: str, entry: dict) -> None:
        entry["state"] = "done"
        self.status["current"] = None
        self._write()
        self._check_stop(stage)

    def _done(self) -> dict:
        self.status["state"] = "done"
        self.status["invocations"][-1]["ended"] = "done"
        self._write()
        self._say(f"done in {self.status['minutes']:.2f} min: world {self.out / 'world'}, evaluation "
                  f"{self.out / 'eval.json'}; play it: driftless play {self.out / 'world'}")
        return {"state": "done", "run": str(self.out), **self._summary()}

    def _stopped(self, reason: str) -> dict:
        self.status["state"] = "stopped"
        self.status["invocations"][-1]["ended"] = reason
        self._write()
        self._say(f"stopped: {reason}; the same command continues the run")
        return {"state": "stopped", "reason": reason, "run": str(self.out), **self._summary()}

    def _summary(self) -> dict:
        return {"world": str(self.out / "world") if (self.out / "world" / "world.json").exists() else None,
                "eval": str(self.out / "eval.json") if (self.out / "eval.json").exists() else None,
                "minutes": self.status["minutes"],
                "stages": {s: {k: v for k, v in self.status["stages"][s].items() if k in ("state", "step", "minutes")}
                           for s in self.active}}

    def _check_stop(self, stage: str) -> None:
        if self.stop and self.stop[0] == stage and self.stop[1] is None and stage != self.active[-1]:
            raise RunStopped(f"--stop-after {stage}")

    def _stage_data(self, entry: dict) -> None:
        from driftless.data.coinrun import generate

        d = self.plan["data"]
        for split, n in d["episodes"].items():
            generate(self.paths[split], n, split=split, workers=os.cpu_count() or 1, envs_per_worker=min(16, n),
                     seed=self.cfg.seed, max_frames_per_episode=d["max_frames_per_episode"] or None,
                     game=d["game"], verbose=self.cfg.progress)

    def _train_args(self, stage: str, batch: int | None = None) -> StageArgs:
        from driftless.train.specs import get_stage
        from driftless.train.trainer import TrainConfig

        p = self.plan["stages"][stage]
        remaining = self._remaining_minutes()
        stop_steps = self.stop[1] if self.stop and self.stop[0] == stage and self.stop[1] else 0
        train = TrainConfig(steps=p["steps"], batch_size=batch or p["batch_size"], lr=p["lr"], warmup=p["warmup"],
                            seed=self.cfg.seed, log_every=p["log_every"], val_every=p["val_every"],
                            save_every=p["save_every"], time_budget=p["time_budget"],
                            max_minutes=max(remaining, 1e-3) if remaining is not None else 0.0, stop_after=stop_steps,
                            compile_cache=self.cfg.compile_cache)
        if stage == "dynamics":
            data = str(self.out / "latents" / "train")
            val = self.out / "latents" / "val"
            val = str(val) if (val / "cache.json").exists() else None
        else:
            data, val = self.paths["train"], self.paths["val"]
        spec = get_stage(stage)
        return StageArgs(kind=stage, data=data, val_data=val, out=str(self.out / stage), preset=self.cfg.preset,
                         overrides=dict(self.overrides[stage]), train=train, workers=self.workers,
                         device=self.device, resume=(self.out / stage).exists(),
                         stats_batches=self.plan["stats_batches"], progress=self.cfg.progress,
                         options=spec.options() if spec.options is not None else None)

    def _resume_batch(self, stage: str) -> int | None:
        """The clips per step per process that continue a stage stopped mid-way: its global batch
        (processes x batch when it was saved) over this invocation's processes, so that the
        trainer's data stream and step size go on unchanged (`Trainer._check_global_batch`);
        None for a stage without a checkpoint (the plan's batch). A global batch that this
        process count does not divide is refused before anything runs."""
        from driftless.train.trainer import saved_batch

        ckpt = self.out / stage / "checkpoint"
        if checkpoint.find(ckpt) is None or (state := checkpoint.read_train_state(ckpt)) is None:
            return None
        saved_ws, saved_bs = saved_batch(state)
        ws = self.info.world_size
        if not saved_bs or saved_ws == ws:
            return saved_bs
        total = saved_bs * saved_ws
        if total % ws:
            fits = [n for n in range(1, total + 1) if total % n == 0]
            raise ValueError(f"cannot continue the {stage} stage of {self.out} on {ws} processes: it was trained by "
                             f"{saved_ws} process(es) x batch {saved_bs} (global batch {total}), and a stage continues "
                             f"only with its global batch (the same data order and step size), which {ws} processes "
                             f"cannot split. Continue it on a process count that divides {total} "
                             f"({', '.join(map(str, fits[:8]))}{', ...' if len(fits) > 8 else ''}: torchrun "
                             f"--nproc-per-node N, or no torchrun for 1), or finish it with {saved_ws}")
        self._say(f"{stage} continues on {ws} process(es) x batch {total // ws}: the global batch {total} it was "
                  f"trained with by {saved_ws} x {saved_bs}")
        return total // ws

    def _replan(self, stage: str) -> None:
        """A budgeted stage that starts afresh gets its share of what is left of the budget (what
        earlier stages spent beyond their time budgets, building models, loading data, fitting
        statistics, comes off the stages still to run), at least a tenth of its planned share;
        recorded in run.json so that a resumed stage keeps its budget."""
        p = self.plan["stages"][stage]
        if not self.plan["budget"] or not p["steps"] or (self.out / stage / "checkpoint" / "config.json").exists():
            return
        st = self.status["stages"]
        p.setdefault("planned_time_budget", p["time_budget"])
        later = TRAINED[TRAINED.index(stage):]
        planned = sum(self.plan["stages"][s].get("planned_time_budget", self.plan["stages"][s]["time_budget"])
                      for s in later)
        spent = sum(st[s]["minutes"] for s in self.active if s != "data")
        reserve_left = max(0.0, self.plan["reserve_minutes"] - sum(st[s]["minutes"] for s in RESERVED))
        available = self.plan["budget"] - spent - reserve_left
        p["time_budget"] = round(max(p["planned_time_budget"] * available / planned, 0.1 * p["planned_time_budget"]), 4)
        self._write()

    def _with_init(self, stage: str, entry: dict, args: StageArgs) -> StageArgs:
        """(rank 0) `args` starting from the --init-from checkpoint, written to OUT/init, when the
        stage has none of its own yet."""
        ckpt = self.out / stage / "checkpoint"
        if stage not in self.init or (ckpt / "config.json").exists():
            return args
        entry["init_from"] = str(self.init[stage])
        return dataclasses.replace(args, init_from=init_checkpoint(args, self.init[stage], self.out / "init" / stage))

    def _fit(self, stage: str, args: StageArgs) -> dict:
        """Train `stage` (every rank: DDP under torchrun, in the process group set up once)."""
        from driftless.train.stages import run_stage

        try:
            return run_stage(args)
        except BaseException:
            if self.info.is_main:  # the stage's minutes so far, as for any stage that fails
                self._add_minutes(self.status["stages"][stage])
            raise

    def _end_training(self, stage: str, summary: dict, batch: int) -> None:
        """(rank 0) Record a trained stage's outcome: done, stopped (RunStopped) or failed (RunFailed)."""
        entry = self.status["stages"][stage]
        entry.update(step=summary["step"], stopped=summary["stopped"], checkpoint=summary["checkpoint"],
                     processes=self.info.world_size)
        if "ranks_in_sync" in summary:  # DDP: whether every rank ended with the same weights
            entry["ranks_in_sync"] = summary["ranks_in_sync"]
        if batch != self.plan["stages"][stage]["batch_size"]:  # continued on another process count
            entry["batch_size"] = batch
        else:
            entry.pop("batch_size", None)
        self.status["current"] = {"stage": stage, "step": summary["step"]}
        self._add_minutes(entry)
        if summary["stopped"] == "nonfinite":
            entry["state"] = "failed"
            self.status["state"] = "failed"
            self._write()
            raise RunFailed(f"{stage} stopped on non-finite losses at step {summary['step']}; see "
                            f"{self.out / stage / 'metrics.jsonl'} (its last good checkpoint is kept)")
        if summary["stopped"] not in ("steps", "time_budget"):
            entry["state"] = "stopped"
            self._write()
            raise RunStopped(f"{stage} stopped at step {entry.get('step')} ({entry.get('stopped')})")
        entry["val"] = {k: v for k, v in _last_val(self.out / stage / "metrics.jsonl").items() if k not in ("split",)}
        self._finished(stage, entry)

    def _stage_latents(self, entry: dict) -> None:
        from driftless.data.latents import build_latent_cache
        from driftless.data.store import EpisodeStore
        from driftless.models.registry import load_model

        tok_path, lam_path = self.out / "tokenizer" / "checkpoint", self.out / "lam" / "checkpoint"
        tok = load_model(tok_path, self.device, kind="tokenizer")
        lam = load_model(lam_path, self.device, kind="lam")
        cuda = self.device.startswith("cuda")
        for split in ("train", "val"):
            dest = self.out / "latents" / split
            if self.paths[split] is None or (dest / "cache.json").exists():
                continue
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda) if cuda else contextlib.nullcontext():
                build_latent_cache(EpisodeStore(self.paths[split]), tok, dest, lam=lam,
                                   batch_size=self.plan["latent_batch"], device=self.device,
                                   tokenizer_path=str(tok_path), lam_path=str(lam_path), progress=self.cfg.progress)

    def _stage_world(self, entry: dict) -> None:
        from driftless.world.build import build_world, fit_world_action_map, keys_are_game_actions

        ck = {s: self.out / s / "checkpoint" for s in TRAINED}
        source = self.paths["val"] or self.paths["train"]
        action_map = None
        if keys_are_game_actions(ck["dynamics"]):  # build_world gives it the game's own actions as keys
            entry["action_map"] = "keys are the game's own actions (dynamics on true actions)"
        else:
            try:
                action_map = fit_world_action_map(ck["lam"], source, device=self.device,
                                                  max_clips=self.plan["action_clips"])
                entry["action_map_accuracy"] = action_map["accuracy"]
            except ValueError as e:  # a store without true actions (videos): no keyboard map
                entry["action_map"] = f"not fitted: {e}"
        sampling = {}
        if "dynamics" in self.init:  # the continued dynamics' tuned settings (--sampling-steps wins)
            sampling, source_json = init_sampling(self.cfg.init_from)
            if sampling:
                entry["sampling_from"] = str(source_json)
                self._say(f"world: sampling settings of {source_json} kept ({sampling}); `driftless world tune` "
                          f"chooses them again for the new weights")
        if self.cfg.sampling_steps:
            sampling["steps"] = self.cfg.sampling_steps
        name = self.cfg.game or Path(self.paths["train"]).name.removesuffix("-train")
        build_world(self.out / "world", ck["tokenizer"], ck["dynamics"], ck["lam"], fp16=True, sampling=sampling,
                    action_map=action_map, name=name,
                    extra={"trained_by": {"command": "driftless train world", "run": str(self.out.resolve()),
                                          "config": self.ident, "plan": self.plan}})

    def _stage_eval(self, entry: dict) -> None:
        from driftless.data.store import EpisodeStore
        from driftless.eval.evaluate import evaluate, sized_config
        from driftless.eval.plots import write_all
        from driftless.world.world import load

        test = self.paths["test"] or self.paths["val"] or self.paths["train"]
        note = {self.paths["test"]: "test store", self.paths["val"]: "no test store: the validation store"}.get(
            test, "no test or validation store: the training store (the figures are not held-out ones)")
        world = load(self.out / "world", device=self.device)
        e = self.plan["eval"]
        cfg = sized_config(e["size"], self.device, seed=self.cfg.seed, progress=self.cfg.progress,
                           **{k: v for k, v in e.items() if k != "size"})
        store = EpisodeStore(test)
        torch.manual_seed(self.cfg.seed)
        result, artifacts = evaluate(world, store, cfg)
        result["data"] = {"path": test, "which": note, "episodes": store.num_episodes, "frames": store.num_frames}
        result["world_path"] = str(self.out / "world")
        if self.plan["plots"]:
            result["plots"] = write_all(result, artifacts, self.out / "eval-plots")
        checkpoint.atomic_write_json(self.out / "eval.json", result)
        entry["size"] = cfg.size
        for key, path in (("rollout_psnr", ("rollout", "psnr")), ("delta_psnr", ("delta", "delta_psnr")),
                          ("recon_psnr", ("reconstruction", "psnr"))):
            node: Any = result
            for k in path:
                node = node.get(k) if isinstance(node, dict) else None
            if node is not None:
                entry[key] = node


def _exit_code(e: BaseException) -> int:
    """The exit status `driftless train world` gives for an exception (rank 0's, for the others)."""
    if isinstance(e, RunFailed):
        return 3
    if isinstance(e, KeyboardInterrupt):
        return 130
    return 1


def train_world(cfg: WorldRunConfig) -> dict | None:
    """Run (or continue) `driftless train world`; returns {"state": "done" | "stopped", "run",
    "world", "eval", "minutes", "stages"} (under torchrun on rank 0, None on the other ranks).
    Under torchrun the process group is set up here once, used by every stage, and destroyed
    at the end."""
    info = setup(cfg.device)
    try:
        return WorldRun(cfg, info).run()
    finally:
        cleanup()
