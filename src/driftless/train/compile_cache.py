"""A file of torch.compile artifacts carried from one machine to the next (`--compile-cache`).

torch.compile keeps what it generated in a cache on the local disk, so a second run on the same
machine compiles quickly. A freshly started machine (a rented GPU) has an empty cache, and each
stage then spends about a minute compiling before its first step (measured on an H200: the
tokenizer's first step 56 s, the LAM's 70 s plus 85 s more when its VQ phase begins). This file
holds those artifacts (Inductor's generated kernels, AOT autograd's graphs) in PyTorch's
portable format: loaded before the first compile, rewritten after training with everything this
process compiled (the loaded artifacts included). A graph whose code, shapes, PyTorch version or
GPU differ is simply compiled again.

PyTorch unpickles the file: load only one that you wrote yourself.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from driftless.checkpoint import atomic_write_bytes


def load(path: str | Path) -> int:
    """Hand the artifacts in `path` to torch.compile; returns how many it took (0 when the file
    does not exist yet, or cannot be read - it is then rewritten after training)."""
    p = Path(path)
    if not p.exists():
        return 0
    try:
        info = torch.compiler.load_cache_artifacts(p.read_bytes())
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file costs a compile, never the run
        warnings.warn(f"compile cache {p} could not be read ({e}): compiling from scratch", stacklevel=2)
        return 0
    if info is None:  # (PyTorch logs its reason and returns nothing)
        warnings.warn(f"compile cache {p} could not be read: compiling from scratch", stacklevel=2)
        return 0
    return sum(len(v) for v in info.artifacts.values())


def save(path: str | Path) -> int:
    """Write every artifact this process compiled or loaded to `path` (atomically); returns how
    many (0: nothing compiled, the file is left as it was)."""
    result = torch.compiler.save_cache_artifacts()
    if result is None:
        return 0
    data, info = result
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return sum(len(v) for v in info.artifacts.values())
