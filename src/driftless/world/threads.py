"""Choosing torch's CPU thread count for playing a world, by timing it."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from driftless.world.world import World


def tune_threads(world, batch: int = 1, candidates: list[int] | None = None, steps: int = 3,
                 sampling: dict | None = None) -> tuple[int, dict]:
    """Time a few frames with 1 thread and with all cores; keep the faster (CPU only).

    On a machine busy with other work, threads that wait for each other at every operation
    can be many times slower than one thread (seen here: 2.4 vs 70 frames/s for the debug
    world on 2 shared cores). A candidate is dropped after its first frame when that alone is
    3x slower than the best so far. Returns (threads, {threads: seconds per frame})."""
    cores = os.cpu_count() or 1
    candidates = candidates or sorted({1, cores})
    probe = World(world.tokenizer, world.lam, world.dynamics, world.meta, world.device)
    context = np.random.default_rng(0).integers(0, 256, (batch, 1, *world.resolution, 3), dtype=np.uint8)
    actions = np.zeros(batch, dtype=np.int64)
    timings: dict[int, float] = {}
    for n in candidates:
        torch.set_num_threads(n)
        probe.reset(context, seed=0, **(sampling or {}))
        t = time.perf_counter()
        probe.step(actions)  # the first frame also warms up
        first = time.perf_counter() - t
        best = min(timings.values(), default=float("inf"))
        if first > 3 * best:
            timings[n] = first
            continue
        t = time.perf_counter()
        for _ in range(steps):
            probe.step(actions)
        timings[n] = (time.perf_counter() - t) / steps
    choice = min(timings, key=timings.get)
    torch.set_num_threads(choice)
    return choice, timings
