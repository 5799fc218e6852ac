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
        if (action_map or {}).get("method", "cooccurrence") == "cooccurrence" and keys_are_game_actions(dynamics):
            from driftless.world.action_map import true_action_map

            action_map = true_action_map()  # a co-occurrence map would name LAM codes it never saw
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


def keys_are_game_actions(dynamics: str | Path) -> bool:
    """Does this dynamics checkpoint condition on Procgen's own (15) actions, so that its keys are the
    game's actions (`world.action_map.true_action_map`) and not LAM codes?"""
    from driftless.world.action_map import PROCGEN_ACTIONS

    cfg = checkpoint.read_header(dynamics, "dynamics")["config"]
    return cfg.get("action_source") == "true" and int(cfg.get("num_actions") or 0) >= PROCGEN_ACTIONS


def world_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def fit_world_action_map(lam_path: str | Path, store_path: str | Path, device="cpu", max_clips: int = 512) -> dict:
    from driftless.data.store import EpisodeStore
    from driftless.world.action_map import collect_pairs, fit_action_map

    lam = load_model(lam_path, device, kind="lam")
    lat, true = collect_pairs(lam, EpisodeStore(store_path), max_clips=max_clips, device=device)
    return fit_action_map(lat, true, lam.cfg.num_actions)


# ------------------------------------------------------------------------------ refit the key map
FIT_METHODS = ("auto", "effect", "motion", "cooccurrence")
COOCCURRENCE_FIELDS = ("keys", "groups", "accuracy", "majority_baseline", "pairs")


def world_folder(name_or_path: str | Path) -> Path:
    """The folder of a world: a path, or a shipped world's name."""
    from driftless.world.world import ASSETS

    path = Path(name_or_path)
    if not (path / "world.json").exists() and (ASSETS / str(name_or_path) / "world.json").exists():
        path = ASSETS / str(name_or_path)
    if not (path / "world.json").exists():
        raise FileNotFoundError(f"{name_or_path} is not a world folder (no world.json)")
    return path


def _procgen_game(store) -> str | None:
    source = str((store.meta if store is not None else {}).get("source", ""))
    return source.split(":", 1)[1] if source.startswith("procgen:") else None


def refit_action_map(world: str | Path, method: str = "auto", data: str | Path | None = None,
                     fit=None, game: str | None = None, eval_starts: int = 32, previews: bool = True, device="cpu",
                     progress: bool = False, log=print, **sampling) -> dict:
    """Refit the keyboard map of a world folder (or shipped world) and rewrite its world.json.

    method: "effect" (branch the game, `world.controls.fit_by_effect` with the BranchConfig
    `fit`), "motion" (scene motion of each latent action from clips of the store `data`; worlds
    learned from video files), "cooccurrence" (latent actions against the true actions of
    `data`), or "auto": effect where a Procgen game is known (`game`, the Procgen store's source
    or the map's earlier fit) and Procgen is installed, else motion where the world has dynamics
    and `data` is given, else co-occurrence.
    Where the game is available the new map and the one it replaces are measured on
    `eval_starts` held-out branch points of the test split (`accuracy`, `heldout`). The earlier
    map's co-occurrence evidence is kept (`counts`, `group_names`, `cooccurrence`); previews of
    every latent action go to `previews/`. Returns the new action map."""
    import importlib.util
    import json
    from dataclasses import replace

    from driftless.world import controls as C
    from driftless.world.world import load

    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {FIT_METHODS}, got {method!r}")
    folder = world_folder(world)
    meta = json.loads((folder / "world.json").read_text())
    previous = dict(meta.get("action_map") or {})
    w = load(folder, device=device)
    store = None
    if data is not None:
        from driftless.data.store import EpisodeStore

        store = EpisodeStore(data)
    fit = fit or C.BranchConfig()
    game = game or _procgen_game(store) or (previous.get("fit") or {}).get("game")
    has_procgen = importlib.util.find_spec("procgen") is not None
    playable = w.dynamics is not None and w.num_actions > 0
    if method == "auto":
        method = ("effect" if playable and has_procgen and game
                  else "motion" if playable and store is not None else "cooccurrence")
    if method == "effect" and not game:
        raise ValueError("the effect fit needs a Procgen game: --game, or a store made by `driftless data coinrun`")
    fit = replace(fit, game=game or fit.game)
    if method == "effect":
        if not has_procgen:
            raise ValueError('the effect fit branches the game and needs Procgen (pip install "driftless[procgen]")')
        if not playable:
            raise ValueError("the effect fit rolls the world out and needs an action-conditioned dynamics model")
        log(f"fitting by effect: {fit.starts} {game} {fit.split} branch points x {w.num_actions} latent actions x "
            f"{fit.frames} frames")
        am, m = C.fit_by_effect(w, fit, progress=progress, **sampling)
        context, gen, codes = m["starts"]["context"], m["gen"], m["codes"]
    elif method == "motion":
        if store is None or not playable:
            raise ValueError("the motion fit needs --data (a store of video clips) and a world with dynamics")
        context = _store_contexts(store, fit.starts, fit.context, fit.seed)
        log(f"fitting by scene motion: {len(context)} clips of {store.root} x {w.num_actions} latent actions x "
            f"{fit.frames} frames")
        am, m = C.fit_by_motion(w, context, fit.frames, seed=fit.seed, batch_size=fit.batch_size,
                                progress=progress, **sampling)
        gen, codes = m["gen"], m["codes"]
    else:
        if store is None or w.lam is None:
            raise ValueError("the co-occurrence fit needs --data (a store with true actions) and a world with a LAM")
        from driftless.world.action_map import collect_pairs, fit_action_map

        lat, true = collect_pairs(w.lam, store, device=w.device)
        am = {"method": "cooccurrence", **fit_action_map(lat, true, w.lam.cfg.num_actions)}
        gen = None
    # the earlier map's co-occurrence evidence stays readable where it was
    if previous.get("method", "cooccurrence") == "cooccurrence" and previous.get("keys"):
        old = {k: previous[k] for k in COOCCURRENCE_FIELDS if k in previous}
    else:
        old = previous.get("cooccurrence")
    if method != "cooccurrence":
        for k in ("counts", "group_names", "pairs"):
            if k in previous:
                am.setdefault(k, previous[k])
        if old:
            am["cooccurrence"] = old
    if method != "cooccurrence" and has_procgen and game and playable and eval_starts > 0:
        ev = replace(fit, split="test", starts=int(eval_starts), seed=fit.seed + 1)
        log(f"held-out controls accuracy: {ev.starts} {game} test branch points")
        st = C.sample_starts(ev)
        mt = C.measure_starts(w, st, measure=ev.measure, seed=ev.seed, batch_size=ev.batch_size, progress=progress,
                              **sampling)
        after = C.key_accuracy(mt["rates3"], mt["codes"], am["keys"])
        before = C.key_accuracy(mt["rates3"], mt["codes"], previous.get("keys") or {})
        best = C.key_accuracy(mt["rates3"], mt["codes"], C.keys_of(C.assign_controls(mt["rates3"], mt["rates4"])))
        am["heldout"] = {"split": "test", "starts": ev.starts, "seed": ev.seed, "frames": ev.frames,
                         "measure": ev.measure, "accuracy": after, "previous_map": previous.get("keys"),
                         "previous_accuracy": before, "best_one_to_one": best["mean"], **C.effect_evidence(mt)}
        am["accuracy"], am["majority_baseline"] = after["mean"], after["chance"]
        am["key_accuracy"] = after["keys"]
        am["accuracy_note"] = (f"controls accuracy: how often the key's latent action moves the world like the "
                               f"key's control moves the real game, {ev.starts} held-out {game} test states "
                               f"(chance {after['chance']:.3f})")
    elif method != "cooccurrence":
        am["accuracy"], am["majority_baseline"] = None, None
    if previews and gen is not None:
        am["previews"] = {"folder": "previews", "files": C.write_previews(folder / "previews", context, gen, codes),
                          "frames": int(gen.shape[2]) + 1, "note": "last real frame, then the latent action held"}
    meta["action_map"] = am
    checkpoint.atomic_write_json(folder / "world.json", meta)
    return am


def _store_contexts(store, n: int, length: int, seed: int):
    import numpy as np

    from driftless.data.clips import ClipDataset

    ds = ClipDataset(store, clip_len=length, stride=length)
    if len(ds) == 0:
        raise ValueError(f"{store.root} has no episode of {length}+ frames")
    idx = np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False)
    return np.stack([ds[int(i)]["frames"].numpy() for i in sorted(idx)])
