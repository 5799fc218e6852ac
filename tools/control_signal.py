"""How much one transition of a held-action store says about the control that was held (issue 15).

Probes, on the transitions of a store with true actions (split by episode, 70 % fitted, 30 % scored),
how well each of these predicts the control group (none / left / right / jump / left_jump /
right_jump, world/action_map.py) of the true action:

* the majority group;
* the world's latent action codes (each code -> its most frequent group);
* a small MLP on the LAM's continuous action vectors (before the codebook), of transition t alone and
  of t, t+1, t+2 together;
* a small MLP on global-motion features computed from the pixels: the error of every whole-frame shift
  of up to 4 pixels between consecutive frames (81 values), for transition t alone, t-1..t+1 and
  t-2..t+6. This is what a perfect reading of the scene's motion could give, with no learning from
  video: a reference for how far a LAM can get on single transitions.

    python tools/control_signal.py runs/s34/data/val --world coinrun --json out.json

Runs on a CPU in about a minute for 20k transitions. docs/benchmarks.md 2.13.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import driftless
from driftless.data.store import EpisodeStore
from driftless.models.common import pixels_to_unit
from driftless.world.action_map import PROCGEN_GROUPS, groups_of

GROUPS = list(PROCGEN_GROUPS)


def clips_of(store, clip_len: int, max_clips: int):
    """Non-overlapping clips of every episode: frames (n, L, H, W, 3) uint8, actions (n, L-1), episode (n,)."""
    frames, actions, episode = [], [], []
    for ei in range(store.num_episodes):
        f, a = store.frames(ei), store.actions(ei)
        for s in range(0, len(f) - clip_len + 1, clip_len):
            frames.append(np.asarray(f[s:s + clip_len]))
            actions.append(np.asarray(a[s:s + clip_len - 1]))
            episode.append(ei)
            if len(frames) >= max_clips:
                return np.stack(frames), np.stack(actions), np.asarray(episode)
    return np.stack(frames), np.stack(actions), np.asarray(episode)


def shift_errors(frames: np.ndarray, reach: int = 4) -> torch.Tensor:
    """uint8 (n, L, H, W, 3) -> (n, L-1, (2 reach + 1)^2): the mean squared error of every whole-frame
    shift between consecutive grey frames, each row divided by its mean (the motion's shape, not the
    scene's contrast)."""
    g = torch.from_numpy(frames).float().mean(-1)  # (n, L, H, W)
    a, b = g[:, 1:], g[:, :-1]
    h, w = g.shape[-2:]
    r = reach
    errs = [((a[..., r + dy:h - r + dy, r + dx:w - r + dx] - b[..., r:h - r, r:w - r]) ** 2).mean((-1, -2))
            for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    e = torch.stack(errs, -1)
    return e / (e.mean(-1, keepdim=True) + 1e-6)


def shifted(x: torch.Tensor, k: int) -> torch.Tensor:
    """(n, T, f) -> the features of transition t + k at t (clamped at the clip's ends)."""
    if k > 0:
        return torch.cat([x[:, k:], x[:, -1:].expand(-1, k, -1)], 1)
    if k < 0:
        return torch.cat([x[:, :1].expand(-1, -k, -1), x[:, :k]], 1)
    return x


def scored(pred: torch.Tensor, truth: torch.Tensor) -> dict:
    return {"accuracy": round(float((pred == truth).float().mean()), 4),
            "recall": {n: round(float((pred[truth == i] == i).float().mean()), 3)
                       for i, n in enumerate(GROUPS) if bool((truth == i).any())}}


def mlp_probe(x: torch.Tensor, groups: torch.Tensor, fit: torch.Tensor, epochs: int = 300, seed: int = 0) -> dict:
    """A 1-hidden-layer MLP fitted on the clips `fit` (bool (n,)) and scored on the rest."""
    torch.manual_seed(seed)
    xf, xs = x[fit].reshape(-1, x.shape[-1]), x[~fit].reshape(-1, x.shape[-1])
    yf, ys = groups[fit].reshape(-1), groups[~fit].reshape(-1)
    mu, sd = xf.mean(0), xf.std(0) + 1e-6
    xf, xs = (xf - mu) / sd, (xs - mu) / sd
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], 128), torch.nn.GELU(), torch.nn.Linear(128, len(GROUPS)))
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(net(xf), yf).backward()
        opt.step()
    with torch.no_grad():
        return scored(net(xs).argmax(1), ys)


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", help="a driftless store with true actions (driftless data coinrun), e.g. the val split")
    ap.add_argument("--world", default="coinrun", help="world whose LAM is probed (default: the shipped coinrun)")
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--max-clips", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    t0 = time.time()
    store = EpisodeStore(args.store)
    frames, actions, episode = clips_of(store, args.clip_len, args.max_clips)
    if (actions < 0).any() or (actions > 14).any():
        raise ValueError(f"{args.store}: expected Procgen's true actions 0..14 on every transition (a store of "
                         f"`driftless data coinrun`), found {int(((actions < 0) | (actions > 14)).sum())} others")
    groups = torch.from_numpy(groups_of(actions, PROCGEN_GROUPS))
    episodes = np.unique(episode)
    fit_eps = set(np.random.default_rng(args.seed).permutation(episodes)[:int(0.7 * len(episodes))].tolist())
    fit = torch.tensor([e in fit_eps for e in episode])
    gf, gs = groups[fit].reshape(-1), groups[~fit].reshape(-1)

    world = driftless.load(args.world, device="cpu")
    lam = world.lam.eval()
    vecs, codes = [], []
    with torch.no_grad():
        for i in range(0, len(frames), 64):
            v = lam._action_vectors(pixels_to_unit(torch.from_numpy(frames[i:i + 64])))
            vecs.append(v.float())
            codes.append(lam.vq.quantize(v))
    vec, code = torch.cat(vecs), torch.cat(codes)
    counts = torch.zeros(lam.cfg.num_actions, len(GROUPS))
    counts.index_put_((code[fit].reshape(-1), gf), torch.ones(len(gf)), accumulate=True)
    motion = shift_errors(frames)
    result = {
        "store": str(args.store), "world": args.world, "clips": int(len(frames)), "clip_len": args.clip_len,
        "transitions": int(groups.numel()), "scored_transitions": int(len(gs)), "episodes": int(len(episodes)),
        "group_share": {n: round(float((groups == i).float().mean()), 3) for i, n in enumerate(GROUPS)},
        "code_usage": torch.bincount(code.reshape(-1), minlength=lam.cfg.num_actions).tolist(),
        "lam_chunk": int(getattr(lam.cfg, "chunk", 1)),
        "probes": {
            "majority": scored(torch.full_like(gs, int(torch.bincount(gf).argmax())), gs),
            "latent_codes": scored(counts.argmax(1)[code[~fit].reshape(-1)], gs),
            "lam_vector_t": mlp_probe(vec, groups, fit, seed=args.seed),
            "lam_vector_t..t+2": mlp_probe(torch.cat([vec, shifted(vec, 1), shifted(vec, 2)], -1), groups, fit,
                                           seed=args.seed),
            "motion_t": mlp_probe(motion, groups, fit, seed=args.seed),
            "motion_t-1..t+1": mlp_probe(torch.cat([shifted(motion, k) for k in (-1, 0, 1)], -1), groups, fit,
                                         seed=args.seed),
            "motion_t-2..t+6": mlp_probe(torch.cat([shifted(motion, k) for k in range(-2, 7)], -1), groups, fit,
                                         seed=args.seed),
        },
        "same_group_after": {str(k): round(float((groups[:, k:] == groups[:, :-k]).float().mean()), 3)
                             for k in (1, 2, 3, 5)},
        "seconds": round(time.time() - t0, 1),
    }
    for name, p in result["probes"].items():
        print(f"{name:20s} accuracy {p['accuracy']:.3f}  " + "  ".join(f"{k} {v:.2f}" for k, v in p["recall"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
