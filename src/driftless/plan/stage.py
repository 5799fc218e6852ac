"""The planner's sequence model as a stage, `sequence_df` in the stage table (`train.specs`): the
Diffusion-Forcing model, or with `baseline="diffuser"` the Diffuser-like baseline (the same kind
and class: bidirectional attention, one noise level per sequence).

It is trained in memory by `driftless plan train` (plan/train.py: `train_maze_model`), not by
`run_stage`: its normalisation statistics go from the dataset into buffers before training, and
it saves the EMA weights, optionally in float16, without a run folder. The table knows

    configure         the preset for a maze dataset (`maze_config`): the token width from the frame
                      stack, the condition (the current observation), the training window in
                      tokens (DF: the maze's episode; Diffuser: its published horizon), the
                      baseline's attention and noise, provenance in `cfg.meta`; --set wins
    clip length       the config's `max_tokens` (the training window, in tokens)
    tokens_per_frame  one (a token stands for `frame_stack` environment steps)
    synthetic_batch   random windows and conditions (`driftless bench train --stage sequence_df`)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from driftless.config import option, override
from driftless.train.specs import StageArgs, StageSpec, one_token, register_stage

BASELINES = ("diffuser",)
COND_DIM = 4  # the clean prefix token: the current observation (x, y, vx, vy)


@dataclass
class SequenceOptions:
    """The stage's own options (flags of `driftless plan train`)."""

    baseline: str | None = option(None, choices=BASELINES, help="train the Diffuser-like baseline instead: "
                                  "bidirectional attention, one noise level per sequence")
    frame_stack: int = option(10, help="environment steps per token (default 10)")
    tokens: int | None = option(None, help="tokens per training window (default: the episode for DF, "
                                           "Diffuser's horizon 128/256/384 steps for the baseline)")


def maze_config(cfg, data: dict, data_path, options: SequenceOptions, overrides: dict | None = None):
    """The preset `cfg` for the maze dataset `data` (as `plan.maze.load_dataset` reads it from
    `data_path`); `overrides` win."""
    from driftless.plan.evaluate import DIFFUSER_HORIZON
    from driftless.plan.maze import STEP_FEATURES, get_maze

    if options.baseline not in (None, *BASELINES):
        raise ValueError(f"--baseline must be 'diffuser' if given, got {options.baseline!r}")
    maze = get_maze(data["maze"])
    tokens = options.tokens
    if tokens is None:  # DF plans the whole episode; Diffuser its published horizon
        steps = DIFFUSER_HORIZON[maze.name] if options.baseline == "diffuser" else maze.episode_len
        tokens = math.ceil(steps / options.frame_stack)
    derived = {"token_dim": options.frame_stack * STEP_FEATURES, "cond_dim": COND_DIM, "max_tokens": tokens}
    if options.baseline == "diffuser":
        derived.update(causal=False, noise="full_sequence")
    derived["meta"] = {"maze": maze.name, "frame_stack": options.frame_stack, "tokens": tokens,
                       "data": str(data_path), "dataset_steps": int(len(data["actions"])),
                       "baseline": options.baseline or "diffusion_forcing"}
    return override(cfg, {**derived, **(overrides or {})})


def sequence_config(cfg, a: StageArgs):
    from driftless.plan.maze import load_dataset

    return maze_config(cfg, load_dataset(a.data), a.data, a.options, a.overrides)


def sequence_batch(cfg, batch: int, clip_len: int, generator: torch.Generator) -> dict:
    out = {"x0": torch.randn(batch, clip_len, cfg.token_dim, generator=generator)}
    if cfg.cond_dim:
        out["cond"] = torch.randn(batch, cfg.cond_dim, generator=generator)
    return out


SEQUENCE_DF = register_stage(StageSpec(
    name="sequence_df", help="train the Diffusion-Forcing sequence model (or the Diffuser-like baseline) on a "
                             "Maze2D dataset",
    data_help=".npz maze dataset (from `driftless data maze`)", clip_field="max_tokens", options=SequenceOptions,
    configure=sequence_config, tokens_per_frame=one_token, synthetic_batch=sequence_batch,
    verb="driftless plan train"))
