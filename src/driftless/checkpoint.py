"""Self-describing, atomic checkpoints.

A checkpoint is a folder:

    config.json         {"kind", "version", "config", "meta"}: everything needed to rebuild it
    model.safetensors   weights
    ema.safetensors     EMA weights (optional)
    train_state.pt      optimizer state, step, data position (optional; tensors and plain
                        values only, read with torch.load(weights_only=True))

Saving writes a complete sibling folder `<dir>.tmp`, fsyncs it and swaps it in with renames,
so a crash leaves either the old or the new checkpoint, never half of one; reading (`resolve`,
`find`, and through them `models.registry.load_model` and `driftless.load`) recovers from a crash
between the two renames by reading `<dir>.old`.

config.json also records the size and SHA-256 of every file saved beside it ("files"); reading
weights or a train state checks them, so a file damaged on disk (a flipped bit, a truncated
copy) is refused with a clear error instead of loading silently. Checkpoints written before
checksums were recorded load unchecked.
"""

from __future__ import annotations

import hashlib
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


def refuse_overwrite(path: str | os.PathLike, force: bool, what: str = "output") -> None:
    """Raise ValueError if `path` already holds something (a non-empty folder or a file) and
    `force` is not given: a command run with the wrong --out must not replace what is stored
    there. The message says that nothing was changed and how to go on."""
    p = Path(path)
    if force or not p.exists() or (p.is_dir() and not any(p.iterdir())):
        return
    raise ValueError(f"{p} already holds {'a file' if p.is_file() else 'data'}; nothing was changed. Choose another "
                     f"--out, or pass --force to replace it (the {what} there is lost)")


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


HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a file


def file_digest(path: str | os.PathLike) -> dict:
    """{"bytes": size, "sha256": hex digest} of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


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
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_state_to_cpu(model_state, dtype), str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file(_state_to_cpu(ema_state, dtype), str(tmp / "ema.safetensors"))
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")
    # checksums of what is on disk now (read back), checked whenever the files are read
    files = {f.name: file_digest(f) for f in sorted(tmp.iterdir())}
    header = {"kind": kind, "version": __version__, "config": config, "meta": meta or {}, "files": files}
    (tmp / "config.json").write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
    for f in tmp.iterdir():
        fsync_file(f)
    fsync_dir(tmp)
    swap_in(tmp, directory)
    return directory


def swap_in(tmp: Path, directory: Path) -> None:
    """Replace `directory` by the complete, fsynced folder `tmp`: the old folder moves aside to
    `<directory>.old`, `tmp` moves in, then the old one is removed. A crash at any point leaves a
    complete folder at `directory` or at `<directory>.old` (which `recover` finds)."""
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    if old.exists():
        shutil.rmtree(old)


def recover(directory: str | os.PathLike, marker: str = "config.json") -> Path:
    """`directory` if it holds `marker`, else its `.old` twin if that does (a crash interrupted a
    swap), else `directory` unchanged."""
    directory = Path(directory)
    if (directory / marker).exists():
        return directory
    old = directory.with_name(directory.name + ".old")
    if (old / marker).exists():
        return old
    return directory


def find(directory: str | os.PathLike) -> Path | None:
    """The checkpoint folder to read for `directory` (itself or its `.old` twin), or None."""
    found = recover(directory)
    return found if (found / "config.json").exists() else None


def stored(directory: str | os.PathLike) -> list[Path]:
    """What exists of a checkpoint at `directory`, complete or not: the folder and its `.old`
    twin, if present (an empty list: nothing to lose by writing there)."""
    directory = Path(directory)
    return [p for p in (directory, directory.with_name(directory.name + ".old")) if p.exists()]


def resolve(directory: str | os.PathLike) -> Path:
    """The folder to read: `directory`, or its `.old` twin if a crash interrupted a swap."""
    directory = Path(directory)
    found = find(directory)
    if found is not None:
        return found
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


def verify_file(directory: str | os.PathLike, name: str) -> None:
    """Check a checkpoint file against the size and SHA-256 its config.json recorded at save
    (CheckpointError if they differ; nothing to check for checkpoints saved without them)."""
    d = resolve(directory)
    expected = read_header(d).get("files", {}).get(name)
    if not expected:
        return
    path = d / name
    actual = file_digest(path)
    if actual["bytes"] != expected.get("bytes"):
        raise CheckpointError(f"{path} is truncated or corrupt: {actual['bytes']} bytes, but {expected.get('bytes')} "
                              f"were saved; re-save or re-train this checkpoint")
    if actual["sha256"] != expected.get("sha256"):
        raise CheckpointError(f"{path} is truncated or corrupt: its SHA-256 checksum differs from the one recorded "
                              f"when it was saved (the file changed on disk); re-save or re-train this checkpoint")


def verify(directory: str | os.PathLike) -> list[str]:
    """Check every file a checkpoint recorded a checksum for; returns their names."""
    d = resolve(directory)
    names = sorted(read_header(d).get("files", {}))
    for name in names:
        if not (d / name).exists():
            raise CheckpointError(f"{d} is incomplete: {name} is missing")
        verify_file(d, name)
    return names


def read_weights(directory: str | os.PathLike, ema: bool = True) -> dict[str, torch.Tensor]:
    """EMA weights if present and asked for, else the raw model weights (checked against their
    recorded checksum)."""
    d = resolve(directory)
    path = d / "ema.safetensors" if ema and (d / "ema.safetensors").exists() else d / "model.safetensors"
    if not path.exists():
        raise CheckpointError(f"{d} has no {path.name}")
    verify_file(d, path.name)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); re-save or re-train this checkpoint") from e


def read_train_state(directory: str | os.PathLike) -> dict | None:
    path = resolve(directory) / "train_state.pt"
    if not path.exists():
        return None
    verify_file(path.parent, path.name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged zip archives
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {e})") from e
