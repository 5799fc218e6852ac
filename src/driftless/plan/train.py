"""Training glue for the planning sequence models (Diffusion Forcing and the Diffuser-like baseline).

Both train through the shared `driftless.train.trainer.Trainer`, in memory (no run folder):
AdamW, linear warm-up then cosine decay to a tenth of the peak learning rate (`lr_at`),
gradient clipping, bf16 autocast on CUDA, and the Trainer's EMA weights, which are what gets
returned and saved. `fit` takes a sampler `sample(batch, generator) -> (x0, cond)` in data units
(random windows of a maze dataset, of the cross trajectories, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from driftless.plan import sequence_df as sdf
from driftless.plan.maze import MazeTokens, load_dataset
from driftless.plan.stage import SequenceOptions, maze_config
from driftless.train.memory import random_batches, train_in_memory
from driftless.train.trainer import TrainConfig

Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class FitConfig:
    steps: int = 2000
    batch: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    ema: float = 0.995
    grad_clip: float = 1.0
    seed: int = 0
    max_seconds: float = 0.0  # > 0: stop after this long; the learning-rate decay follows the clock
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the network for training
    log_every: int = 1  # steps per loss record (each record is a host sync: > 1 on a GPU keeps it busy)

    def trainer_config(self) -> TrainConfig:
        """The shared Trainer's settings: a loss record every `log_every` steps, nothing saved."""
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"fit needs steps >= 1 and batch >= 1, got {self.steps}, {self.batch}")
        return TrainConfig(steps=self.steps, batch_size=self.batch, lr=self.lr, min_lr=0.1 * self.lr,
                           warmup=self.warmup, weight_decay=self.weight_decay, beta2=0.999,
                           grad_clip=self.grad_clip or math.inf, ema_decay=self.ema, seed=self.seed,
                           precision="auto" if self.bf16 else "fp32", compile=self.compile,
                           log_every=max(1, self.log_every),
                           val_every=0, save_every=0, time_budget=self.max_seconds / 60)


def fit(model: sdf.SequenceDF, sample: Sampler, cfg: FitConfig,
        progress: bool = True) -> tuple[sdf.SequenceDF, list[float]]:
    """Train on batches from `sample(batch, generator) -> (x0, cond)` in data units (a CPU
    generator seeded per batch; samplers draw their indices with it). Returns (the EMA copy of
    the model, the loss of every logged step: every step with `log_every` 1, else of every
    `log_every`-th step)."""
    ema, trace, _ = fit_with_summary(model, sample, cfg, progress)
    return ema, trace


def fit_with_summary(model: sdf.SequenceDF, sample: Sampler, cfg: FitConfig,
                     progress: bool = True) -> tuple[sdf.SequenceDF, list[float], dict]:
    """`fit`, also returning the Trainer's summary (steps taken, why it stopped)."""
    tcfg = cfg.trainer_config()
    device = next(model.parameters()).device
    batches = random_batches(lambda b, g: dict(zip(("x0", "cond"), sample(b, g))), cfg.batch, cfg.seed)
    ema, log, summary = train_in_memory(model, tcfg, batches, device, sdf.SequenceDF.kind, progress)
    return ema, [r["loss"] for r in log], summary


TRAINING_ONLY = ("weighting", "min_snr_gamma", "sampling_steps")  # diffusion fields a continuation may change


def _continue_from(model: sdf.SequenceDF, path: str, device: str) -> None:
    """Load the weights of the checkpoint at `path` into `model`; refused, naming the fields,
    when it was made with another configuration (preset, baseline, frame stack, tokens, maze)."""
    from driftless.config import to_dict
    from driftless.models.registry import load_model

    src = load_model(path, device, kind=sdf.SequenceDF.kind)
    mine, theirs = to_dict(model.cfg), to_dict(src.cfg)
    keep = ("maze", "frame_stack", "tokens", "baseline")  # the provenance that must agree
    mine["meta"] = {k: v for k, v in mine["meta"].items() if k in keep}
    for d in (mine, theirs):  # how a model is trained or sampled is not what it is: may change between runs
        for k in TRAINING_ONLY:
            d.get("diffusion", {}).pop(k, None)
    theirs["meta"] = {k: v for k, v in theirs.get("meta", {}).items() if k in keep}
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        raise ValueError(f"--init-from {path}: a model of another configuration ("
                         + "; ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in diff)
                         + "); continue it with the same --preset, --baseline, --frame-stack, --tokens and maze")
    model.load_state_dict({k: v.float() for k, v in src.state_dict().items()})


def train_maze_model(data_path: str, out: str, baseline: str | None, preset: str, steps: int, batch: int,
                     lr: float, frame_stack: int, tokens: int | None, device: str, seed: int = 0,
                     progress: bool = True, max_minutes: float = 0.0, compile: bool = False,
                     half: bool = False, init_from: str | None = None, overrides: dict | None = None,
                     bf16: bool = True) -> dict:
    """Train a Diffusion-Forcing (or Diffuser-like) sequence model on a maze dataset; save it.
    `init_from`: a checkpoint of the same configuration to continue (its EMA weights, a fresh
    optimizer and schedule): a model trained over several short GPU sessions. `overrides`:
    config fields by dotted name (`--set`), e.g. {"diffusion.weighting": "uniform"}."""
    data = load_dataset(data_path)
    if preset not in sdf.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(sdf.PRESETS)}")
    options = SequenceOptions(baseline=baseline, frame_stack=frame_stack, tokens=tokens)
    cfg = maze_config(sdf.PRESETS[preset], data, data_path, options, overrides)  # the stage's (plan/stage.py)
    tokens = cfg.max_tokens
    windows = MazeTokens(data, tokens, frame_stack, device=device)
    model = sdf.SequenceDF(cfg).to(device)
    model.set_stats(**windows.stats())
    if init_from:
        _continue_from(model, init_from, device)
    # on a GPU a loss record every 25 steps: each is a host sync, and the small models step in milliseconds
    on_gpu = torch.device(device).type == "cuda"
    log_every = 25 if on_gpu else 1
    ema, trace, summary = fit_with_summary(
        model, windows.sample, FitConfig(steps=steps, batch=batch, lr=lr, seed=seed, max_seconds=60 * max_minutes,
                                         compile=compile, log_every=log_every, bf16=bf16), progress=progress)
    tail = trace[-max(1, 100 // log_every):]
    meta = {"steps": int(summary["step"]), "batch": batch, "stopped": summary["stopped"],
            "precision": "bf16" if bf16 and on_gpu else "fp32",
            "final_loss": sum(tail) / len(tail) if tail else None}
    sdf.save(ema, out, meta=meta, half=half)
    return {"out": str(out), "tokens": tokens, "params": sum(p.numel() for p in model.parameters()), **meta}
