"""The bottom layer: which device and how many CPU threads a command uses, and what a result
file records about the run that made it (date, versions, device, git commit).

Imports nothing of the package (its version string aside), so every layer above may use it.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


# ---- device and threads -----------------------------------------------------------------------
def default_device(name: str | None = None) -> str:
    """The device a command runs on: `name` as given, or when it is empty or "auto" CUDA when
    available, else the CPU."""
    if not name or str(name) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def check_device(name: str | None) -> str:
    """`default_device`, with a clear error when CUDA is asked for and absent."""
    device = default_device(name)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def set_threads(device: str, threads: str | int | None) -> int:
    """Set torch's CPU thread count: a number, or None for all cores ("auto" is left to the
    caller, which may time candidates). Returns the count in effect."""
    n = 0
    if threads not in (None, "auto"):
        try:
            n = int(threads)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise ValueError(f"--threads must be a number >= 1 or 'auto', got {threads!r}")
    if str(device) == "cpu" and threads not in (None, "auto"):
        torch.set_num_threads(n)
    elif str(device) == "cpu" and threads is None:
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()


def available_memory(device) -> int | None:
    """Bytes a new allocation on `device` can still take, or None when unknown: free GPU memory
    (plus what torch's cache holds unused) for CUDA; for the CPU the kernel's MemAvailable,
    capped by the container's (cgroup) limit."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap = Path(limit).read_text().strip()
            if cap != "max" and int(cap) < 1 << 60:
                found.append(max(0, int(cap) - int(Path(usage).read_text().strip())))
        except (OSError, ValueError):
            continue
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return min(found)


# ---- run information -------------------------------------------------------------------------
def git_commit() -> dict:
    """Commit of the source tree driftless runs from: the environment variable
    DRIFTLESS_GIT_COMMIT when set (a copy of a tree on another machine, whose .git may be
    stale or absent), else the git checkout's HEAD."""
    if os.environ.get("DRIFTLESS_GIT_COMMIT"):
        return {"commit": os.environ["DRIFTLESS_GIT_COMMIT"], "source": "environment"}
    here = Path(__file__).resolve().parent
    git = ["git", "-c", "safe.directory=*"]  # a checkout owned by another user (containers) still answers
    try:
        commit = subprocess.run(git + ["rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=10)
            return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "source": "unknown"}


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def run_info(device) -> dict:
    """Date, versions, device, thread count, git commit and command line of this run."""
    from driftless import __version__  # the package root: a constant, no layer

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "driftless": __version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device), "device_name": device_name(device), "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "git": git_commit(), "argv": list(sys.argv),
    }


def clean_json(obj):
    """Replace non-finite floats by None and numpy scalars by Python ones (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    return obj
