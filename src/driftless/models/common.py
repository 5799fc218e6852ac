"""Helpers shared by the video models: pixel conversion, input checks, parameter counts."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def pixels_to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., h, w, 3) -> float in [-1, 1]."""
    return frames.float() / 127.5 - 1.0


def unit_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 (rounded, clamped)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def as_tensor(x, name: str = "input") -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def check_video(frames, resolution: tuple[int, int], name: str = "frames", min_frames: int = 1) -> torch.Tensor:
    """Validate uint8 video of shape (T, H, W, 3) or (B, T, H, W, 3); return it as a tensor."""
    t = as_tensor(frames, name)
    h, w = resolution
    if t.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8 RGB in [0, 255] of shape (..., T, {h}, {w}, 3), got dtype {t.dtype}")
    if t.dim() not in (4, 5) or tuple(t.shape[-3:]) != (h, w, 3):
        raise ValueError(f"{name} must have shape (T, {h}, {w}, 3) or (B, T, {h}, {w}, 3), got {tuple(t.shape)}")
    if t.shape[-4] < min_frames:
        raise ValueError(f"{name} needs at least {min_frames} frame(s) along T, got {t.shape[-4]}")
    if t.dim() == 5 and t.shape[0] < 1:
        raise ValueError(f"{name} has a batch of 0 videos; a batch (B, T, {h}, {w}, 3) needs B >= 1")
    return t


def as_int_tensor(x, name: str = "actions", hint: str = "") -> torch.Tensor:
    """Integers (a Python int or sequence, a numpy array or a torch tensor) as an int64 tensor;
    anything else (floats, bools, strings, None) is a ValueError naming what was given (`hint`
    follows "must be integers", e.g. " in [0, 8)")."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"{name} must be integers{hint}, got a tensor of dtype {x.dtype}")
        return x.long()
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be integers{hint}, got {type(x).__name__} {str(x)[:60]!r}") from e
    if a.dtype.kind not in "iu":
        what = f"dtype {a.dtype}" if a.dtype.kind in "fcb" else f"{type(x).__name__} {str(x)[:60]!r}"
        raise ValueError(f"{name} must be integers{hint}, got {what}")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
