"""Fréchet Video Distance: the Fréchet distance between Gaussians fitted to I3D features of
real and of generated clips (Unterthiner et al., 2018). Nothing is downloaded: the user gives
the weights as a path.

Accepted weights (`load_i3d(path)`):

* ``*.safetensors``: a state dict for `InceptionI3D` below (Inception-v1 inflated to 3D,
  Carreira & Zisserman 2017), with the parameter names of the widely used PyTorch port
  (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_mean`, ..., `logits.conv3d.bias`).
  `convert_state_dict(src, dst)` turns such a port's ``.pt`` state dict (read with
  ``weights_only=True``) into this file.
* a TorchScript file (``*.pt``, ``*.pth``, ``*.ts``, ``*.jit``), e.g. the Kinetics-400 I3D
  exported by StyleGAN-V (``i3d_torchscript.pt``). If its ``forward`` takes ``rescale``,
  ``resize`` and ``return_features`` it is called with ``rescale=False, resize=False,
  return_features=True`` on input prepared here; otherwise as ``model(x)``.

The interface, either way: input float (B, 3, T, 224, 224) in [-1, 1] (RGB), output (B, F)
features: for Kinetics-400 I3D the 400 pre-softmax logits averaged over time, the embedding
of the reference FVD implementation. Preparation here follows that reference: bilinear
resize of every frame to 224 x 224, then x / 127.5 - 1.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

I3D_SIZE = 224
# (branch 0, branch 1 reduce, branch 1, branch 2 reduce, branch 2, branch 3 pool projection)
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def _same_pad(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """TensorFlow 'SAME' padding of (B, C, T, H, W): extra padding goes after."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) -> BatchNorm -> ReLU; the logits unit has a bias and neither."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn_relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.bn_relu = tuple(kernel), tuple(stride), bn_relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=not bn_relu)
        if bn_relu:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.bn_relu else x


def _max_pool(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    return F.max_pool3d(_same_pad(x, kernel, stride), kernel, stride)


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max-pool 3x3x3 -> 1x1, concatenated."""

    def __init__(self, cin: int, widths):
        super().__init__()
        w0, w1r, w1, w2r, w2, w3 = widths
        self.b0 = Unit3D(cin, w0)
        self.b1a, self.b1b = Unit3D(cin, w1r), Unit3D(w1r, w1, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, w2r), Unit3D(w2r, w2, (3, 3, 3))
        self.b3b = Unit3D(cin, w3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = _max_pool(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], dim=1)


class InceptionI3D(nn.Module):
    """I3D: (B, 3, T, H, W) in [-1, 1] -> (B, num_classes) pre-softmax logits averaged over time."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        for name, (cin, widths) in _MIXED.items():
            self.add_module(name, Mixed(cin, widths))
        self.logits = Unit3D(1024, num_classes, bn_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv3d_1a_7x7(x)
        x = _max_pool(x, (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool(x, (1, 3, 3), (1, 2, 2))
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = _max_pool(x, (3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = _max_pool(x, (2, 2, 2), (2, 2, 2))
        x = self.Mixed_5c(self.Mixed_5b(x))
        # average pool 2x7x7 (stride 1) as the reference; smaller inputs pool what they have
        k = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = self.logits(F.avg_pool3d(x, k, stride=1))  # (B, classes, T', H', W')
        return x.mean(dim=(2, 3, 4))


class TinyVideoNet(nn.Module):
    """A small random-weight stand-in with the TorchScript interface of the StyleGAN-V I3D
    export: forward(x, rescale, resize, return_features) -> (B, features). For tests only."""

    def __init__(self, features: int = 32):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 16, (3, 5, 5), stride=(1, 4, 4), padding=(1, 2, 2))
        self.conv2 = nn.Conv3d(16, features, (3, 3, 3), stride=(2, 2, 2), padding=1)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        h = torch.relu(self.conv1(x))
        h = self.conv2(h)
        return h.mean(dim=(2, 3, 4))


# ---- loading ------------------------------------------------------------------------------------
class I3DFeatures:
    """Callable: uint8 videos (N, T, H, W, 3) -> float64 features (N, F)."""

    def __init__(self, model: nn.Module, device="cpu", size: int = I3D_SIZE, stylegan_kwargs: bool = False,
                 source: str = ""):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.size = int(size)
        self.stylegan_kwargs = stylegan_kwargs
        self.source = source

    def prepare(self, videos: torch.Tensor) -> torch.Tensor:
        """uint8 (n, T, H, W, 3) -> float (n, 3, T, size, size) in [-1, 1]."""
        n, t, h, w, _ = videos.shape
        x = videos.to(self.device).permute(0, 1, 4, 2, 3).reshape(n * t, 3, h, w).float()  # (n*T, 3, h, w)
        if (h, w) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = x / 127.5 - 1.0
        return x.reshape(n, t, 3, self.size, self.size).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def __call__(self, videos, batch_size: int = 16) -> np.ndarray:
        v = torch.as_tensor(np.asarray(videos) if not isinstance(videos, torch.Tensor) else videos)
        if v.dtype != torch.uint8 or v.dim() != 5 or v.shape[-1] != 3:
            raise ValueError(f"FVD videos must be uint8 (N, T, H, W, 3), got {tuple(v.shape)} {v.dtype}")
        out = []
        for i in range(0, v.shape[0], batch_size):
            x = self.prepare(v[i:i + batch_size])
            f = self.model(x, rescale=False, resize=False, return_features=True) if self.stylegan_kwargs \
                else self.model(x)
            if isinstance(f, (tuple, list)):
                f = f[0]
            out.append(f.float().reshape(f.shape[0], -1).cpu())
        return torch.cat(out).double().numpy()


# ---- loading user-given feature networks (shared with driftless.image.inception) ----------------
def forward_arg_names(module) -> list[str]:
    """The argument names of `module.forward`, for a TorchScript or an eager module."""
    try:
        return [a.name for a in module.forward.schema.arguments]  # TorchScript
    except AttributeError:
        import inspect

        return list(inspect.signature(module.forward).parameters)


def load_matching_state(model: nn.Module, state: dict, path, name: str) -> nn.Module:
    """Load `state` into `model`; any missing (besides BatchNorm counters) or unexpected key is a
    ValueError naming the file and the architecture."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not match {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def load_torchscript(path, device, failure: str):
    """torch.jit.load, quiet about TorchScript's deprecation (it is how these exports ship); an
    unreadable file is a ValueError `failure` (formatted with the error's class name as {error})."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=torch.device(device))
    except (RuntimeError, ValueError) as e:
        raise ValueError(failure.format(error=e.__class__.__name__)) from e


def _takes_stylegan_kwargs(module) -> bool:
    names = forward_arg_names(module)
    return all(k in names for k in ("rescale", "resize", "return_features"))


def load_i3d(path: str | Path, device="cpu", size: int = I3D_SIZE) -> I3DFeatures:
    """Load user-given I3D weights (see the module docstring); nothing is downloaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no I3D weights at {path}: give a .safetensors state dict for InceptionI3D or a "
                                f"TorchScript I3D (see docs: where I3D weights come from)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
        if "logits.conv3d.weight" not in state:
            raise ValueError(f"{path} is not an InceptionI3D state dict (no 'logits.conv3d.weight')")
        model = InceptionI3D(num_classes=state["logits.conv3d.weight"].shape[0])
        load_matching_state(model, state, path, "InceptionI3D")
        return I3DFeatures(model, device, size, stylegan_kwargs=False, source=str(path))
    model = load_torchscript(path, device, f"{path} is not a TorchScript module ({{error}}); for a plain state dict "
                                           f"convert it with driftless.eval.fvd.convert_state_dict to .safetensors")
    return I3DFeatures(model, device, size, stylegan_kwargs=_takes_stylegan_kwargs(model), source=str(path))


def convert_state_dict(src: str | Path, dst: str | Path) -> Path:
    """A PyTorch-port I3D state dict (.pt, loaded with weights_only=True) -> .safetensors."""
    from safetensors.torch import save_file

    state = torch.load(str(src), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    InceptionI3D(state["logits.conv3d.weight"].shape[0]).load_state_dict(state, strict=False)
    save_file(state, str(dst))
    return Path(dst)


def save_random_i3d(path: str | Path, kind: str = "safetensors", seed: int = 0, num_classes: int = 400) -> Path:
    """Write a random-weight network with the documented interface (for tests and dry runs):
    kind "safetensors" (a full InceptionI3D) or "torchscript" (TinyVideoNet, scripted)."""
    torch.manual_seed(seed)
    path = Path(path)
    if kind == "safetensors":
        from safetensors.torch import save_file

        model = InceptionI3D(num_classes)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    elif kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(TinyVideoNet()).save(str(path))
    else:
        raise ValueError(f"kind must be 'safetensors' or 'torchscript', got {kind!r}")
    return path


# ---- the distance ---------------------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature statistics need (N >= 2, F) features, got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with Tr((S1 S2)^(1/2)) computed as the sum
    of square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2) (symmetric, PSD)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched Gaussian statistics: {mu1.shape}, {s1.shape} vs {mu2.shape}, {s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fvd(real, fake, extractor: I3DFeatures, batch_size: int = 16) -> dict:
    """FVD between uint8 real and generated videos (N, T, H, W, 3) (equal T)."""
    real, fake = np.asarray(real), np.asarray(fake)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and generated videos must share (T, H, W, 3), got {real.shape} and {fake.shape}")
    fr, ff = extractor(real, batch_size), extractor(fake, batch_size)
    value = max(0.0, frechet_distance(*feature_stats(fr), *feature_stats(ff)))  # >= 0 up to rounding
    return {"fvd": value, "real_clips": int(len(real)), "generated_clips": int(len(fake)),
            "frames": int(real.shape[1]), "input_size": extractor.size, "features": int(fr.shape[1])}
