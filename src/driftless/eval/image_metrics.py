"""Metrics for generated images: FID / Inception Score from user-given Inception weights, and,
always available, a small classifier trained on real frames (per-class accuracy of generated
images, precision / recall and a Fréchet distance in its feature space).

Inception weights (`load_inception(path)`; nothing is downloaded):

* ``*.safetensors``: a state dict for `InceptionV3` below, with torchvision's parameter names
  (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``;
  ``AuxLogits.*`` is ignored). With 1008 classes (the weights of the pytorch-fid package, i.e.
  the TF FID graph, converted with `convert_state_dict`) the blocks use pytorch-fid's pooling
  variants; with 1000 classes torchvision's.
* a TorchScript file. If its ``forward`` takes ``return_features`` (the StyleGAN2-ADA /
  clean-fid export ``inception-2015-12-05.pt``) it gets float RGB in [0, 255] at 299 x 299:
  ``model(x, return_features=True)`` -> (N, 2048) features and ``model(x)`` -> (N, K) class
  probabilities (``no_output_bias=True`` where accepted, as StyleGAN's IS). Otherwise
  ``model(x)`` with x float RGB in [-1, 1] must return ``(features (N, F), logits (N, K))``.

Input either way: uint8 (N, H, W, 3) images, bilinearly resized to 299 x 299 (``size``).
FID: Fréchet distance of Gaussians fitted to the features (Heusel et al., 2017); IS:
exp E_x KL(p(y|x) || p(y)) averaged over `splits` (Salimans et al., 2016). Tiny images (64 x 64
upsampled) and a few hundred samples make both far from the published protocol (50 000
samples at 256 x 256): compare numbers only within one table.

Precision / recall: Kynkäänniemi et al. (2019): each real feature is the centre of a ball
reaching its k-th nearest real neighbour; precision is the fraction of generated samples inside
some real ball, recall the fraction of real samples inside some generated ball.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from driftless.eval.fvd import (feature_stats, forward_arg_names, frechet_distance, load_matching_state,
                                load_torchscript)

INCEPTION_SIZE = 299


# ---- Inception-v3 (for safetensors weights) -------------------------------------------------------
class Conv(nn.Module):
    """Conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU, named as torchvision's BasicConv2d."""

    def __init__(self, cin: int, cout: int, k, s=1, p=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg(x: torch.Tensor, fid: bool) -> torch.Tensor:  # pytorch-fid excludes padding from the average
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=not fid)


class BlockA(nn.Module):  # Mixed_5b/c/d: 35 x 35
    def __init__(self, cin: int, pool: int, fid: bool):
        super().__init__()
        self.fid = fid
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, p=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, p=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, p=1)
        self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), b3,
                          self.branch_pool(_avg(x, self.fid))], 1)


class BlockB(nn.Module):  # Mixed_6a: 35 -> 17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, s=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, p=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, s=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, 2)], 1)


class BlockC(nn.Module):  # Mixed_6b..e: 17 x 17, factorised 7 x 7
    def __init__(self, cin: int, c7: int, fid: bool):
        super().__init__()
        self.fid = fid
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = Conv(cin, c7, 1), Conv(c7, c7, row[0], p=row[1])
        self.branch7x7_3 = Conv(c7, 192, col[0], p=col[1])
        self.branch7x7dbl_1, self.branch7x7dbl_2 = Conv(cin, c7, 1), Conv(c7, c7, col[0], p=col[1])
        self.branch7x7dbl_3, self.branch7x7dbl_4 = Conv(c7, c7, row[0], p=row[1]), Conv(c7, c7, col[0], p=col[1])
        self.branch7x7dbl_5 = Conv(c7, 192, row[0], p=row[1])
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x, self.fid))], 1)


class BlockD(nn.Module):  # Mixed_7a: 17 -> 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, s=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = Conv(cin, 192, 1), Conv(192, 192, (1, 7), p=(0, 3))
        self.branch7x7x3_3, self.branch7x7x3_4 = Conv(192, 192, (7, 1), p=(3, 0)), Conv(192, 192, 3, s=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class BlockE(nn.Module):  # Mixed_7b/c: 8 x 8, expanded filter banks
    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool  # "avg" (torchvision), "avg_fid" (pytorch-fid 7b), "max" (pytorch-fid 7c)
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, (1, 3), p=(0, 1)), Conv(384, 384, (3, 1), p=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, p=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), p=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), p=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.pool == "max" else _avg(x, self.pool == "avg_fid")
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """(N, 3, H >= 75, W >= 75) in [-1, 1] -> (pool features (N, 2048), logits (N, classes))."""

    def __init__(self, num_classes: int = 1008, fid_variant: bool | None = None):
        super().__init__()
        fid = num_classes == 1008 if fid_variant is None else fid_variant
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = Conv(3, 32, 3, s=2), Conv(32, 32, 3)
        self.Conv2d_2b_3x3, self.Conv2d_3b_1x1 = Conv(32, 64, 3, p=1), Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32, fid), BlockA(256, 64, fid), BlockA(288, 64, fid)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128, fid), BlockC(768, 160, fid)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160, fid), BlockC(768, 192, fid)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, "avg_fid" if fid else "avg")
        self.Mixed_7c = BlockE(2048, "max" if fid else "avg")
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        feats = x.mean(dim=(2, 3))  # (N, 2048)
        return feats, self.fc(feats)


class TinyInception(nn.Module):
    """A small random-weight stand-in with the StyleGAN/clean-fid TorchScript interface:
    forward(img in [0, 255], return_features, no_output_bias) -> features or probabilities."""

    def __init__(self, features: int = 32, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, features, 7, stride=4, padding=3)
        self.fc = nn.Linear(features, classes)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        f = torch.relu(self.conv(img / 127.5 - 1.0)).mean(dim=(2, 3))
        if return_features:
            return f
        logits = f @ self.fc.weight.t() if no_output_bias else self.fc(f)
        return torch.softmax(logits, dim=1)


class InceptionFeatures:
    """Callable: uint8 images (N, H, W, 3) -> (features (N, F) float64, probabilities (N, K) float64)."""

    def __init__(self, model: nn.Module, style: str, device="cpu", size: int = INCEPTION_SIZE, source: str = ""):
        if style not in ("state_dict", "stylegan", "plain"):
            raise ValueError(f"unknown Inception interface {style!r}")
        self.model, self.style, self.size, self.source = model.to(device).eval(), style, int(size), source
        self.device = torch.device(device)
        self.no_bias = style == "stylegan" and "no_output_bias" in forward_arg_names(model)

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        imgs = _as_uint8_images(images, "Inception input")
        feats, probs = [], []
        for i in range(0, len(imgs), batch_size):
            x = imgs[i:i + batch_size].to(self.device).permute(0, 3, 1, 2).float()  # (n, 3, h, w) in [0, 255]
            if x.shape[-2:] != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            if self.style == "stylegan":
                f = self.model(x, return_features=True)
                p = self.model(x, no_output_bias=True) if self.no_bias else self.model(x)
            else:
                f, logits = self.model(x / 127.5 - 1.0)
                p = torch.softmax(logits.float(), dim=1)
            feats.append(f.float().reshape(len(x), -1).cpu())
            probs.append(p.float().reshape(len(x), -1).cpu())
        return torch.cat(feats).double().numpy(), torch.cat(probs).double().numpy()


def load_inception(path: str | Path, device="cpu", size: int = INCEPTION_SIZE) -> InceptionFeatures:
    """Load user-given Inception weights (see the module docstring); nothing is downloaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights at {path}: give a .safetensors state dict for InceptionV3 "
                                f"(torchvision names) or a TorchScript Inception (docs/benchmarks.md, section 10)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("AuxLogits.")}
        if "fc.weight" not in state or "Mixed_7c.branch_pool.conv.weight" not in state:
            raise ValueError(f"{path} is not an Inception-v3 state dict with torchvision names "
                             f"(no 'fc.weight' / 'Mixed_7c.branch_pool.conv.weight')")
        model = InceptionV3(num_classes=state["fc.weight"].shape[0])
        load_matching_state(model, state, path, "InceptionV3")
        return InceptionFeatures(model, "state_dict", device, size, source=str(path))
    model = load_torchscript(path, device, f"{path} is neither .safetensors nor a TorchScript module ({{error}}); "
                                           f"convert a state dict with driftless.eval.image_metrics.convert_state_dict")
    style = "stylegan" if "return_features" in forward_arg_names(model) else "plain"
    return InceptionFeatures(model, style, device, size, source=str(path))


def convert_state_dict(src: str | Path, dst: str | Path) -> Path:
    """An Inception-v3 .pth state dict (torchvision or pytorch-fid; read with weights_only=True)
    -> .safetensors that `load_inception` accepts."""
    from safetensors.torch import save_file

    state = torch.load(str(src), map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v.contiguous() for k, v in state.items()
             if isinstance(v, torch.Tensor) and not k.startswith("AuxLogits.")}
    InceptionV3(state["fc.weight"].shape[0]).load_state_dict(state, strict=False)
    save_file(state, str(dst))
    return Path(dst)


def save_random_inception(path: str | Path, kind: str = "safetensors", seed: int = 0) -> Path:
    """A random-weight network of a documented interface (tests, dry runs): "safetensors" (a full
    InceptionV3 with 1008 classes, He-initialised) or "torchscript" (TinyInception, scripted)."""
    torch.manual_seed(seed)
    path = Path(path)
    if kind == "safetensors":
        from safetensors.torch import save_file

        model = InceptionV3(1008)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    elif kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(TinyInception()).save(str(path))
    else:
        raise ValueError(f"kind must be 'safetensors' or 'torchscript', got {kind!r}")
    return path


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y)))."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < 2:
        raise ValueError(f"Inception Score needs (N >= 2, K) class probabilities, got {p.shape}")
    splits = max(1, min(int(splits), len(p) // 2))
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def fid_and_is(real, fake, extractor: InceptionFeatures, batch_size: int = 32) -> dict:
    fr, _ = extractor(real, batch_size)
    ff, pf = extractor(fake, batch_size)
    is_mean, is_std = inception_score(pf)
    return {"fid": max(0.0, frechet_distance(*feature_stats(fr), *feature_stats(ff))), "is": is_mean,
            "is_std": is_std, "inception_size": extractor.size}


# ---- the classifier trained on real frames --------------------------------------------------------
def _as_uint8_images(images, name: str = "images") -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x


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


def train_classifier(images, labels, classes: list[str], epochs: int = 6, batch_size: int = 64, lr: float = 2e-3,
                     width: int = 32, seed: int = 0, shift: int = 4, progress: bool = True) -> FrameClassifier:
    """Train a FrameClassifier on real uint8 frames (random shifts of up to `shift` pixels)."""
    from tqdm.auto import tqdm

    x, y = _as_uint8_images(images), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need as many labels as images (>= 2), got {len(x)} images and {len(y)} labels")
    torch.manual_seed(seed)
    model = FrameClassifier(ClassifierConfig(num_classes=len(classes), width=width, class_names=list(classes)))
    steps = epochs * -(-len(x) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="train classifier", disable=not progress, leave=False)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            xb = x[idx]
            if shift:  # the same random translation for the batch (circular), cheap augmentation
                dy, dx = torch.randint(-shift, shift + 1, (2,), generator=g).tolist()
                xb = torch.roll(xb, (dy, dx), dims=(1, 2))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def save_classifier(path: str | Path, model: FrameClassifier, meta: dict | None = None) -> Path:
    from driftless import checkpoint
    from driftless.config import to_dict

    return checkpoint.save(path, "image_classifier", to_dict(model.cfg), model.state_dict(), meta=meta)


def load_classifier(path: str | Path, device="cpu") -> FrameClassifier:
    from driftless import checkpoint
    from driftless.config import from_dict

    header = checkpoint.read_header(path, "image_classifier")
    model = FrameClassifier(from_dict(ClassifierConfig, header["config"]))
    model.load_state_dict(checkpoint.read_weights(path))
    return model.to(device).eval()


@torch.no_grad()
def classify(model: FrameClassifier, images, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels (N,), features (N, F)) of uint8 images."""
    x = _as_uint8_images(images)
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
