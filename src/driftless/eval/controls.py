"""Controls evaluation (`driftless eval`, part "controls"): do the keys do what they say?

From `starts` held-out game states (Procgen levels of the evaluated split, reached by a
held-action random agent), the real game holds each control (left, right, jump, none) for
`frames` frames, and the world, started on the real frames up to the branch point, holds each
of its latent actions as long (world/controls.py). Per key of the world's action map: how often
the world's branch for the key's latent action is nearer the real branch of the key's control
than the real branches of the other controls (left / right / jump: chance 1/3). The same
rollouts give every latent action's rates against every control, so the result also says what
the best one-to-one map would have scored on these starts (optimistic: fitted on them).

`latent_action_probe` (in the result as `lam_probe`) asks the LAM directly: on clips of a
held-action agent, how well the latent action inferred for a transition predicts the control
group of the true action (overall and per group), against the majority baseline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from driftless.world.controls import (HEADLINE, MEASURES, PRIMARY, BranchConfig, assign_controls,
                                      branch_distances, key_accuracy, key_accuracy_interval, keys_of,
                                      measure_starts, nearest_rates, reconstructed_reference, sample_starts)


def game_of(world, store=None) -> str | None:
    """The Procgen game a world plays: its effect-fitted map's, else the store's source."""
    fit = (world.action_map or {}).get("fit") or {}
    if fit.get("game"):
        return str(fit["game"])
    source = str((getattr(store, "meta", None) or {}).get("source", ""))
    return source.split(":", 1)[1] if source.startswith("procgen:") else None


def controls_protocol(world, store=None, starts: int = 32, frames: int = 8, split: str = "test", seed: int = 0,
                      batch_size: int = 64, measure: str = "shift", strip_starts: int = 3, progress: bool = False,
                      game: str | None = None, probe_episodes: int = 8, **sampling) -> tuple[dict, dict]:
    """Per-key controls accuracy of the world's action map on held-out branch points;
    returns (JSON-able result, {"controls_strips": ...})."""
    import importlib.util

    game = game or game_of(world, store)
    why = None
    if world.dynamics is None or not world.num_actions:
        why = "the world has no action-conditioned dynamics"
    elif game is None:
        why = "no game to branch: neither the world's action map nor the store names a Procgen game"
    elif importlib.util.find_spec("procgen") is None:
        why = 'Procgen is not installed (pip install "driftless[procgen]")'
    elif tuple(world.resolution) != (64, 64):
        why = f"Procgen frames are 64x64, the world's {tuple(world.resolution)}"
    if why:
        return {"available": False, "reason": why}, {}
    cfg = BranchConfig(starts=starts, frames=frames, split=split, game=game, seed=seed, measure=measure,
                       batch_size=batch_size)
    st = sample_starts(cfg)
    m = measure_starts(world, st, measure=measure, seed=seed, batch_size=batch_size, progress=progress, **sampling)
    keys = {k: int(v) for k, v in (world.action_map or {}).get("keys", {}).items()}
    acc = key_accuracy(m["rates3"], m["codes"], keys)
    best_groups = assign_controls(m["rates3"], m["rates4"])
    best = key_accuracy(m["rates3"], m["codes"], keys_of(best_groups))
    # the same rollouts judged by the other measure, for comparison
    other = {}
    for other_measure in MEASURES:
        if other_measure == measure:
            continue
        ref = reconstructed_reference(world, st["context"], batch_size) if other_measure == "shift" else None
        d = branch_distances(m["gen"], st["real"], other_measure, ref, st["context"][:, -1])
        r3 = nearest_rates(d, st["controls"], HEADLINE)
        other[other_measure] = {"map": key_accuracy(r3, m["codes"], keys)["mean"],
                                "best": key_accuracy(r3, m["codes"], keys_of(assign_controls(
                                    r3, nearest_rates(d, st["controls"], PRIMARY))))["mean"]}
    none_code = keys.get("ArrowDown")
    result = {
        "available": True, "game": game, "split": split, "starts": starts, "frames": frames, "measure": measure,
        "context": cfg.context, "seed": seed, "map": keys, "method": (world.action_map or {}).get("method"),
        "accuracy": acc,
        "accuracy_ci": key_accuracy_interval(m["dist"], st["controls"], m["codes"], keys, seed=seed),
        "none_accuracy": (float(m["rates4"][PRIMARY.index("none"), m["codes"].index(none_code)])
                          if none_code is not None and none_code in m["codes"] else None),
        "rates": {c: m["rates3"][i].tolist() for i, c in enumerate(HEADLINE)},
        "rates_with_none": {c: m["rates4"][i].tolist() for i, c in enumerate(PRIMARY)},
        "best_map": keys_of(best_groups), "best_accuracy": best,
        "other_measures": other,
        "real_game_check": real_game_check(st, measure),
    }
    if probe_episodes and world.lam is not None:
        result["lam_probe"] = latent_action_probe(world, probe_episodes, split=split, game=game, seed=seed)
    k = min(strip_starts, starts)
    strips = {"context": st["context"][:k], "real": st["real"][:k], "controls": st["controls"],
              "gen": m["gen"][:k], "codes": m["codes"], "keys": keys}
    return result, {"controls_strips": strips}


def real_game_check(st: dict, measure: str) -> dict:
    """Does the measure tell the controls apart on the game itself? A perfect world's branch is
    stood in for by the real branch seen from one frame later (frames 2..k against frame 1 as the
    branch point), judged against the real branches (frames 1..k-1 against the branch point): how
    often it is nearest its own control's (left / right / jump)."""
    real = st["real"]  # (n, C, k, H, W, 3)
    if real.shape[2] < 3:
        return {}
    target, last = real[:, :, :-1], st["context"][:, -1]
    idx = [st["controls"].index(c) for c in HEADLINE]
    hits = {}
    for j, ci in enumerate(idx):
        probe = real[:, ci:ci + 1, 1:]  # (n, 1, k-1, H, W, 3)
        d = branch_distances(probe, target, measure, real[:, ci, 0], last)[:, 0, idx]  # (n, 3)
        hits[HEADLINE[j]] = float((d.argmin(-1) == j).mean())
    return {"accuracy": hits, "mean": float(np.mean(list(hits.values())))}


def write_strips(result: dict, artifacts: dict, out_dir: str | Path) -> list[str]:
    """One PNG per start: the real branch of each control above the world's branch of each key."""
    from driftless.eval.plots import frame_strip

    s = artifacts.get("controls_strips")
    if not s or not result.get("controls", {}).get("available"):
        return []
    out, paths = Path(out_dir), []
    by_group = {}
    from driftless.world.action_map import KEY_GROUPS

    for key, code in s["keys"].items():
        by_group.setdefault(KEY_GROUPS.get(key, key), code)
    for i in range(len(s["context"])):
        rows, labels = [], []
        ctx = s["context"][i]
        for c in PRIMARY:
            if c not in s["controls"]:
                continue
            rows.append(np.concatenate([ctx, s["real"][i, s["controls"].index(c)]]))
            labels.append(f"game: {c}")
            code = by_group.get(c)
            if code is not None and code in s["codes"]:
                rows.append(np.concatenate([ctx, s["gen"][i, s["codes"].index(code)]]))
                labels.append(f"world: action {code}")
        cols = [f"ctx {j + 1}" for j in range(len(ctx))] + [f"t={t}" for t in range(1, s["real"].shape[2] + 1)]
        paths.append(frame_strip(rows, labels, out / f"controls_strip_{i}.png", col_labels=cols,
                                 title=f"start {i}: the real game's control vs the world's key"))
    return [str(p) for p in paths]


# ------------------------------------------------------------------------------ LAM probe
def latent_action_probe(world, episodes: int = 8, split: str = "test", game: str = "coinrun", hold_mean: float = 6.0,
                        max_frames: int = 200, clip_len: int = 16, seed: int = 0, batch_size: int = 32) -> dict:
    """Latent actions against true actions on clips of a held-action agent (`episodes` fresh
    episodes of `split`, cut into `clip_len`-frame clips): a co-occurrence map fitted on 70 % of
    the transitions, its accuracy on the rest (overall and per control group: how often a
    transition of that group is predicted as it) and the majority baseline."""
    from driftless.data.coinrun import AgentPolicy, make_env, run_episodes
    from driftless.world.action_map import PROCGEN_GROUPS, fit_action_map, groups_of

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9B0BE]))
    env = make_env(min(8, episodes), split, int(rng.integers(2**31 - 1)), game=game)
    clips = []
    for frames, actions, _r, _i in run_episodes(env, rng, want=episodes, max_frames=max_frames,
                                                policy=AgentPolicy("held", hold_mean)):
        for s in range(0, len(frames) - clip_len + 1, clip_len):
            clips.append((frames[s:s + clip_len], actions[s:s + clip_len - 1]))
    env.close()
    if not clips:
        return {"available": False, "reason": f"no episode of {clip_len}+ frames"}
    lat, true = [], []
    for lo in range(0, len(clips), batch_size):
        part = clips[lo:lo + batch_size]
        lat.append(world.infer_actions(np.stack([f for f, _ in part])).reshape(-1))
        true.append(np.stack([a for _, a in part]).reshape(-1))
    lat_a, true_a = np.concatenate(lat), np.concatenate(true)
    keep = true_a >= 0
    lat_a, true_a = lat_a[keep], true_a[keep]
    fit = fit_action_map(lat_a, true_a, world.lam.cfg.num_actions, seed=seed)
    # per-group recall on the held-out part (the same split as fit_action_map's)
    g = groups_of(true_a, PROCGEN_GROUPS)
    order = np.random.default_rng(seed).permutation(len(g))
    test = order[int(len(g) * 0.7):]
    pred, truth = np.asarray(fit["counts"]).argmax(0)[lat_a[test]], g[test]
    per_group = {n: (float((pred[truth == i] == i).mean()) if (truth == i).any() else None)
                 for i, n in enumerate(PROCGEN_GROUPS)}
    return {"available": True, "episodes": episodes, "split": split, "hold_mean": hold_mean,
            "transitions": int(len(g)), "accuracy": fit["accuracy"], "majority_baseline": fit["majority_baseline"],
            "per_group_recall": per_group, "groups": fit["groups"]}
