"""Map keyboard controls to latent actions, learned from data that has true actions.

The LAM's codes are unlabelled. On clips whose true (Procgen) actions are known we count how
often each latent action co-occurs with each control group (left, right, jump, ...). A key is
mapped to the latent action that is most over-represented for its group, and the map's
accuracy is how often the group predicted from a latent action (the most likely group given
that code) equals the true one on held-out transitions.
"""

from __future__ import annotations

import numpy as np
import torch

# Procgen's 15 actions are combinations of LEFT/RIGHT, DOWN/UP and the special keys D/A/W/S/Q/E,
# which CoinRun ignores. Groups below are the controls a player can tell apart.
PROCGEN_GROUPS: dict[str, tuple[int, ...]] = {
    "none": (3, 4, 9, 10, 11, 12, 13, 14),  # down, no-op, unused specials
    "left": (0, 1),  # left(+down)
    "right": (6, 7),  # right(+down)
    "jump": (5,),
    "left_jump": (2,),
    "right_jump": (8,),
}
# keyboard keys (KeyboardEvent.key) -> control group
KEY_GROUPS: dict[str, str] = {
    "ArrowLeft": "left", "ArrowRight": "right", "ArrowUp": "jump", " ": "jump", "ArrowDown": "none",
}
# keyboard keys -> Procgen's own actions (left, right, up, up, down), for a dynamics model that
# conditions on the data's true actions instead of LAM codes
KEY_ACTIONS: dict[str, int] = {"ArrowLeft": 1, "ArrowRight": 7, "ArrowUp": 5, " ": 5, "ArrowDown": 3}
PROCGEN_ACTIONS = 15


def true_action_map() -> dict:
    """The key map of a world whose dynamics is conditioned on Procgen's actions: each key is the
    game's own action (no fit; `driftless world refit-actions` can still fit one by effect)."""
    return {"method": "true", "keys": dict(KEY_ACTIONS),
            "groups": {"none": 4, "left": 1, "right": 7, "jump": 5, "left_jump": 2, "right_jump": 8}}


def groups_of(true_actions: np.ndarray, groups: dict[str, tuple[int, ...]]) -> np.ndarray:
    lookup = np.full(max(max(v) for v in groups.values()) + 1, -1, dtype=np.int64)
    for gi, acts in enumerate(groups.values()):
        lookup[list(acts)] = gi
    return lookup[true_actions]


@torch.no_grad()
def collect_pairs(lam, store, clip_len: int = 16, max_clips: int = 512, seed: int = 0, device="cpu",
                  batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Latent actions and true actions for transitions of random clips of a store."""
    from driftless.data.clips import ClipDataset

    ds = ClipDataset(store, clip_len=clip_len)
    if len(ds) == 0:
        raise ValueError(f"the store has no episode of {clip_len}+ frames to fit an action map")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds), size=min(max_clips, len(ds)), replace=False)
    lat, true = [], []
    for i in range(0, len(idx), batch_size):
        items = [ds[int(j)] for j in idx[i:i + batch_size]]
        frames = torch.stack([it["frames"] for it in items]).to(device)
        lat.append(lam.infer_actions(frames).cpu().numpy().reshape(-1))
        true.append(torch.stack([it["actions"] for it in items]).numpy().reshape(-1))
    lat_a, true_a = np.concatenate(lat), np.concatenate(true)
    keep = true_a >= 0
    if not keep.any():
        raise ValueError("the store has no true actions (all -1); an action map needs labelled data")
    return lat_a[keep], true_a[keep]


def fit_action_map(latent: np.ndarray, true: np.ndarray, num_latent: int,
                   groups: dict[str, tuple[int, ...]] = PROCGEN_GROUPS, keys: dict[str, str] = KEY_GROUPS,
                   holdout: float = 0.3, seed: int = 0) -> dict:
    """Fit on part of the pairs, report accuracy on the rest; returns the JSON-able map."""
    g = groups_of(true, groups)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(g))
    n_fit = int(len(g) * (1 - holdout))
    fit, test = order[:n_fit], order[n_fit:]
    counts = np.zeros((len(groups), num_latent))  # (groups, latent)
    np.add.at(counts, (g[fit], latent[fit]), 1)
    p_latent_given_group = (counts + 1) / (counts.sum(1, keepdims=True) + num_latent)
    p_latent = (counts.sum(0) + 1) / (counts.sum() + num_latent)
    lift = p_latent_given_group / p_latent  # over-representation of each latent for a group
    names = list(groups)
    group_to_latent = {name: int(np.argmax(lift[i])) for i, name in enumerate(names)}
    latent_to_group = counts.argmax(0)  # most frequent group for each latent action
    pred = latent_to_group[latent[test]]
    accuracy = float((pred == g[test]).mean()) if len(test) else float("nan")
    majority = float((g[test] == np.bincount(g[fit], minlength=len(names)).argmax()).mean()) if len(test) else float("nan")
    return {
        "keys": {k: group_to_latent[grp] for k, grp in keys.items() if grp in group_to_latent},
        "groups": group_to_latent,
        "group_names": names,
        "accuracy": accuracy,
        "majority_baseline": majority,
        "pairs": int(len(g)),
        "counts": counts.astype(int).tolist(),
    }
