"""Self-describing, atomic checkpoints.

A checkpoint is a folder:

    config.json         {"kind", "version", "config", "meta"}: everything needed to rebuild it
    model.safetensors   weights
    ema.safetensors     EMA weights (optional)
    train_state.pt      optimizer state, step, data position (optional; tensors and plain
                        values only, read with torch.load(weights_only=True))

Saving writes a complete sibling folder `<dir>.tmp`, fsyncs it and swaps it in with renames,
so a crash leaves either the old or the new checkpoint, never half of one; `read` recovers
from a crash between the two renames.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from driftless import __version__


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, truncated or of the wrong kind."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file under a temporary name, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_json(obj: dict, path: str | os.PathLike | None) -> None:
    """Write a result `obj` as strict JSON (non-finite floats as null, numpy scalars as numbers)
    atomically, if a path is given, and say where."""
    if path:
        from driftless.runtime import clean_json

        atomic_write_json(path, clean_json(obj))
        print(f"wrote {path}")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _state_to_cpu(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save(
    directory: str | os.PathLike,
    kind: str,
    config: dict,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None = None,
    train_state: dict | None = None,
    meta: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a checkpoint folder atomically. `dtype` (e.g. torch.float16) casts float weights."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_state_to_cpu(model_state, dtype), str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file(_state_to_cpu(ema_state, dtype), str(tmp / "ema.safetensors"))
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")
    header = {"kind": kind, "version": __version__, "config": config, "meta": meta or {}}
    (tmp / "config.json").write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
    for f in tmp.iterdir():
        fsync_file(f)
    fsync_dir(tmp)
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    if old.exists():
        shutil.rmtree(old)
    return directory


def resolve(directory: str | os.PathLike) -> Path:
    """The folder to read: `directory`, or its `.old` twin if a crash interrupted a swap."""
    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    old = directory.with_name(directory.name + ".old")
    if (old / "config.json").exists():
        return old
    if directory.exists():
        raise CheckpointError(f"{directory} is not a checkpoint: it has no config.json")
    raise CheckpointError(f"no checkpoint at {directory}")


def read_header(directory: str | os.PathLike, kind: str | None = None) -> dict:
    path = resolve(directory) / "config.json"
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt (not valid JSON): {e}") from e
    for key in ("kind", "config"):
        if key not in header:
            raise CheckpointError(f"{path} lacks the field {key!r}; is this a driftless checkpoint?")
    if kind is not None and header["kind"] != kind:
        raise CheckpointError(f"{directory} holds a {header['kind']!r} checkpoint, expected {kind!r}")
    return header


def read_weights(directory: str | os.PathLike, ema: bool = True) -> dict[str, torch.Tensor]:
    """EMA weights if present and asked for, else the raw model weights."""
    d = resolve(directory)
    path = d / "ema.safetensors" if ema and (d / "ema.safetensors").exists() else d / "model.safetensors"
    if not path.exists():
        raise CheckpointError(f"{d} has no {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); re-save or re-train this checkpoint") from e


def read_train_state(directory: str | os.PathLike) -> dict | None:
    path = resolve(directory) / "train_state.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged zip archives
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {e})") from e
