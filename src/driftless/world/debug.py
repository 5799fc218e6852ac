"""A tiny world with the debug presets, for tests and examples: untrained unless `train_steps`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from driftless import checkpoint
from driftless.config import to_dict
from driftless.models import registry
from driftless.models.compose import dynamics_fields
from driftless.models.dynamics import FRAME_MODELS


def make_debug_world(out: str | Path, seed: int = 0, num_actions: int = 4, action_map: dict | None = None,
                     dynamics_overrides: dict | None = None, tokenizer_overrides: dict | None = None) -> Path:
    """Write a world folder of random-weight debug components (64x64, |A| = num_actions).
    `dynamics_overrides` may choose the frame model, e.g. {"frame_model": "mar"}; "maskgit"
    comes with a VQ debug tokenizer whose codebook matches. `tokenizer_overrides` (dotted keys)
    change the tokenizer, e.g. {"decoder.temporal_window": 4} as the shipped world's is shorter
    than its dynamics' context."""
    from driftless.config import override
    from driftless.world.build import build_world

    torch.manual_seed(seed)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_cfg = override(registry.preset("tokenizer", "debug"), tokenizer_overrides or {})
        lam_cfg = override(registry.preset("lam", "debug"), {"num_actions": num_actions})
        dyn_cfg = override(registry.preset("dynamics", "debug"),
                           {**dynamics_fields(tok_cfg.latent_dim, tok_cfg.grid, num_actions), **(dynamics_overrides or {})})
        # the tokenizer the frame model reads through (maskgit: a VQ tokenizer of its codebook)
        tok_cfg = override(tok_cfg, FRAME_MODELS[dyn_cfg.frame_model].tokenizer_overrides(dyn_cfg))
        tok_cfg.latent_mean = [0.0] * tok_cfg.latent_dim
        tok_cfg.latent_std = [1.0] * tok_cfg.latent_dim
        paths = {}
        for kind, cfg in (("tokenizer", tok_cfg), ("lam", lam_cfg), ("dynamics", dyn_cfg)):
            model = registry.build(kind, cfg)
            # give the zero-initialised gates some weight so outputs depend on every input
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.abs().sum() == 0 and p.dim() >= 1:
                        p.normal_(0, 0.02)
            paths[kind] = checkpoint.save(tmp / kind, kind, to_dict(cfg), model.state_dict())
        build_world(out, paths["tokenizer"], paths["dynamics"], paths["lam"], fp16=False,
                    sampling={"steps": 3}, action_map=action_map or {}, name="debug")
    return out
