"""Small models on in-memory data, trained by the one `Trainer` without a run folder.

The showcases (forecasting, maze planning, image generation and its evaluation classifier)
train through `driftless.train.trainer.Trainer` like the world model's stages; this module is
their data side and a shortcut for training without a checkpoint folder:

* `TensorBatches`: shuffled epochs over in-memory tensors (the tail of each epoch is dropped);
  `stream(start)` resumes after `start` samples, a pure function of the seed and the position.
* `random_batches(sample, batch_size, seed)`: batches drawn by `sample(batch_size, generator)`
  with a generator seeded from (seed, batch index), e.g. random windows of a long series; also
  a pure function of the position.
* `train_in_memory`: `Trainer(out_dir=None)` + `fit`; returns the EMA model and the log.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from driftless.train.distributed import DistInfo
from driftless.train.trainer import TrainConfig, Trainer, step_seed

Batches = Callable[[int], Iterator[dict]]


class TensorBatches:
    """Shuffled batches {name: tensor[idx]} of in-memory tensors of one length; `stream(start)`
    is `Trainer.fit`'s batches(start)."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int = 0):
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors must have one length, got { {k: len(t) for k, t in tensors.items()} }")
        self.tensors, self.bs, self.seed = tensors, batch_size, seed
        self.n = lengths.pop()

    @property
    def per_epoch(self) -> int:
        return self.n // self.bs  # the tail of each epoch is dropped

    def stream(self, start: int) -> Iterator[dict]:
        if self.per_epoch < 1:
            raise ValueError(f"{self.n} training samples are fewer than one batch of {self.bs}; lower the batch size")
        epoch, first = divmod(start // self.bs, self.per_epoch)
        while True:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            for k in range(first, self.per_epoch):
                idx = perm[k * self.bs:(k + 1) * self.bs]
                yield {name: t[idx] for name, t in self.tensors.items()}
            epoch, first = epoch + 1, 0


def random_batches(sample: Callable[[int, torch.Generator], dict], batch_size: int, seed: int = 0) -> Batches:
    """`Trainer.fit`'s batches(start) for random draws: batch i is sample(batch_size, g) with a CPU
    generator g seeded from (seed, i)."""

    def batches(start: int) -> Iterator[dict]:
        i = start // batch_size
        while True:
            yield sample(batch_size, torch.Generator().manual_seed(step_seed(seed, 0, i)))
            i += 1

    return batches


def train_in_memory(model: nn.Module, cfg: TrainConfig, batches: Batches, device: str | torch.device = "cpu",
                    kind: str = "model", progress: bool = True) -> tuple[nn.Module, list[dict], dict]:
    """Train with the Trainer, writing nothing; returns (the EMA model in eval mode, the logged
    training records, fit's summary). The model itself is left trained, in eval mode. Raises
    ValueError when training stops on non-finite losses (there is no good checkpoint to keep)."""
    trainer = Trainer(model, cfg, None, DistInfo(device=torch.device(device)), kind, {}, progress=progress)
    summary = trainer.fit(batches)
    if summary["stopped"] == "nonfinite":
        raise ValueError(f"training diverged at step {summary['step']} ({summary['nonfinite_total']} non-finite "
                         "steps); lower the learning rate or check the data")
    trainer.model.eval()
    # an ordinary module again, as load_model gives it (some CPU kernels, e.g. the GRU's, take
    # another path for frozen weights, so sampling would differ from the reloaded model's last bits)
    ema = trainer.ema_model.requires_grad_(True)
    return ema, [r for r in trainer.history if r.get("split") == "train"], summary
