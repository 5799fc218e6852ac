"""First-step compile time of the small dynamics (32 latent channels), forward + backward, batch 4 x
16 frames: the whole loss compiled (`full`), each ST block compiled as the Trainer's default
`--compile-scope blocks` does (`regional`), or nothing (`eager`). Benchmarks 5.8.

    python tools/compile_time.py full|regional|eager
"""

import sys
import time

import torch

from driftless.config import override
from driftless.models import registry
from driftless.models.dynamics import Dynamics
from driftless.train.trainer import LossModule, compile_regions, region_blocks


def main(mode: str) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = override(registry.preset("dynamics", "small"), {"latent_dim": 32})
    model = Dynamics(cfg)
    b, t = 4, cfg.clip_len
    batch = {"latents": torch.randn(b, t, cfg.tokens_per_frame, cfg.latent_dim),
             "actions": torch.randint(0, cfg.num_actions, (b, t - 1))}
    step = LossModule(model)
    if mode == "full":
        step = torch.compile(step, dynamic=False)
    elif mode == "regional":
        compile_regions(region_blocks(model))
    elif mode != "eager":
        raise SystemExit(f"mode must be full, regional or eager, got {mode!r}")
    times = []
    for _ in range(4):
        t0 = time.time()
        loss, _ = step(batch)
        loss.backward()
        times.append(time.time() - t0)
    print(f"{mode}: first step {times[0]:.1f} s, then {', '.join(f'{x:.2f}' for x in times[1:])} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "regional")
