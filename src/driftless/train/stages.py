"""Train one stage with the one trainer: what differs between stages comes from its `StageSpec`
(train/specs.py; the world's stages are in train/world_stages.py, the showcases' in their
packages). `driftless train STAGE` and `driftless image train` run through here; the maze and
forecasting models train in memory through `train.memory.train_in_memory` instead."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from driftless import checkpoint
from driftless.config import normalized, to_dict
from driftless.models import registry
from driftless.train.distributed import barrier, setup
from driftless.train.specs import STAGES, StageArgs, StageSpec, all_stages, get_stage, register_stage
from driftless.train.trainer import Trainer

__all__ = ["STAGES", "StageArgs", "StageSpec", "all_stages", "get_stage", "register_stage", "run_stage"]

# keys a checkpoint's config may gain after training without breaking --resume
POST_TRAINING_KEYS = ("latent_mean", "latent_std")


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(cfg)).items() if k not in POST_TRAINING_KEYS}


def run_stage(a: StageArgs) -> dict:
    """Train one stage; returns the trainer's summary plus where the checkpoint is."""
    spec = get_stage(a.kind)
    if spec.data is None:
        raise ValueError(f"stage {a.kind!r} is trained by `{spec.verb}`, not by run_stage (it has no data stream)")
    a = spec.resolve(a)
    _check_out(a)  # on every rank, before any of them writes (setup waits for all ranks)
    info = setup(a.device)
    torch.manual_seed(a.train.seed)  # identical initial weights on every rank
    cfg, clip_len = spec.with_clip_len(spec.configure(registry.preset(a.kind, a.preset), a), a.clip_len)
    model = registry.build(a.kind, cfg)
    if a.init_from:
        _init_weights(model, a.init_from, a.kind)
    out = Path(a.out)
    stream, val = spec.data(a, cfg, clip_len, info)
    model_config = to_dict(cfg)
    meta = {"preset": a.preset, "data": a.data, "overrides": a.overrides, **(spec.meta(a) if spec.meta else {})}
    trainer = Trainer(model, a.train, out, info, a.kind, model_config, meta=meta,
                      frames_per_sample=clip_len, validation=spec.validation, progress=a.progress)
    if a.resume:
        ckpt = out / "checkpoint"
        try:
            header = checkpoint.read_header(ckpt, a.kind)
            saved = normalized(type(cfg), header["config"])  # fields added since: their defaults
            if _comparable(saved) == _comparable(model_config):
                trainer.model_config = saved  # keep fitted statistics
                model_config = saved
        except checkpoint.CheckpointError:
            pass
        try:
            resumed = trainer.resume()
        except checkpoint.CheckpointError as e:  # never start fresh over weights that are still there
            raise checkpoint.CheckpointError(
                f"cannot resume: {e}. Nothing was changed; repair or move {ckpt} away, or pass --force instead "
                f"of --resume to start over (overwriting it)") from e
        if info.is_main:
            print(f"resumed from step {trainer.step}" if resumed else "no checkpoint to resume; starting fresh")
    (out).mkdir(parents=True, exist_ok=True)
    if a.force and info.is_main:
        (out / "metrics.jsonl").unlink(missing_ok=True)  # the log of the run being started over
    if info.is_main:
        checkpoint.atomic_write_json(out / "stage.json", {"kind": a.kind, "preset": a.preset, "data": a.data,
                                                          "overrides": a.overrides, "train": a.train.__dict__})
    summary = trainer.fit(stream, val)
    if spec.after_fit and summary["stopped"] in ("steps", "time_budget") and info.is_main:
        spec.after_fit(trainer, stream, a)
    barrier(info)
    summary["checkpoint"] = str(out / "checkpoint")
    return summary


def _check_out(a: StageArgs) -> None:
    """Refuse a run folder that already holds something unless --resume (continue it) or --force
    (start it over): a fresh run would overwrite its checkpoint."""
    if a.resume and a.force:
        raise ValueError("--resume and --force contradict each other: --resume continues the run in --out, "
                         "--force starts it over")
    out = Path(a.out)
    if a.force or a.resume or not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run folder")
    held = sorted(p.name for p in out.iterdir())
    if held:
        raise ValueError(f"{out} already holds a run ({', '.join(held[:6])}{', ...' if len(held) > 6 else ''}); "
                         f"nothing was changed. Pass --resume to continue it, --force to start over (overwriting "
                         f"it), or choose another --out")


def fit_action_rows(kind: str, own: dict, weights: dict) -> tuple[dict, str | None]:
    """A dynamics model continued under a LAM with another codebook size: `weights` (from the
    checkpoint) with the latent actions' embedding rows taken fresh from `own` (the new model's
    initial state) - they meant the old LAM's codes, which a new LAM's never match - and the null
    action's row (the last: unconditional) kept. Anything else is left for the caller to refuse."""
    if kind != "dynamics":
        return weights, None
    weights, switched = _fit_action_conditioning(own, weights)
    key = "action_emb.weight"
    if key not in weights or key not in own or weights[key].shape == own[key].shape:
        return weights, switched
    old, new = weights[key], own[key].detach().clone().to(weights[key].dtype)
    if old.shape[1:] != new.shape[1:]:
        return weights, switched
    new[-1] = old[-1]
    note = (f"the action embedding was re-initialised ({old.shape[0] - 1} -> {new.shape[0] - 1} latent actions; "
            f"the null action's row kept)")
    return {**weights, key: new}, "; ".join(n for n in (note, switched) if n)


def _fit_action_conditioning(own: dict, weights: dict) -> tuple[dict, str | None]:
    """A dynamics model continued with the other `action_conditioning`: "token" has a learned bias
    of the prepended action token, "additive" (the action added to the per-frame conditioning) has
    none; the bias is dropped, or taken fresh from `own`. The action rows carry over either way."""
    key = "action_token_bias"
    if key in weights and key not in own and "action_emb.weight" in own:
        return {k: v for k, v in weights.items() if k != key}, "token -> additive action conditioning (the token's bias dropped)"
    if key in own and key not in weights and "action_emb.weight" in weights:
        return {**weights, key: own[key].detach().clone()}, "additive -> token action conditioning (a fresh token bias)"
    return weights, None


def _init_weights(model, path: str, kind: str) -> None:
    """Copy weights (EMA if present) from a checkpoint of the same kind and shape."""
    checkpoint.read_header(path, kind)
    state = {k: v.float() for k, v in checkpoint.read_weights(path, ema=True).items()}
    state, note = fit_action_rows(kind, model.state_dict(), state)
    if note:
        print(f"--init-from {path}: {note}", flush=True)
    own = model.state_dict()
    resized = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    if resized:
        raise ValueError(f"--init-from {path}: weights do not fit this {kind} config (other shapes: "
                         + ", ".join(f"{k} {tuple(state[k].shape)} -> {tuple(own[k].shape)}" for k in resized[:4])
                         + ")")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"--init-from {path}: weights do not fit this {kind} config "
                         f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
