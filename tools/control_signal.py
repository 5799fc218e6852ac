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
    python tools/control_signal.py STORE --lam RUN/lam/checkpoint --lam RUN2/lam/checkpoint --codes-only

With `--lam` (repeatable) it probes LAM checkpoints instead of a world's LAM, and `--codes-only` keeps
only what needs no fitting of the motion features: each LAM's codes as a probe, and per code the
groups of its transitions and the scene's mean whole-frame shift (does any code mean "right"?).
Runs on a CPU in about a minute for 20k transitions. docs/benchmarks.md 2.13, 2.17.
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


def best_shift(frames: np.ndarray, reach: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, L, H, W, 3) -> dx, dy (n, L-1) int: the whole-frame shift (pixels) that best maps
    each frame onto the next, as the camera's motion: dx > 0 the scene slid left, i.e. the camera (which
    follows the player) moved right; dy > 0 it moved down."""
    e = shift_errors(frames, reach)  # shift (dx, dy) with frame t+1 at p + (dx, dy) matching frame t at p
    best = e.argmin(-1)
    side = 2 * reach + 1
    return -(best % side - reach), -(best // side - reach)  # the camera moves against the scene


def code_table(code: torch.Tensor, groups: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor,
               num_actions: int) -> list[dict]:
    """Per latent action: its share of transitions, the control groups of those transitions, and the
    scene's motion under it (mean shift, how often it moves right / left / vertically)."""
    rows = []
    for k in range(num_actions):
        m = code == k
        n = int(m.sum())
        row = {"code": k, "share": round(n / code.numel(), 4)}
        if n:
            row["groups"] = {g: round(float((groups[m] == i).float().mean()), 3) for i, g in enumerate(GROUPS)}
            row.update(dx=round(float(dx[m].float().mean()), 3), dy=round(float(dy[m].float().mean()), 3),
                       right=round(float((dx[m] > 0).float().mean()), 3),
                       left=round(float((dx[m] < 0).float().mean()), 3),
                       vertical=round(float((dy[m] != 0).float().mean()), 3))
        rows.append(row)
    return rows


def best_codes(code: torch.Tensor, groups: torch.Tensor, num_actions: int,
               names: tuple[str, ...] = ("left", "right", "jump")) -> dict:
    """For each control group, the single code that best stands for it: F1 of "transition has this
    code" as a detector of the group (precision: its transitions in the group; recall: the group's
    transitions with it). A held key plays one code, so this is what a key can mean at best."""
    out = {}
    for name in names:
        gi = GROUPS.index(name)
        in_group = groups == gi
        best = None
        for k in range(num_actions):
            has = code == k
            tp = float((has & in_group).sum())
            if not tp:
                continue
            precision, recall = tp / float(has.sum()), tp / float(in_group.sum())
            f1 = 2 * precision * recall / (precision + recall)
            if best is None or f1 > best["f1"]:
                best = {"code": k, "precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3)}
        out[name] = best or {"code": None, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    return out


def direction_codes(table: list[dict], min_share: float = 0.01, clean: float = 0.8) -> dict:
    """For each direction, the code (of at least `min_share` of the transitions) under which the camera
    most often moves that way, and how often; "score": the mean over left and right. A key held on a
    code that moves right 90 % of the time moves the player right; one at 50 % does not. "recall": of
    the transitions that move the camera that way, the share whose code moves it that way at least
    `clean` of the time (the rest carry codes that do not say the direction; benchmarks 2.19)."""
    out = {}
    for d in ("left", "right"):
        rows = [r for r in table if r["share"] >= min_share]
        best = max(rows, key=lambda r: r[d]) if rows else None
        out[d] = {"code": best["code"], "rate": best[d], "share": best["share"]} if best else None
        moved = sum(r["share"] * r.get(d, 0.0) for r in table)
        if out[d] and moved:
            said = sum(r["share"] * r[d] for r in table if r.get(d, 0.0) >= clean)
            out[d]["recall"] = round(said / moved, 3)
    out["score"] = round(sum(out[d]["rate"] for d in ("left", "right") if out[d]) / 2, 3)
    return out


def probe_lam(lam, frames: np.ndarray, groups: torch.Tensor, fit: torch.Tensor, dx, dy, seed: int,
              vectors: bool = True) -> dict:
    """A LAM's codes (and, with `vectors`, its continuous action vectors) as probes of the control."""
    gf, gs = groups[fit].reshape(-1), groups[~fit].reshape(-1)
    vecs, codes = [], []
    with torch.no_grad():
        for i in range(0, len(frames), 64):
            v = lam._action_vectors(pixels_to_unit(torch.from_numpy(frames[i:i + 64])))
            vecs.append(v.float())
            codes.append(lam.vq.quantize(v))
    vec, code = torch.cat(vecs), torch.cat(codes)
    counts = torch.zeros(lam.cfg.num_actions, len(GROUPS))
    counts.index_put_((code[fit].reshape(-1), gf), torch.ones(len(gf)), accumulate=True)
    usage = torch.bincount(code.reshape(-1), minlength=lam.cfg.num_actions).double()
    p = usage / usage.sum()
    out = {"num_actions": int(lam.cfg.num_actions), "lam_chunk": int(getattr(lam.cfg, "chunk", 1)),
           "code_usage": usage.long().tolist(),
           "perplexity": round(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())), 3),
           "probes": {"latent_codes": scored(counts.argmax(1)[code[~fit].reshape(-1)], gs)},
           "codes": code_table(code, groups, dx, dy, lam.cfg.num_actions)}
    if hasattr(lam.vq, "digits"):  # a product code: what each part's codes do on their own
        out["parts"] = [code_table(d, groups, dx, dy, k) for d, k in zip(lam.vq.digits(code), lam.vq.sizes)]
    out["best_code"] = best_codes(code, groups, lam.cfg.num_actions)
    out["direction_code"] = direction_codes(out["codes"])
    if vectors:
        out["probes"]["lam_vector_t"] = mlp_probe(vec, groups, fit, seed=seed)
        out["probes"]["lam_vector_t..t+2"] = mlp_probe(torch.cat([vec, shifted(vec, 1), shifted(vec, 2)], -1),
                                                       groups, fit, seed=seed)
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", help="a driftless store with true actions (driftless data coinrun), e.g. the val split")
    ap.add_argument("--world", default="coinrun", help="world whose LAM is probed (default: the shipped coinrun)")
    ap.add_argument("--lam", action="append", help="a LAM checkpoint folder to probe instead of the world's "
                    "(repeatable: several LAMs on the same transitions)")
    ap.add_argument("--codes-only", action="store_true", help="only the codes' probe and per-code table: no MLP "
                    "probes of continuous vectors or motion features (faster)")
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

    dx, dy = best_shift(frames)
    if args.lam:
        from driftless.models.registry import load_model
        lams = {str(p): load_model(p, kind="lam") for p in args.lam}
    else:
        lams = {args.world: driftless.load(args.world, device="cpu").lam}
    result = {
        "store": str(args.store), "clips": int(len(frames)), "clip_len": args.clip_len,
        "transitions": int(groups.numel()), "scored_transitions": int(len(gs)), "episodes": int(len(episodes)),
        "group_share": {n: round(float((groups == i).float().mean()), 3) for i, n in enumerate(GROUPS)},
        "motion_by_group": {n: {"dx": round(float(dx[groups == i].float().mean()), 3),
                                "right": round(float((dx[groups == i] > 0).float().mean()), 3),
                                "left": round(float((dx[groups == i] < 0).float().mean()), 3),
                                "vertical": round(float((dy[groups == i] != 0).float().mean()), 3)}
                            for i, n in enumerate(GROUPS) if bool((groups == i).any())},
        "probes": {"majority": scored(torch.full_like(gs, int(torch.bincount(gf).argmax())), gs)},
        "lams": {name: probe_lam(lam.eval(), frames, groups, fit, dx, dy, args.seed, vectors=not args.codes_only)
                 for name, lam in lams.items()},
        "same_group_after": {str(k): round(float((groups[:, k:] == groups[:, :-k]).float().mean()), 3)
                             for k in (1, 2, 3, 5)},
    }
    if not args.codes_only:
        motion = shift_errors(frames)
        result["probes"].update({
            "motion_t": mlp_probe(motion, groups, fit, seed=args.seed),
            "motion_t-1..t+1": mlp_probe(torch.cat([shifted(motion, k) for k in (-1, 0, 1)], -1), groups, fit,
                                         seed=args.seed),
            "motion_t-2..t+6": mlp_probe(torch.cat([shifted(motion, k) for k in range(-2, 7)], -1), groups, fit,
                                         seed=args.seed),
        })
    result["seconds"] = round(time.time() - t0, 1)
    for name, p in result["probes"].items():
        print(f"{name:20s} accuracy {p['accuracy']:.3f}  " + "  ".join(f"{k} {v:.2f}" for k, v in p["recall"].items()))
    for lname, lr in result["lams"].items():
        print(f"LAM {lname}: {lr['num_actions']} codes, perplexity {lr['perplexity']}")
        for name, p in lr["probes"].items():
            print(f"  {name:18s} accuracy {p['accuracy']:.3f}  "
                  + "  ".join(f"{k} {v:.2f}" for k, v in p["recall"].items()))
        print("  best single code: " + "  ".join(f"{g} code {b['code']} F1 {b['f1']:.2f} (precision {b['precision']:.2f}, "
                                               f"recall {b['recall']:.2f})" for g, b in lr["best_code"].items()))
        dc = lr["direction_code"]
        print(f"  direction codes (score {dc['score']:.2f}): " + "  ".join(
            f"{d} code {dc[d]['code']} moves {d} {dc[d]['rate']:.2f} (share {dc[d]['share']:.3f}; "
            f"{d} moves with a clean code {dc[d].get('recall', 0):.2f})" for d in ("left", "right") if dc[d]))
        for i, part in enumerate(lr.get("parts", [])):
            print(f"  part {i} of the product code: " + "  ".join(
                f"{r['code']}: share {r['share']:.2f} left {r['left']:.2f} right {r['right']:.2f} vertical "
                f"{r['vertical']:.2f}" for r in part if r["share"]))
        for row in lr["codes"]:
            if row["share"]:
                top = max(row["groups"], key=row["groups"].get)
                print(f"  code {row['code']:2d} share {row['share']:.3f}  dx {row['dx']:+.2f} right {row['right']:.2f} "
                      f"left {row['left']:.2f} vertical {row['vertical']:.2f}  most {top} {row['groups'][top]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
