"""How models fit together: a model that works in a tokenizer's latent space takes the
tokenizer's latent width and token grid (the dynamics model, the image showcase's MAR model),
and the dynamics model is conditioned on the latent action model's actions (its action count).

Whatever builds such a config for given components (the dynamics stage from a latent cache,
benchmarks on random weights, the debug world, the image stage from its tokenizer) takes those
fields from here.
"""

from __future__ import annotations

from typing import Sequence


def latent_fields(latent_dim: int, grid: Sequence[int]) -> dict:
    """The config fields of a model of a tokenizer's latents, as overrides: the tokenizer's latent
    width and token grid (h, w) per frame."""
    if len(grid) != 2:
        raise ValueError(f"grid must be (h, w) tokens, got {grid!r}")
    return {"latent_dim": int(latent_dim), "grid": [int(grid[0]), int(grid[1])]}


def dynamics_fields(latent_dim: int, grid: Sequence[int], num_actions: int | None = None) -> dict:
    """The DynamicsConfig fields the other components fix, as overrides: the tokenizer's latent
    width and token grid (h, w), and the LAM's action count (None: leave the config's)."""
    out = latent_fields(latent_dim, grid)
    if num_actions is not None:
        out["num_actions"] = int(num_actions)
    return out
