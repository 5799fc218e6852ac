"""What a `driftless train world` run is: its settings (`WorldRunConfig`, the command's flags),
the preset plans (`PLANS`: steps, batch sizes by device, learning rates, data sizes), the
settings a run folder belongs to (`identity`) and what each stage will do (`make_plan`).
No side effects here; train/world_run.py runs the plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from driftless.config import option, to_dict
from driftless.data.coinrun import PROCGEN_GAMES

STAGES = ("data", "tokenizer", "lam", "latents", "dynamics", "world", "eval")
TRAINED = ("tokenizer", "lam", "dynamics")
RESERVED = ("latents", "world", "eval")  # the stages paid from --reserve


# ---- presets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PresetPlan:
    """What a preset's run does unless a flag says otherwise."""

    budget: float  # minutes for the run (0: step-based)
    steps: dict  # stage -> optimizer steps of a step-based run (with a budget: no bound)
    batch: dict  # device type ("cuda" | "cpu") -> stage -> clips per step
    lr: dict  # stage -> peak learning rate
    warmup: int  # learning-rate warm-up steps (every stage)
    overrides: dict  # stage -> model-config overrides
    episodes: int  # --game: training episodes (validation: 1/16 of it, test: 1/4, at least 2 each)
    max_frames: int  # --game: frames per episode at most (0: whole episodes)
    log_every: int
    val_every: int
    save_every: int
    latent_batch: dict  # device type -> clips per batch when encoding the latent cache
    action_clips: int  # clips fitting the action map at world build
    eval: dict = field(default_factory=dict)  # EvalConfig values on top of the eval size
    plots: bool = True  # write the evaluation's figures (OUT/eval-plots)
    stats_batches: int = 64  # batches fitting the tokenizer's latent statistics


PLANS: dict[str, PresetPlan] = {
    # a smoke test of the whole pipeline: seconds on a CPU, a world that means nothing
    "debug": PresetPlan(
        budget=0, steps={"tokenizer": 4, "lam": 4, "dynamics": 4},
        batch={"cuda": {"tokenizer": 8, "lam": 8, "dynamics": 8}, "cpu": {"tokenizer": 2, "lam": 2, "dynamics": 4}},
        lr={"tokenizer": 3e-4, "lam": 3e-4, "dynamics": 3e-4}, warmup=2, overrides={}, episodes=6, max_frames=40,
        log_every=2, val_every=4, save_every=2, latent_batch={"cuda": 64, "cpu": 8}, action_clips=8,
        eval={"clips": 2, "horizon": 3, "delta_t": 2, "recon_clips": 2, "recon_len": 4, "drift_frames": 8,
              "drift_rollouts": 2, "drift_bin": 4, "drift_window": 4, "strip_every": 4, "bank_size": 32,
              "reference_size": 16, "action_clips": 4, "controls_starts": 4, "controls_frames": 4, "batch_size": 4},
        plots=False, stats_batches=4),
    # the shipped world's size; GPU batches measured on an H200 (docs/benchmarks.md, section 5)
    "small": PresetPlan(
        budget=60, steps={"tokenizer": 20000, "lam": 20000, "dynamics": 20000},
        batch={"cuda": {"tokenizer": 192, "lam": 96, "dynamics": 256}, "cpu": {"tokenizer": 16, "lam": 8, "dynamics": 16}},
        lr={"tokenizer": 5e-4, "lam": 3e-4, "dynamics": 3e-4}, warmup=100, overrides={"lam": {"vq_warmup": 200}},
        episodes=700, max_frames=0, log_every=50, val_every=1000, save_every=500,
        latent_batch={"cuda": 256, "cpu": 16}, action_clips=512),
    "base": PresetPlan(
        budget=240, steps={"tokenizer": 100000, "lam": 100000, "dynamics": 100000},
        batch={"cuda": {"tokenizer": 48, "lam": 32, "dynamics": 128}, "cpu": {"tokenizer": 4, "lam": 4, "dynamics": 4}},
        lr={"tokenizer": 3e-4, "lam": 3e-4, "dynamics": 3e-4}, warmup=500, overrides={"lam": {"vq_warmup": 200}},
        episodes=2000, max_frames=0, log_every=50, val_every=2000, save_every=1000,
        latent_batch={"cuda": 128, "cpu": 8}, action_clips=512),
}
UNBOUNDED_STEPS = 10**9  # the step bound of a time-budgeted stage that was given none


@dataclass
class WorldRunConfig:
    """One run of `driftless train world` (each field with help is a flag)."""

    out: str = option(help="run folder: one subfolder per stage, world/, eval.json, run.json")
    data: str | None = option(None, metavar="STORE",
                              help="training episode store (driftless data coinrun|videos); its val and test stores "
                                   "are found beside it (STORE-val / STORE-test for a STORE-train, or the val/ and "
                                   "test/ folders next to a train/ one) unless given")
    game: str | None = option(None, choices=PROCGEN_GAMES,
                              help="instead of --data: generate random-agent episodes of this Procgen game into "
                                   "OUT/data (train, val, test level splits)")
    val_data: str | None = option(None, metavar="STORE", help="validation store (validation, action map)")
    test_data: str | None = option(None, metavar="STORE", help="test store for the evaluation")
    preset: str = option("small", choices=tuple(PLANS), help="model size preset of every stage (default small)")
    budget: float | None = option(None, metavar="MIN",
                                  help="wall-clock minutes of the whole run (on one GPU: GPU-minutes; under "
                                       "torchrun: the job's minutes, all its GPUs at once), data generation "
                                       "excluded; 0: each stage trains a fixed number of steps instead "
                                       "(exactly reproducible); default: the preset's (debug 0, small 60, base 240)")
    shares: str = option("0.4,0.2,0.4", metavar="TOK,LAM,DYN",
                         help="how the training part of --budget is split over tokenizer, LAM and dynamics "
                              "(default 0.4,0.2,0.4); 0 keeps a stage's --init-from weights untrained "
                              "(e.g. 0,0.35,0.65 with --init-from tokenizer=CKPT)")
    reserve: float = option(0.1, metavar="FRACTION", help="fraction of --budget kept for the latent cache, world build and evaluation "
                                      "(default 0.1)")
    tokenizer_steps: int = option(0, metavar="N", help="tokenizer optimizer steps (0: the preset's; with a budget: no bound)")
    lam_steps: int = option(0, metavar="N", help="LAM optimizer steps (0: the preset's; with a budget: no bound)")
    dynamics_steps: int = option(0, metavar="N", help="dynamics optimizer steps (0: the preset's; with a budget: no bound)")
    tokenizer_batch: int = option(0, metavar="N", help="tokenizer clips per step and process (0: the preset's for the "
                                                       "device; small on a GPU: 192)")
    lam_batch: int = option(0, metavar="N", help="LAM clips per step and process (0: the preset's for the device; small "
                                                 "on a GPU: 96)")
    dynamics_batch: int = option(0, metavar="N", help="dynamics clips per step and process (0: the preset's for the "
                                                      "device; small on a GPU: 256)")
    episodes: int = option(0, metavar="N", help="--game: training episodes to generate (0: the preset's: debug 6, small 700, "
                                   "base 2000); validation gets 1/16 and test 1/4 as many (at least 2)")
    max_frames_per_episode: int = option(-1, metavar="N", help="--game: cut episodes to this many frames (0: whole episodes; "
                                                  "default: the preset's, debug 40, else whole)")
    eval_size: str = option("auto", choices=("auto", "quick", "full"),
                            help="evaluation protocol: quick (minutes on a CPU), full (every published figure); "
                                 "auto (default): full on CUDA, quick elsewhere")
    sampling_steps: int = option(0, metavar="N", help="default sampling steps per frame written into world.json (0: the "
                                         "world's default)")
    init_from: str | None = option(None, metavar="WORLD",
                                   help="start every stage from the weights of an earlier world (a world folder, a "
                                        "shipped world's name, or an earlier train-world run folder), with fresh "
                                        "optimizers: a world trained over several runs; or name single checkpoints "
                                        "per stage, tokenizer=CKPT[,lam=CKPT][,dynamics=CKPT] (the others start "
                                        "fresh)")
    seed: int = option(0, help="seed of the data generation, initial weights, data order and evaluation")
    overrides: dict = field(default_factory=dict)  # "STAGE.KEY" -> value (--set tokenizer.bottleneck=vq)
    # ---- this invocation only (not part of the run's identity)
    device: str | None = option(None, help="cpu | cuda | cuda:N (default: cuda when available)")
    workers: int | None = option(None, metavar="N", help="DataLoader worker processes (default: 4 on CUDA, 0 on a CPU)")
    max_minutes: float = option(0.0, metavar="MIN", help="stop this invocation after this many minutes, with a checkpoint where "
                                          "it stopped; the same command again continues")
    stop_after: str | None = option(None, metavar="STAGE[:STEPS]",
                                    help="stop this invocation once STAGE is done, or after STEPS more optimizer "
                                         "steps of it; the same command again continues")
    force: bool = option(False, help="start over: remove what an earlier run wrote in OUT")
    progress: bool = option(True, help="progress lines and bars (--no-progress: fewer)")
    compile_cache: str | None = option(None, metavar="FILE",
                                       help="torch.compile artifacts of every stage: read when FILE exists, "
                                            "rewritten after each stage; carry it to a fresh machine of the same GPU "
                                            "kind and PyTorch version to skip most compile time (unpickled by "
                                            "PyTorch: only a file you wrote)")


INVOCATION = ("device", "workers", "max_minutes", "stop_after", "force", "progress", "compile_cache")


# ---- a run's identity and plan -------------------------------------------------------------------
def _abs(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else path


def identity(cfg: WorldRunConfig) -> dict:
    """The settings a run folder belongs to: every field but OUT and this invocation's, with the
    preset's defaults filled in and paths made absolute."""
    plan = PLANS[cfg.preset]
    d = {k: v for k, v in to_dict(cfg).items() if k not in INVOCATION and k != "out"}
    d["budget"] = plan.budget if cfg.budget is None else float(cfg.budget)
    for stage in TRAINED:
        d[f"{stage}_steps"] = cfg.__dict__[f"{stage}_steps"] or (0 if d["budget"] else plan.steps[stage])
    if cfg.game:
        d["episodes"] = cfg.episodes or plan.episodes
        d["max_frames_per_episode"] = plan.max_frames if cfg.max_frames_per_episode < 0 else cfg.max_frames_per_episode
    for key in ("data", "val_data", "test_data"):
        d[key] = _abs(d[key])
    if cfg.init_from and "=" in cfg.init_from:
        d["init_from"] = ",".join(f"{stage}={_abs(ckpt)}" for stage, ckpt in init_pairs(cfg.init_from))
    elif cfg.init_from and Path(cfg.init_from).exists():
        d["init_from"] = _abs(cfg.init_from)
    return json.loads(json.dumps(d))


def init_pairs(text: str) -> list[tuple[str, str]]:
    """--init-from's per-stage form "tokenizer=CKPT[,lam=CKPT]..." -> [(stage, checkpoint), ...]
    as written (`world_run._init_sources` checks them)."""
    return [(stage.strip(), ckpt) for stage, _, ckpt in (part.partition("=") for part in text.split(","))]


def parse_shares(text: str) -> dict[str, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise ValueError(f"--shares takes three numbers TOK,LAM,DYN, none negative and not all 0 (0: the stage "
                         f"keeps its --init-from weights untrained), got {text!r}")
    return {s: v / sum(values) for s, v in zip(TRAINED, values)}


def make_plan(cfg: WorldRunConfig, device: str) -> dict:
    """What each stage will do (frozen in run.json at the first start: a run continued on another
    device keeps its batch sizes and budgets)."""
    plan = PLANS[cfg.preset]
    ident = identity(cfg)
    budget = ident["budget"]
    if budget < 0 or not 0 <= cfg.reserve < 1:
        raise ValueError(f"--budget must be >= 0 and --reserve in [0, 1), got {budget}, {cfg.reserve}")
    shares = parse_shares(cfg.shares)
    dev = "cuda" if torch.device(device).type == "cuda" else "cpu"
    stages = {}
    for s in TRAINED:
        # a share of 0: the stage takes its --init-from weights as they are (0 steps: no compile,
        # no training; it writes its checkpoint, a tokenizer with the statistics it came with)
        steps = 0 if shares[s] == 0 else ident[f"{s}_steps"] or UNBOUNDED_STEPS
        stages[s] = {"steps": steps, "time_budget": round(budget * (1 - cfg.reserve) * shares[s], 4),
                     "batch_size": cfg.__dict__[f"{s}_batch"] or plan.batch[dev][s], "lr": plan.lr[s],
                     "warmup": min(plan.warmup, max(1, steps // 5)), "log_every": plan.log_every,
                     "val_every": plan.val_every, "save_every": plan.save_every}
    out = {"device": device, "budget": budget, "reserve_minutes": round(budget * cfg.reserve, 4), "stages": stages,
           "latent_batch": plan.latent_batch[dev], "action_clips": plan.action_clips,
           "stats_batches": plan.stats_batches, "plots": plan.plots,
           "eval": {"size": cfg.eval_size, **plan.eval}}  # (the runner resolves "auto" for the device)
    if cfg.game:
        n = ident["episodes"]
        out["data"] = {"game": cfg.game, "episodes": {"train": n, "val": max(2, -(-n // 16)), "test": max(2, -(-n // 4))},
                       "max_frames_per_episode": ident["max_frames_per_episode"]}
    return out


def stage_overrides(cfg: WorldRunConfig) -> dict[str, dict]:
    """The preset's model-config overrides per stage with --set STAGE.KEY=VALUE on top."""
    out = {s: dict(PLANS[cfg.preset].overrides.get(s, {})) for s in TRAINED}
    for key, value in cfg.overrides.items():
        stage, dot, rest = key.partition(".")
        if stage not in TRAINED or not dot or not rest:
            raise ValueError(f"--set takes STAGE.KEY=VALUE with STAGE one of {list(TRAINED)}, got {key!r}")
        out[stage][rest] = value
    return out


def stop_rule(text: str | None) -> tuple[str, int | None] | None:
    if not text:
        return None
    stage, _, steps = text.partition(":")
    if stage not in STAGES:
        raise ValueError(f"--stop-after takes STAGE or STAGE:STEPS with STAGE one of {list(STAGES)}, got {text!r}")
    if steps:
        if stage not in TRAINED or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"--stop-after {text}: STEPS (a positive number) only for a training stage {list(TRAINED)}")
        return stage, int(steps)
    return stage, None


def differences(old: dict, new: dict) -> list[str]:
    return [f"{k.replace('_', '-')} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
