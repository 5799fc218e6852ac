"""Assemble a world folder from three trained checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from driftless import checkpoint
from driftless.models.registry import load_model

LAM_DECODER_PREFIXES = ("dec_embed.", "dec_pos", "action_in.", "decoder.", "head.")


def _export(src: str | Path, dst: Path, kind: str, dtype, strip_lam_decoder: bool = False) -> int:
    header = checkpoint.read_header(src, kind)
    weights = checkpoint.read_weights(src, ema=True)
    config = dict(header["config"])
    if strip_lam_decoder:
        weights = {k: v for k, v in weights.items() if not k.startswith(LAM_DECODER_PREFIXES)}
        config["inference_only"] = True
    meta = {k: v for k, v in header.get("meta", {}).items() if k in ("preset", "step", "data", "overrides")}
    meta["source"] = str(src)
    checkpoint.save(dst, kind, config, weights, meta=meta, dtype=dtype)
    return sum(v.numel() for v in weights.values())


def build_world(out: str | Path, tokenizer: str | Path, dynamics: str | Path | None = None,
                lam: str | Path | None = None, fp16: bool = True, sampling: dict | None = None,
                action_map: dict | None = None, name: str = "world", extra: dict | None = None) -> dict:
    """Copy EMA weights of the three components (fp16 by default, LAM decoder dropped) into
    `out` with a world.json; returns the world.json contents."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dtype = torch.float16 if fp16 else None
    params = {"tokenizer": _export(tokenizer, tmp / "tokenizer", "tokenizer", dtype)}
    tok_header = checkpoint.read_header(tokenizer, "tokenizer")
    if tok_header["config"].get("latent_mean") is None:
        raise ValueError(f"{tokenizer} has no latent statistics; its training did not finish")
    if lam is not None:
        params["lam"] = _export(lam, tmp / "lam", "lam", dtype, strip_lam_decoder=True)
    if dynamics is not None:
        params["dynamics"] = _export(dynamics, tmp / "dynamics", "dynamics", dtype)
    from driftless import __version__

    meta = {
        "format": "driftless-world", "version": __version__, "name": name,
        "tokenizer": "tokenizer", "lam": "lam" if lam is not None else None,
        "dynamics": "dynamics" if dynamics is not None else None,
        "sampling": sampling or {}, "action_map": action_map or {}, "parameters": params,
        "weights_dtype": "float16" if fp16 else "float32", **(extra or {}),
    }
    checkpoint.atomic_write_json(tmp / "world.json", meta)
    # check it loads before replacing anything
    from driftless.world.world import load

    load(tmp)
    checkpoint.swap_in(tmp, out)  # a crash leaves the old world (at OUT.old, which `load` reads) or the new one
    return meta


def world_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def fit_world_action_map(lam_path: str | Path, store_path: str | Path, device="cpu", max_clips: int = 512) -> dict:
    from driftless.data.store import EpisodeStore
    from driftless.world.action_map import collect_pairs, fit_action_map

    lam = load_model(lam_path, device, kind="lam")
    lat, true = collect_pairs(lam, EpisodeStore(store_path), max_clips=max_clips, device=device)
    return fit_action_map(lat, true, lam.cfg.num_actions)
