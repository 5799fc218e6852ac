"""Training glue and checkpoints for the Diffusion-Forcing forecaster (small; CPU is enough).

Training windows of C + H steps are cut at uniformly random positions of the (grouped)
training series and fed to the shared `driftless.train.trainer.Trainer` (in memory, no run
folder): AdamW, linear warm-up then cosine decay to zero (`lr_at`), gradient clipping, and
the Trainer's EMA copy of the weights, which is what gets sampled from and saved.

A checkpoint is one folder of kind "forecaster": config {"model": ForecasterConfig,
"train": ForecastTrainConfig}, the (EMA) weights in model.safetensors, and free-form meta.
Load it with `driftless.models.registry.load_model(path, kind="forecaster")`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from driftless import checkpoint
from driftless.config import to_dict
from driftless.forecast.data import ForecastDataset
from driftless.forecast.model import Forecaster
from driftless.train.memory import random_batches, train_in_memory
from driftless.train.trainer import TrainConfig

KIND = "forecaster"


@dataclass
class ForecastTrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0  # 0: no clipping
    ema: float = 0.995  # 0: no averaging (the EMA copy follows the weights)
    seed: int = 0
    log_every: int = 100

    def trainer_config(self) -> TrainConfig:
        """The shared Trainer's settings: the cosine decays to zero, fp32, not compiled, nothing saved."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, min_lr=0.0, warmup=self.warmup,
                           weight_decay=self.weight_decay, beta2=0.999, grad_clip=self.grad_clip or math.inf,
                           ema_decay=self.ema, seed=self.seed, precision="fp32", compile=False,
                           log_every=self.log_every, val_every=0, save_every=0)


class WindowSampler:
    """Random windows {"window" (b, C + H, D), "t0" (b,) start indices} from one (T, D) series."""

    def __init__(self, series: np.ndarray, window: int):
        if series.ndim != 2:
            raise ValueError(f"expected a (T, D) training series, got shape {series.shape}")
        if series.shape[0] < window:
            raise ValueError(f"the training series has {series.shape[0]} steps, fewer than one window "
                             f"(context + prediction = {window}); shorten --context-length")
        self.series = torch.as_tensor(np.ascontiguousarray(series, dtype=np.float32))
        self.window = window

    def __call__(self, batch: int, generator: torch.Generator | None = None) -> dict:
        starts = torch.randint(0, self.series.shape[0] - self.window + 1, (batch,), generator=generator)
        idx = starts[:, None] + torch.arange(self.window)[None]  # (b, W)
        return {"window": self.series[idx], "t0": starts}


def train_forecaster(model: Forecaster, data: ForecastDataset | np.ndarray, cfg: ForecastTrainConfig,
                     device: str | torch.device = "cpu", progress: bool = True) -> tuple[Forecaster, dict]:
    """Train in place; returns (the EMA copy, {"step": [...], "loss": [...], "seconds"})."""
    series = data.train if isinstance(data, ForecastDataset) else np.asarray(data)
    if series.shape[1] != model.cfg.target_dim:
        raise ValueError(f"data has {series.shape[1]} series, the model expects {model.cfg.target_dim}")
    torch.manual_seed(cfg.seed)
    if model.cfg.scaling == "global" and model.cfg.global_mean is None:
        model.fit_global_stats(series)
    batches = random_batches(WindowSampler(series, model.cfg.window), cfg.batch_size, cfg.seed)
    ema, log, summary = train_in_memory(model, cfg.trainer_config(), batches, device, KIND, progress)
    history = {"step": [r["step"] for r in log], "loss": [r["loss"] for r in log], "seconds": summary["seconds"]}
    return ema, history


def save_forecaster(directory: str | Path, model: Forecaster, train_cfg: ForecastTrainConfig | None = None,
                    meta: dict | None = None) -> Path:
    config = {"model": to_dict(model.cfg), "train": to_dict(train_cfg) if train_cfg else None}
    return checkpoint.save(directory, KIND, config, model.state_dict(), meta=meta)
