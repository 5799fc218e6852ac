"""The CoinRun recipe: data -> tokenizers + LAM -> latent caches -> dynamics -> worlds -> eval.

SUPERSEDED by `driftless train world` (src/driftless/train/world_run.py, docs/training.md), which
trains one world per run folder with each stage alone on the GPU, a --budget, and resume. This
script is kept unchanged as the provenance of the shipped world and of the figures of
docs/benchmarks.md, section 1 (which ran several variants side by side on one GPU).

This is how the shipped `coinrun` world and the figures in docs/benchmarks.md were made. It
drives the `driftless` command only (so every figure has a command behind it), runs jobs that
share a GPU side by side with wall-time budgets, records every command in `ROOT/commands.txt`,
and keeps `ROOT/status.json` up to date so a supervisor can follow or pack partial results.

    python tools/coinrun_recipe.py run  --root /tmp/run --profile gpu
    python tools/coinrun_recipe.py pack --root /tmp/run --out $OUT
    python tools/coinrun_recipe.py run  --root /tmp/smoke --profile smoke    # minutes on a CPU

Stages can be chosen with --stages (comma separated): data, stage1, latents, stage2, worlds, eval.
A stage whose outputs exist is skipped, so a second `run` continues where the first stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PY = [sys.executable, "-m", "driftless"]


@dataclass
class Job:
    name: str
    args: list[str]
    after: list[str] = field(default_factory=list)


@dataclass
class Profile:
    episodes: dict[str, int]
    workers: int
    max_frames: int | None
    stage1: list[Job]
    stage2: list[Job]
    worlds: dict[str, dict]  # world name -> {"tokenizer", "lam", "dynamics"} job names
    ship: str  # which world is the shipped one
    eval_args: list[str]
    drift_pairs: list[tuple[str, str]]
    latent_batch: int = 256


def _train(kind, name, preset, budget, batch, extra=(), data="train", val="val"):
    args = ["train", kind, "--data", f"@{data}", "--out", f"@runs/{name}", "--preset", preset,
            "--batch-size", str(batch), "--steps", "10000000", "--time-budget", str(budget),
            "--log-every", "100", "--val-every", "2000", "--save-every", "2000", *extra]
    if val:
        args += ["--val-data", f"@{val}"]
    return Job(name, args)


def gpu_profile(t1: float, t2: float) -> Profile:
    """One H100, ~12 minutes: small models with large batches (they are launch-bound)."""
    lam_extra = ["--set", "vq_warmup=200", "--workers", "5", "--warmup", "100"]
    tok_extra = ["--workers", "5", "--lr", "5e-4", "--warmup", "100"]
    dyn_extra = ["--warmup", "100"]
    return Profile(
        episodes={"train": 700, "val": 40, "test": 160}, workers=16, max_frames=None,
        stage1=[
            _train("tokenizer", "tok-small", "small", t1, 192, tok_extra),
            _train("tokenizer", "tok-vq", "small", t1, 192, tok_extra + ["--set", "bottleneck=vq"]),
            _train("lam", "lam", "small", t1, 64, lam_extra),
        ],
        stage2=[
            _train("dynamics", "dyn-df", "small", t2, 96, dyn_extra, data="lat-train", val="lat-val"),
            _train("dynamics", "dyn-tf", "small", t2, 96, dyn_extra + ["--teacher-forcing"], data="lat-train",
                   val="lat-val"),
            _train("dynamics", "dyn-gt", "small", t2, 96, dyn_extra + ["--actions", "true"], data="lat-train",
                   val="lat-val"),
            _train("dynamics", "dyn-add", "small", t2, 96, dyn_extra + ["--set", "action_conditioning=additive"],
                   data="lat-train", val="lat-val"),
        ],
        worlds={
            "small": {"tokenizer": "tok-small", "lam": "lam", "dynamics": "dyn-df"},
            "small-tf": {"tokenizer": "tok-small", "lam": "lam", "dynamics": "dyn-tf"},
            "small-gt": {"tokenizer": "tok-small", "lam": "lam", "dynamics": "dyn-gt"},
            "small-add": {"tokenizer": "tok-small", "lam": "lam", "dynamics": "dyn-add"},
        },
        ship="small",
        eval_args=["--clips", "256", "--batch-size", "128", "--drift-frames", "1000", "--drift-rollouts", "4",
                   "--no-progress"],
        drift_pairs=[("small", "small-tf")],
        latent_batch=256,
    )


def smoke_profile() -> Profile:
    common = ["--workers", "0", "--log-every", "5", "--val-every", "10", "--save-every", "10", "--warmup", "2"]

    def small_job(kind, name, extra=(), data="train", val="val"):
        return Job(name, ["train", kind, "--data", f"@{data}", "--val-data", f"@{val}", "--out", f"@runs/{name}",
                          "--preset", "debug", "--steps", "10", "--batch-size", "2", *common, *extra])

    return Profile(
        episodes={"train": 4, "val": 2, "test": 2}, workers=2, max_frames=60,
        stage1=[small_job("tokenizer", "tok-small"), small_job("lam", "lam")],
        stage2=[small_job("dynamics", "dyn-df", data="lat-train", val="lat-val"),
                small_job("dynamics", "dyn-tf", ["--teacher-forcing"], data="lat-train", val="lat-val")],
        worlds={"small": {"tokenizer": "tok-small", "lam": "lam", "dynamics": "dyn-df"},
                "small-tf": {"tokenizer": "tok-small", "lam": "lam", "dynamics": "dyn-tf"}},
        ship="small",
        eval_args=["--clips", "4", "--drift-frames", "20", "--drift-rollouts", "2", "--batch-size", "4",
                   "--bank-size", "64", "--no-progress"],
        drift_pairs=[("small", "small-tf")],
        latent_batch=8,
    )


class Recipe:
    def __init__(self, root: Path, profile: Profile):
        self.root = root
        self.p = profile
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.status_path = self.root / "status.json"
        self.status = json.loads(self.status_path.read_text()) if self.status_path.exists() else {"stages": {}, "jobs": {}}

    # ---- bookkeeping ------------------------------------------------------------------------
    def save_status(self) -> None:
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status, indent=2))
        os.replace(tmp, self.status_path)

    def path(self, token: str) -> str:
        return str(self.root / token[1:]) if token.startswith("@") else token

    def command(self, args: list[str]) -> list[str]:
        return PY + [self.path(a) for a in args]

    def note(self, cmd: list[str]) -> None:
        with open(self.root / "commands.txt", "a") as f:
            f.write(" ".join(cmd).replace(sys.executable, "python") + "\n")

    def run_parallel(self, jobs: list[Job], stage: str) -> None:
        procs = {}
        for job in jobs:
            done = self.root / "runs" / job.name / "DONE"
            if done.exists():
                continue
            cmd = self.command(job.args)
            if (self.root / "runs" / job.name / "checkpoint" / "config.json").exists() and "--resume" not in cmd:
                cmd.append("--resume")
            self.note(cmd)
            log = open(self.root / "logs" / f"{job.name}.log", "a")
            procs[job.name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()), time.time())
            self.status["jobs"][job.name] = {"state": "running", "stage": stage, "cmd": " ".join(cmd)}
        self.save_status()
        while procs:
            time.sleep(5)
            for name, (proc, t0) in list(procs.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                self.status["jobs"][name] = {**self.status["jobs"][name], "state": "done" if rc == 0 else "failed",
                                             "rc": rc, "minutes": round((time.time() - t0) / 60, 2)}
                if rc == 0:
                    (self.root / "runs" / name / "DONE").touch()
                del procs[name]
                self.save_status()

    def run_one(self, args: list[str], log_name: str) -> int:
        cmd = self.command(args)
        self.note(cmd)
        with open(self.root / "logs" / f"{log_name}.log", "a") as log:
            return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)

    def stage(self, name: str, fn) -> None:
        if self.status["stages"].get(name, {}).get("state") == "done":
            return
        t0 = time.time()
        self.status["stages"][name] = {"state": "running", "started": t0}
        self.save_status()
        try:
            fn()
            state = "done"
        except Exception as e:  # keep going: later stages report what they can
            state = f"failed: {type(e).__name__}: {e}"
        self.status["stages"][name] = {"state": state, "minutes": round((time.time() - t0) / 60, 2)}
        self.save_status()

    # ---- stages ------------------------------------------------------------------------------
    def data(self) -> None:
        procs = []
        for split, n in self.p.episodes.items():
            share = max(1, self.p.workers * n // sum(self.p.episodes.values()))
            args = ["data", "coinrun", "--out", f"@{split}", "--episodes", str(n), "--split", split,
                    "--workers", str(share)]
            if self.p.max_frames:
                args += ["--max-frames-per-episode", str(self.p.max_frames)]
            cmd = self.command(args)
            self.note(cmd)
            procs.append(subprocess.Popen(cmd, stdout=open(self.root / "logs" / f"data-{split}.log", "a"),
                                          stderr=subprocess.STDOUT))
        if any(p.wait() != 0 for p in procs):
            raise RuntimeError("data generation failed; see logs/data-*.log")

    def latents(self) -> None:
        tok = f"@runs/tok-small/checkpoint"
        lam = f"@runs/lam/checkpoint"
        for split in ("train", "val"):
            if (self.root / f"lat-{split}" / "cache.json").exists():
                continue
            rc = self.run_one(["train", "latents", "--data", f"@{split}", "--tokenizer", tok, "--lam", lam,
                               "--out", f"@lat-{split}", "--batch-size", str(self.p.latent_batch)], f"latents-{split}")
            if rc:
                raise RuntimeError(f"latent cache for {split} failed; see logs/latents-{split}.log")

    def worlds(self) -> None:
        for name, parts in self.p.worlds.items():
            if not all((self.root / "runs" / j / "checkpoint" / "config.json").exists() for j in parts.values()):
                continue
            args = ["world", "build", "--tokenizer", f"@runs/{parts['tokenizer']}/checkpoint",
                    "--lam", f"@runs/{parts['lam']}/checkpoint", "--dynamics", f"@runs/{parts['dynamics']}/checkpoint",
                    "--out", f"@worlds/{name}", "--name", name, "--action-data", "@val"]
            if name == self.p.ship:
                args += ["--max-mb", "16"]
            self.run_one(args, f"world-{name}")

    def stage1_world(self) -> None:
        """Tokenizer + LAM as a world folder, packed early in case time runs out later."""
        if (self.root / "runs" / "tok-small" / "checkpoint" / "config.json").exists():
            args = ["world", "build", "--tokenizer", "@runs/tok-small/checkpoint", "--out", "@worlds/stage1",
                    "--name", "stage1"]
            if (self.root / "runs" / "lam" / "checkpoint" / "config.json").exists():
                args += ["--lam", "@runs/lam/checkpoint", "--action-data", "@val"]
            self.run_one(args, "world-stage1")

    def evaluate(self) -> None:
        (self.root / "eval").mkdir(exist_ok=True)
        drifting = {n for pair in self.p.drift_pairs for n in pair}
        procs = []
        for name in self.p.worlds:
            if not (self.root / "worlds" / name / "world.json").exists():
                continue
            skip = [] if name in drifting else ["--skip", "drift,fvd"]
            cmd = self.command(["eval", f"@worlds/{name}", "--data", "@test", "--json", f"@eval/{name}.json",
                                "--plots", f"@eval/{name}-plots", *self.p.eval_args, *skip])
            self.note(cmd)
            procs.append(subprocess.Popen(cmd, stdout=open(self.root / "logs" / f"eval-{name}.log", "a"),
                                          stderr=subprocess.STDOUT))
        ck = self.root / "runs" / "tok-vq" / "checkpoint"
        if (ck / "config.json").exists():
            cmd = self.command(["eval", str(ck), "--data", "@test", "--json", "@eval/tok-vq.json",
                                "--skip", "rollout,drift,actions,fvd", "--no-progress"])
            self.note(cmd)
            procs.append(subprocess.Popen(cmd, stdout=open(self.root / "logs" / "eval-tok-vq.log", "a"),
                                          stderr=subprocess.STDOUT))
        for p in procs:
            p.wait()
        ship = self.root / "worlds" / self.p.ship
        if ship.exists():
            self.run_one(["bench", "generate", str(ship), "--batch-sizes", "1,16,64", "--frames", "24",
                          "--repeats", "3", "--json", "@eval/bench-generate.json"], "bench-generate")

    def run(self, stages: list[str]) -> None:
        table = {"data": self.data, "stage1": lambda: self.run_parallel(self.p.stage1, "stage1"),
                 "stage1_world": self.stage1_world, "latents": self.latents, "stage2": lambda: self.run_parallel(self.p.stage2, "stage2"),
                 "worlds": self.worlds, "eval": self.evaluate}
        for s in stages:
            self.stage(s, table[s])
        self.status["finished"] = time.time()
        self.save_status()


def summarise(root: Path) -> dict:
    """Gather the last train/val metrics of every run and all eval JSONs into one dict."""
    out = {"runs": {}, "eval": {}}
    for run in sorted((root / "runs").glob("*")):
        m = run / "metrics.jsonl"
        if not m.exists():
            continue
        train, val, events = None, None, 0
        for line in m.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("split") == "train":
                train = r
            elif r.get("split") == "val":
                val = r
            elif "event" in r:
                events += 1
        out["runs"][run.name] = {"last_train": train, "last_val": val, "nonfinite_events": events}
    for e in sorted((root / "eval").glob("*.json")) if (root / "eval").exists() else []:
        try:
            out["eval"][e.stem] = json.loads(e.read_text())
        except json.JSONDecodeError:
            pass
    status = root / "status.json"
    out["status"] = json.loads(status.read_text()) if status.exists() else {}
    cmds = root / "commands.txt"
    out["commands"] = cmds.read_text().splitlines() if cmds.exists() else []
    return out


def _atomic_tar(path: Path, mode: str, add) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    with tarfile.open(tmp, mode) as tar:
        add(tar)
    os.replace(tmp, path)


def pack(root: Path, out: Path, ship: str = "small") -> None:
    """At most 8 files for $OUT, each replaced atomically (safe to run again and again while
    training goes on): summary.json, the shipped world (or the tokenizer + LAM world of stage 1
    while the dynamics is still training), plots, logs."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tmp-summary.json"
    tmp.write_text(json.dumps(summarise(root), indent=2))
    os.replace(tmp, out / "summary.json")
    for name in (ship, "stage1"):
        world = root / "worlds" / name
        if (world / "world.json").exists():
            _atomic_tar(out / "world.tar", "w", lambda tar: tar.add(world, arcname=name))
            break

    def plots(tar):
        last = {}
        for f in sorted(root.glob("runs/*/val/*.png")):
            last[f.parent.parent.name] = f
        for f in sorted(root.glob("eval/*-plots/*.png")) + list(last.values()):
            if f.stat().st_size < 2_000_000:
                tar.add(f, arcname=str(f.relative_to(root)))

    _atomic_tar(out / "plots.tar.gz", "w:gz", plots)

    def logs(tar):
        for f in list((root / "logs").glob("*.log")) + list((root / "runs").glob("*/metrics.jsonl")):
            tar.add(f, arcname=str(f.relative_to(root)))
        for f in (root / "eval").glob("*.json") if (root / "eval").exists() else []:
            tar.add(f, arcname=str(f.relative_to(root)))

    _atomic_tar(out / "logs.tar.gz", "w:gz", logs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("verb", choices=["run", "pack", "summary"])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--profile", default="gpu", choices=["gpu", "smoke"])
    ap.add_argument("--stages", default="data,stage1,stage1_world,latents,stage2,worlds,eval")
    ap.add_argument("--t1", type=float, default=3.3, help="minutes for tokenizers + LAM (gpu profile)")
    ap.add_argument("--t2", type=float, default=4.0, help="minutes for the dynamics models (gpu profile)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    profile = gpu_profile(a.t1, a.t2) if a.profile == "gpu" else smoke_profile()
    if a.verb == "run":
        Recipe(a.root, profile).run([s for s in a.stages.split(",") if s])
    elif a.verb == "pack":
        pack(a.root, a.out or a.root / "pack", profile.ship)
    else:
        print(json.dumps(summarise(a.root), indent=2))


if __name__ == "__main__":
    main()
