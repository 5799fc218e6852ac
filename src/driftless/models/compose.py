"""How a world's components fit together: the dynamics model works in the tokenizer's latent
space (its latent width and token grid) and is conditioned on the latent action model's
actions (its action count).

Whatever builds a dynamics config for given components (the dynamics stage from a latent
cache, benchmarks on random weights) takes those fields from `dynamics_fields`.
"""

from __future__ import annotations

from typing import Sequence


def dynamics_fields(latent_dim: int, grid: Sequence[int], num_actions: int | None = None) -> dict:
    """The DynamicsConfig fields the other components fix, as overrides: the tokenizer's latent
    width and token grid (h, w), and the LAM's action count (None: leave the config's)."""
    if len(grid) != 2:
        raise ValueError(f"grid must be (h, w) tokens, got {grid!r}")
    out = {"latent_dim": int(latent_dim), "grid": [int(grid[0]), int(grid[1])]}
    if num_actions is not None:
        out["num_actions"] = int(num_actions)
    return out
