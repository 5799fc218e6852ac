"""A small classifier trained on real frames, and the metrics it gives generated images with no
download: per-class accuracy, precision / recall and a Fréchet distance in its feature space.

Precision / recall: Kynkäänniemi et al. (2019): each real feature is the centre of a ball
reaching its k-th nearest real neighbour; precision is the fraction of generated samples inside
some real ball, recall the fraction of real samples inside some generated ball.

The classifier trains through the shared `Trainer` (in memory) and is saved as a checkpoint of
kind "image_classifier", which `driftless.models.registry.load_model` loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from driftless import checkpoint
from driftless.config import to_dict
from driftless.eval.fvd import feature_stats, frechet_distance
from driftless.image.data import as_uint8_images
from driftless.train.memory import TensorBatches, train_in_memory
from driftless.train.trainer import TrainConfig, step_seed

KIND = "image_classifier"


@dataclass
class ClassifierConfig:
    num_classes: int = 16
    width: int = 32
    class_names: list[str] | None = None


class FrameClassifier(nn.Module):
    """uint8 (N, H, W, 3) -> logits; `features` is the pooled 4*width-d penultimate layer."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        chans = [(3, w, 2), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1)]
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, stride=s, padding=1) for a, b, s in chans])
        self.fc = nn.Linear(4 * w, cfg.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (n, 3, h, w)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x.mean(dim=(2, 3))  # (n, 4w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """For the Trainer: batch {"images" uint8 (b, H, W, 3), "labels" (b,)}."""
        logits = self(batch["images"])
        accuracy = (logits.argmax(1) == batch["labels"]).float().mean().detach()
        return F.cross_entropy(logits, batch["labels"]), {"accuracy": accuracy}


def train_classifier(images, labels, classes: list[str], epochs: int = 6, batch_size: int = 64, lr: float = 2e-3,
                     width: int = 32, seed: int = 0, shift: int = 4, progress: bool = True) -> FrameClassifier:
    """Train a FrameClassifier on real uint8 frames for `epochs` passes (random shifts of up to
    `shift` pixels) through the shared Trainer: warm-up over the first 15 % of the steps, then
    cosine decay to zero; no weight averaging."""
    x, y = as_uint8_images(images), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need as many labels as images (>= 2), got {len(x)} images and {len(y)} labels")
    torch.manual_seed(seed)
    model = FrameClassifier(ClassifierConfig(num_classes=len(classes), width=width, class_names=list(classes)))
    batch_size = min(batch_size, len(x))
    data = TensorBatches({"images": x, "labels": y}, batch_size, seed)
    steps = epochs * data.per_epoch
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, min_lr=0.0, warmup=max(1, round(0.15 * steps)),
                      weight_decay=1e-4, beta2=0.999, grad_clip=math.inf, ema_decay=0.0, seed=seed,
                      precision="fp32", compile=False, log_every=max(1, data.per_epoch), val_every=0, save_every=0)

    def shifted(start: int):  # the same random circular translation for a whole batch: cheap augmentation
        for i, batch in enumerate(data.stream(start), start // batch_size):
            if shift:
                g = torch.Generator().manual_seed(step_seed(seed, 1, i))
                dy, dx = torch.randint(-shift, shift + 1, (2,), generator=g).tolist()
                batch["images"] = torch.roll(batch["images"], (dy, dx), dims=(1, 2))
            yield batch

    train_in_memory(model, cfg, shifted, "cpu", KIND, progress)
    return model.eval()


def save_classifier(path: str | Path, model: FrameClassifier, meta: dict | None = None) -> Path:
    """A checkpoint of kind "image_classifier"; load it with registry.load_model."""
    return checkpoint.save(path, KIND, to_dict(model.cfg), model.state_dict(), meta=meta)


@torch.no_grad()
def classify(model: FrameClassifier, images, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels (N,), features (N, F)) of uint8 images."""
    x = as_uint8_images(images)
    dev = next(model.parameters()).device
    preds, feats = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i:i + batch_size].to(dev))
        preds.append(model.fc(f).argmax(1).cpu())
        feats.append(f.cpu())
    return torch.cat(preds).numpy(), torch.cat(feats).double().numpy()


def _kth_radius(a: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of a to its k-th nearest other row."""
    out = []
    for i in range(0, len(a), 1024):
        d = torch.cdist(a[i:i + 1024], a)  # (m, n); the point itself is at distance 0
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    out = []
    for i in range(0, len(points), 1024):
        d = torch.cdist(points[i:i + 1024], centres)  # (m, n)
        out.append((d <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(real_features, fake_features, k: int = 3) -> dict:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of k-NN feature manifolds."""
    r = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake_features), dtype=torch.float64)
    if r.dim() != 2 or f.dim() != 2 or r.shape[1] != f.shape[1] or min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall need (N > k={k}, F) real and generated features of one width, "
                         f"got {tuple(r.shape)} and {tuple(f.shape)}")
    precision = _covered(f, r, _kth_radius(r, k)).double().mean()
    recall = _covered(r, f, _kth_radius(f, k)).double().mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}


def classifier_metrics(classifier: FrameClassifier, real, fake, fake_labels, k: int = 3) -> dict:
    """Accuracy of the real-frame classifier on generated images (overall and per class),
    precision / recall and the Fréchet distance (FD_clf) in its feature space."""
    fake_labels = np.asarray(fake_labels)
    pred, ff = classify(classifier, fake)
    _, fr = classify(classifier, real)
    names = classifier.cfg.class_names or [str(i) for i in range(classifier.cfg.num_classes)]
    per_class = {names[c]: float((pred[fake_labels == c] == c).mean()) for c in np.unique(fake_labels) if c >= 0}
    out = {"accuracy": float((pred == fake_labels).mean()), "per_class_accuracy": per_class,
           "fd_classifier": max(0.0, frechet_distance(*feature_stats(fr), *feature_stats(ff)))}
    out.update(precision_recall(fr, ff, k=k))
    return out
