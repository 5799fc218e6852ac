"""FID and Inception Score of generated images, from user-given Inception weights (the
classifier-based metrics that need no download are in `driftless.image.classifier`).

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
samples at 256 x 256): compare numbers only within one table. The Fréchet distance and the
network-loading helpers are FVD's (`driftless.eval.fvd`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from driftless.eval.fvd import (feature_stats, forward_arg_names, frechet_distance, load_matching_state,
                                load_torchscript)
from driftless.image.data import as_uint8_images

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
        imgs = as_uint8_images(images, "Inception input")
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
                                           f"convert a state dict with driftless.image.inception.convert_state_dict")
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
