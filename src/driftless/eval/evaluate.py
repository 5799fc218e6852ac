"""Evaluation protocols for a world (`driftless eval`): every number with the config that made it.

* Tokenizer reconstruction: PSNR/SSIM of decode(encode(clip)) on `recon_len`-frame clips.
* Rollout (GenieRedux protocol): test clips of `context + horizon` frames; the world's LAM
  infers one action per transition from the REAL clip; the world resets on the first
  `context` frames (with the context's own actions) and generates `horizon` frames with the
  inferred actions that follow; PSNR/SSIM against the real frames per horizon step, the mean
  over the steps being the headline. `actions="true"` uses the data's true actions instead
  (only for a dynamics model trained on them). A copy-the-last-context-frame baseline is
  reported beside it.
* Delta_t PSNR (Genie): PSNR(x_t, x^_t) - PSNR(x_t, x^'_t), x^ generated with the inferred (or
  true) actions, x^' with uniformly random actions for the generated steps, the same context
  and the same sampling seed; for t = 1..horizon, headline t = `delta_t`.
* Motion following (`motion_following`, on the same rollouts): the scene's cumulative shift
  (dy, dx), as the controls measure reads it, of the generated frames against the real ones; the
  headline is the slope through the origin of generated on real sideways (and vertical) shift at
  each step: 1 = the world moves the scene as far as the game did under the same inferred
  actions, 0 = it stands still. With one context frame the actions alone carry the motion.
* Drift: long rollouts (`drift_frames`) from held-out real frames with uniformly random
  actions, measured frame by frame with the model-independent measure of `drift.py`, and
  against their own context frames ("same level", with the band of the store's long real
  episodes: `driftless data coinrun --same-level-frames N`).
* Latent actions: usage and perplexity of the LAM's codes on the evaluated clips; action-map
  accuracy against true actions where the store has them (world/action_map.py).
* Controls (controls.py): from held-out game states, the real game's branch for each control
  against the world's branch for its key: how often they match (chance 1/3 for left/right/jump).
* FVD when I3D weights are given (fvd.py), on real vs generated clips of `fvd_frames` frames.

Work is batched (`batch_size` clips per forward pass) and runs on the world's device; all
randomness comes from `seed`.

Two sizes of the protocol: `full` (the defaults of `EvalConfig`: 256 clips, 16 rollouts of 1000
frames, ...; what every published figure uses) and `quick` (`QUICK`: a few minutes on a 2-core CPU,
for a first look). `sized_config(size, device)` picks them; "auto" is full on CUDA and quick on a
CPU, the default of `driftless eval` and `driftless train world`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from driftless.eval.metrics import psnr, ssim
from driftless.runtime import clean_json, run_info

PARTS = ("recon", "rollout", "drift", "actions", "controls", "fvd")
ACTION_MODES = ("auto", "inferred", "true")
SIZES = ("auto", "quick", "full")
# The quick protocol, what a CPU runs by default: the shipped world on a small test store takes
# about 2 minutes on 2 cores (docs/evaluation.md, "Sizes"); everything not named is as in full.
QUICK = {"clips": 16, "recon_clips": 32, "drift_frames": 200, "drift_rollouts": 2, "bank_size": 512,
         "reference_size": 256, "action_clips": 128, "controls_starts": 16, "batch_size": 16}


@dataclass
class EvalConfig:
    split: str = "test"
    clips: int = 256  # test clips for rollout / Delta_t / latent-action statistics
    context: int = 1  # N context frames
    horizon: int = 10  # frames generated and scored per clip
    delta_t: int = 4  # headline t of Delta_t PSNR (Genie: 4)
    actions: str = "auto"  # auto (true if the dynamics was trained on true actions) | inferred | true
    recon_clips: int = 256
    recon_len: int = 16
    drift_frames: int = 1000
    drift_rollouts: int = 16
    drift_bin: int = 10  # frames per point of the drift curves
    drift_window: int = 50  # frames averaged for the first / last drift figures
    strip_every: int = 50  # every k-th frame of the drift rollouts goes into the strip
    bank_size: int = 2048  # real frames in the drift measure's bank
    reference_size: int = 1024  # held-out real frames calibrating it
    drift_size: int = 32  # resolution of the nearest-neighbour search
    action_clips: int = 512  # 16-frame clips for action-map accuracy
    controls_starts: int = 32  # held-out game states of the controls evaluation (eval/controls.py)
    controls_frames: int = 8  # frames each control / latent action is held there
    fvd_frames: int = 16
    fvd_size: int = 224  # frames are resized to this for I3D (the reference FVD: 224)
    fvd_batch: int = 16
    batch_size: int = 64
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA)
    sampling: dict = field(default_factory=dict)  # world sampling options (steps, cfg_scale, ...)
    skip: list = field(default_factory=list)  # parts of PARTS not to run
    strip_clips: int = 4
    progress: bool = True
    size: str = "full"  # which protocol size the numbers come from (recorded; `sized_config` sets it)

    def __post_init__(self) -> None:
        if self.size not in ("quick", "full", "custom"):
            raise ValueError(f"size must be quick, full or custom, got {self.size!r}")
        if self.actions not in ACTION_MODES:
            raise ValueError(f"actions must be one of {ACTION_MODES}, got {self.actions!r}")
        if self.context < 1 or self.horizon < 1:
            raise ValueError(f"context and horizon must be >= 1, got {self.context}, {self.horizon}")
        if not 1 <= self.delta_t <= self.horizon:
            raise ValueError(f"delta_t must lie in [1, horizon={self.horizon}], got {self.delta_t}")
        bad = sorted(set(self.skip) - set(PARTS))
        if bad:
            raise ValueError(f"unknown part(s) to skip {bad}; known: {list(PARTS)}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        for name in ("clips", "recon_clips", "drift_frames", "drift_rollouts", "batch_size", "recon_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def resolve_size(size: str, device) -> str:
    """quick | full for a requested size: "auto" is full on CUDA and quick on any other device."""
    if size not in SIZES:
        raise ValueError(f"eval size must be one of {SIZES}, got {size!r}")
    if size == "auto":
        return "full" if torch.device(device).type == "cuda" else "quick"
    return size


def sized_config(size: str = "auto", device="cpu", **given) -> EvalConfig:
    """The EvalConfig of a protocol size (see the module docstring) for `device`; values in `given`
    that are not None win over the size's (they are recorded as given, with the size's name)."""
    size = resolve_size(size, device)
    values = dict(QUICK) if size == "quick" else {}
    values.update({k: v for k, v in given.items() if v is not None})
    return EvalConfig(size=size, **values)


# ---- data -------------------------------------------------------------------------------------
def resolve_store(data, split: str):
    """An EpisodeStore for `data` and `split`: DATA itself if it is a store, else DATA/<split>,
    else the sibling DATA-<split> (the `driftless data coinrun --out data/coinrun-test` habit).
    Returns (store, note) where note says which split the store declares."""
    from driftless.data.store import STORE_FILE, EpisodeStore

    base = Path(data)
    for cand in (base, base / split, base.with_name(f"{base.name}-{split}")):
        if (cand / STORE_FILE).exists():
            store = EpisodeStore(cand)
            declared = store.meta.get("split")
            return store, {"path": str(cand), "declared_split": declared,
                           "split_matches": declared in (None, split)}
    raise FileNotFoundError(f"no episode store for split {split!r} at {base}, {base / split} or "
                            f"{base.with_name(base.name + '-' + split)}")


def load_clips(store, clip_len: int, n: int, seed: int, need_actions: bool = False) -> dict:
    """n non-overlapping clips (stride = clip_len) chosen at random with `seed`, in store order.
    With need_actions, only clips whose true actions are all known."""
    from driftless.data.clips import ClipDataset

    ds = ClipDataset(store, clip_len=clip_len, stride=clip_len)
    order = np.random.default_rng(seed).permutation(len(ds))
    frames, actions, where = [], [], []
    for i in order:
        item = ds[int(i)]
        if need_actions and bool((item["actions"] < 0).any()):
            continue
        frames.append(item["frames"].numpy())
        actions.append(item["actions"].numpy())
        where.append((item["episode"], item["start"]))
        if len(frames) == n:
            break
    if not frames:
        which = " with known true actions" if need_actions else ""
        raise ValueError(f"no {clip_len}-frame clip{which} in {store.root}")
    keep = np.argsort([e * 10**9 + s for e, s in where], kind="stable")
    return {"frames": np.stack(frames)[keep], "actions": np.stack(actions)[keep],
            "where": [where[k] for k in keep]}


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _autocast(world, precision: str):
    on = precision == "bf16" and world.device.type == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def resolve_actions(world, mode: str) -> str:
    """The action source of the rollout protocol: inferred | true | none."""
    dyn = world.dynamics
    src = dyn.cfg.action_source if dyn.cfg.num_actions else "none"
    if src == "none":
        return "none"
    if mode == "auto":
        mode = "true" if src == "true" else "inferred"
    if mode == "inferred" and (world.lam is None or src == "true"):
        raise ValueError("--actions inferred needs a world with a LAM whose dynamics was trained on LAM actions "
                         f"(this dynamics uses action_source={src!r}, LAM present: {world.lam is not None})")
    if mode == "true" and src != "true":
        raise ValueError("--actions true needs a dynamics model trained on true actions "
                         f"(dynamics.cfg.action_source == 'true'); this one uses {src!r}")
    return mode


# ---- protocols --------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction(world, store, cfg: EvalConfig) -> dict:
    clips = load_clips(store, cfg.recon_len, cfg.recon_clips, cfg.seed + 1)["frames"]
    p, s = [], []
    for sl in tqdm(list(_batches(len(clips), cfg.batch_size)), desc="eval recon", disable=not cfg.progress):
        x = torch.from_numpy(clips[sl]).to(world.device)
        with _autocast(world, cfg.precision):
            rec = world.tokenizer.decode(world.tokenizer.encode(x))
        p.append(psnr(rec, x, reduce=False).cpu())  # (b, T)
        s.append(ssim(rec, x, reduce=False).cpu())
    p, s = torch.cat(p).double(), torch.cat(s).double()
    return {"clips": int(p.shape[0]), "frames_per_clip": int(p.shape[1]), "psnr": float(p.mean()),
            "ssim": float(s.mean()), "psnr_clip_std": float(p.mean(1).std()) if p.shape[0] > 1 else 0.0,
            "psnr_per_position": p.mean(0).tolist(), "ssim_per_position": s.mean(0).tolist()}


@torch.no_grad()
def infer_codes(world, frames: np.ndarray, cfg: EvalConfig) -> np.ndarray:
    out = []
    for sl in _batches(len(frames), cfg.batch_size):
        with _autocast(world, cfg.precision):
            out.append(world.infer_actions(frames[sl]))
    return np.concatenate(out)


@torch.no_grad()
def generate(world, frames: np.ndarray, context: int, actions: np.ndarray | None, n_gen: int, seed: int,
             precision: str = "fp32", on_frame=None, **sampling) -> np.ndarray:
    """Reset on frames[:, :context] (transition actions[:, :context-1]) and generate n_gen frames
    with actions[:, context-1:context-1+n_gen]: uint8 (B, n_gen, H, W, 3). `on_frame(B)` is
    called after each generated step (progress)."""
    ctx_actions = actions[:, :context - 1] if (actions is not None and context > 1) else None
    out = []
    with _autocast(world, precision):
        world.reset(frames[:, :context], seed=seed, actions=ctx_actions, **sampling)
        for i in range(n_gen):
            out.append(world.step(None if actions is None else actions[:, context - 1 + i]))
            if on_frame is not None:
                on_frame(len(frames))
    return np.stack(out, axis=1)


def _per_step(values: list[torch.Tensor]) -> tuple[float, list[float], float]:
    v = torch.cat(values).double()  # (n, H)
    return float(v.mean()), v.mean(0).tolist(), float(v.mean(1).std()) if v.shape[0] > 1 else 0.0


def action_usage(codes: np.ndarray, num_actions: int) -> dict:
    counts = np.bincount(codes.reshape(-1), minlength=num_actions).astype(np.float64)
    p = counts / max(1.0, counts.sum())
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return {"transitions": int(counts.sum()), "counts": counts.astype(int).tolist(),
            "usage": float((counts > 0).mean()), "perplexity": float(np.exp(entropy)),
            "normalized_entropy": entropy / math.log(num_actions) if num_actions > 1 else 0.0}


def scene_trajectories(world, real: np.ndarray, gen: np.ndarray, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative scene shift (dy, dx) from the last context frame of the real clip's next
    len(gen) frames and of the generated ones (against the world's own rendering of that frame, so
    that the tokenizer's blur is read alike): real uint8 (b, T, H, W, 3), gen (b, h, H, W, 3) ->
    two float arrays (b, h, 2)."""
    from driftless.world.controls import scene_trajectory

    h = gen.shape[1]
    last = real[:, n_ctx - 1]
    rendered = world.decode(world.encode(real[:, n_ctx - 1:n_ctx]))[:, -1]
    return scene_trajectory(last, real[:, n_ctx:n_ctx + h]), scene_trajectory(rendered, gen)


def motion_following(real: np.ndarray, world: np.ndarray, moving: float = 2.0) -> dict:
    """How far the world moves the scene where the real game moved it, from cumulative shifts
    real / world (n, h, 2) (dy, dx): per axis and step, the least-squares slope through the origin of
    world on real (1 = as far, 0 = not at all; dominated by the clips that moved most); at the
    last step, the mean distance in pixels, and among clips whose real sideways shift reached
    `moving` px, how often the world's went the same way by at least half as far."""
    real, world = np.asarray(real, np.float64), np.asarray(world, np.float64)

    def slope(axis: int) -> list[float]:
        r, w = real[..., axis], world[..., axis]
        den = (r * r).sum(0)
        return [float(v) for v in np.where(den > 1e-9, (r * w).sum(0) / np.maximum(den, 1e-9), np.nan)]

    sx, sy = slope(1), slope(0)
    rx, wx = real[:, -1, 1], world[:, -1, 1]
    moved = np.abs(rx) >= moving
    same_way = (np.sign(wx) == np.sign(rx)) & (np.abs(wx) >= 0.5 * np.abs(rx))
    return {"sideways": sx[-1], "vertical": sy[-1], "sideways_per_step": sx, "vertical_per_step": sy,
            "error_px": float(np.linalg.norm(real[:, -1] - world[:, -1], axis=-1).mean()),
            "real_sideways_px": float(np.abs(rx).mean()), "world_sideways_px": float(np.abs(wx).mean()),
            "moving_clips": int(moved.sum()), "moving_px": moving,
            "same_way": float(same_way[moved].mean()) if moved.any() else None}


@torch.no_grad()
def rollout_protocol(world, store, cfg: EvalConfig, i3d=None) -> tuple[dict, dict]:
    mode = resolve_actions(world, cfg.actions)
    n_ctx, horizon = cfg.context, cfg.horizon
    n_gen = max(horizon, cfg.fvd_frames - n_ctx) if i3d is not None else horizon
    clips = load_clips(store, n_ctx + n_gen, cfg.clips, cfg.seed, need_actions=mode == "true")
    frames, true_actions = clips["frames"], clips["actions"]
    codes = infer_codes(world, frames, cfg) if world.lam is not None else None
    rng = np.random.default_rng(cfg.seed + 7)
    acc = {k: [] for k in ("psnr", "ssim", "rand_psnr", "rand_ssim", "copy_psnr", "copy_ssim")}
    traj: dict[str, list] = {"real": [], "world": []}  # cumulative scene shifts (b, horizon, 2)
    fake_videos, strips = [], {}
    batches = list(_batches(len(frames), cfg.batch_size))
    # one tick per generated frame of every clip (with random actions: the Delta_t rollouts too)
    bar = tqdm(total=len(frames) * (n_gen + (horizon if mode != "none" else 0)), desc="eval rollout",
               unit="frame", disable=not cfg.progress)
    for bi, sl in enumerate(batches):
        real = frames[sl]
        target = torch.from_numpy(real[:, n_ctx:n_ctx + horizon]).to(world.device)
        acts = None if mode == "none" else (codes[sl] if mode == "inferred" else true_actions[sl])
        seed = cfg.seed * 100_003 + bi
        gen = generate(world, real, n_ctx, acts, n_gen, seed, cfg.precision, bar.update, **cfg.sampling)
        g = torch.from_numpy(gen[:, :horizon]).to(world.device)
        acc["psnr"].append(psnr(g, target, reduce=False).cpu())
        acc["ssim"].append(ssim(g, target, reduce=False).cpu())
        if mode != "none":
            t_real, t_world = scene_trajectories(world, real, gen[:, :horizon], n_ctx)
            traj["real"].append(t_real)
            traj["world"].append(t_world)
        copy = torch.from_numpy(real[:, n_ctx - 1:n_ctx]).to(world.device).expand_as(target)
        acc["copy_psnr"].append(psnr(copy, target, reduce=False).cpu())
        acc["copy_ssim"].append(ssim(copy, target, reduce=False).cpu())
        if acts is not None:
            rand = acts.copy()
            rand[:, n_ctx - 1:n_ctx - 1 + n_gen] = rng.integers(0, world.num_actions, size=(len(real), n_gen))
            gen_r = generate(world, real, n_ctx, rand, horizon, seed, cfg.precision, bar.update, **cfg.sampling)
            gr = torch.from_numpy(gen_r).to(world.device)
            acc["rand_psnr"].append(psnr(gr, target, reduce=False).cpu())
            acc["rand_ssim"].append(ssim(gr, target, reduce=False).cpu())
        if i3d is not None:
            fake_videos.append(np.concatenate([real[:, :n_ctx], gen], axis=1)[:, :cfg.fvd_frames])
        if bi == 0:
            k = min(cfg.strip_clips, len(real))
            strips = {"real": real[:k, :n_ctx + horizon],
                      "generated": np.concatenate([real[:k, :n_ctx], gen[:k, :horizon]], axis=1)}
            if acts is not None:
                strips["random_actions"] = np.concatenate([real[:k, :n_ctx], gen_r[:k]], axis=1)
    bar.close()
    mean_p, step_p, std_p = _per_step(acc["psnr"])
    mean_s, step_s, _ = _per_step(acc["ssim"])
    result = {"actions": mode, "context": n_ctx, "horizon": horizon, "clips": int(len(frames)),
              "psnr": mean_p, "ssim": mean_s, "psnr_per_step": step_p, "ssim_per_step": step_s,
              "psnr_clip_std": std_p}
    cp, cps, _ = _per_step(acc["copy_psnr"])
    cs, css, _ = _per_step(acc["copy_ssim"])
    result["copy_last"] = {"psnr": cp, "ssim": cs, "psnr_per_step": cps, "ssim_per_step": css}
    delta = None
    if acc["rand_psnr"]:
        rp, rps, _ = _per_step(acc["rand_psnr"])
        rs, rss, _ = _per_step(acc["rand_ssim"])
        result["random_actions"] = {"psnr": rp, "ssim": rs, "psnr_per_step": rps, "ssim_per_step": rss}
        d = (torch.cat(acc["psnr"]) - torch.cat(acc["rand_psnr"])).double()  # (n, H)
        per_step = d.mean(0).tolist()
        delta = {"t": cfg.delta_t, "delta_psnr": per_step[cfg.delta_t - 1], "per_step": per_step,
                 "mean_over_steps": float(d.mean()),
                 "clip_std_at_t": float(d[:, cfg.delta_t - 1].std()) if d.shape[0] > 1 else 0.0,
                 "actions": mode}
    if traj["real"]:
        result["motion_following"] = motion_following(np.concatenate(traj["real"]), np.concatenate(traj["world"]))
    artifacts = {"strips": strips, "codes": codes, "fake_videos": fake_videos,
                 "real_videos": frames[:, :cfg.fvd_frames] if i3d is not None else None}
    return {"rollout": result, "delta": delta}, artifacts


@torch.no_grad()
def drift_protocol(world, store, cfg: EvalConfig, bank_store=None) -> tuple[dict, dict]:
    from driftless.eval.drift import (SAME_LEVEL, DriftConfig, quality_from_store, same_level_measures,
                                      same_level_reference, same_level_summary, summarize)

    mode = resolve_actions(world, cfg.actions)
    dcfg = DriftConfig(size=cfg.drift_size)
    same_store = bank_store is None or Path(bank_store.root).resolve() == Path(store.root).resolve()
    quality, ref_eps = quality_from_store(bank_store or store, dcfg, cfg.bank_size, cfg.reference_size,
                                          cfg.seed + 3, world.device)
    start_eps = ref_eps if same_store else np.arange(store.num_episodes)
    start_eps = start_eps[store.episode_lengths[start_eps] >= cfg.context]
    if len(start_eps) == 0:
        raise ValueError(f"no held-out episode has {cfg.context}+ frames to start a drift rollout from")
    rng = np.random.default_rng(cfg.seed + 11)
    ctx, ctx_acts = [], []
    for _ in range(cfg.drift_rollouts):
        ep = int(rng.choice(start_eps))
        s = int(rng.integers(0, store.episode_lengths[ep] - cfg.context + 1))
        ctx.append(np.asarray(store.frames(ep, s, s + cfg.context)))
        ctx_acts.append(store.actions(ep, s, s + cfg.context - 1))
    ctx, ctx_acts = np.stack(ctx), np.stack(ctx_acts)
    if mode == "true" and cfg.context > 1 and bool((ctx_acts < 0).any()):
        raise ValueError("drift contexts need known true actions for a true-action world")
    t_total, chunk = cfg.drift_frames, 64
    measures, changes, strip_frames, strip_steps, same = [], [], [], [], []
    bar = tqdm(total=cfg.drift_rollouts * t_total, desc="eval drift", unit="frame", disable=not cfg.progress)
    for bi, sl in enumerate(_batches(cfg.drift_rollouts, cfg.batch_size)):
        b = sl.stop - sl.start
        c_acts = ctx_acts[sl] if (mode == "true" and cfg.context > 1) else None
        with _autocast(world, cfg.precision):
            world.reset(ctx[sl], seed=cfg.seed * 100_003 + 50_000 + bi, actions=c_acts, **cfg.sampling)
        prev = torch.from_numpy(ctx[sl][:, -1])
        buf, batch_measures, batch_same, batch_change, keep = [], [], [], [], []
        for t in range(t_total):
            a = None if mode == "none" else rng.integers(0, world.num_actions, size=b)
            with _autocast(world, cfg.precision):
                f = torch.from_numpy(world.step(a))  # (b, H, W, 3)
            batch_change.append((f.float() - prev.float()).abs().flatten(1).mean(1) / 255.0)
            prev = f
            buf.append(f)
            if bi == 0 and (t + 1) % cfg.strip_every == 0:
                keep.append(f[:cfg.strip_clips].numpy())
                strip_steps.append(t + 1)
            if len(buf) == chunk or t == t_total - 1:
                video = torch.stack(buf, 1)  # (b, chunk, H, W, 3)
                batch_measures.append(quality.measure(video))  # each (b, chunk)
                batch_same.append(same_level_measures(video, ctx[sl], dcfg, world.device))
                buf = []
            bar.update(b)
        measures.append({k: np.concatenate([m[k] for m in batch_measures], axis=1) for k in batch_measures[0]})
        same.append({k: np.concatenate([m[k] for m in batch_same], axis=1) for k in SAME_LEVEL})
        changes.append(torch.stack(batch_change, 1).numpy())
        if bi == 0:
            strip_frames = keep
    bar.close()
    per_frame = {k: np.concatenate([m[k] for m in measures]) for k in measures[0]}
    result = summarize(per_frame, np.concatenate(changes), quality, bin_size=cfg.drift_bin, window=cfg.drift_window)
    result["actions"] = "random"
    result["bank"] = "same store, disjoint episodes" if same_store else str(bank_store.root)
    k = min(cfg.strip_clips, cfg.batch_size, cfg.drift_rollouts)  # strips come from the first batch
    strip = (np.concatenate([ctx[:k, -1:], np.stack(strip_frames, 1)], axis=1) if strip_frames else ctx[:k, -1:])
    artifacts = {"drift_strip": strip, "drift_strip_steps": [0] + strip_steps}
    # same level: each frame against its rollout's own context, beside real long episodes of the store
    gen_same = {k: np.concatenate([m[k] for m in same]) for k in SAME_LEVEL}
    try:
        ref = same_level_reference(store, t_total, cfg.context, dcfg, device=world.device)
    except ValueError as e:
        result["same_level"] = {"available": False, "reason": str(e)}
    else:
        result["same_level"] = {"available": True, **same_level_summary(gen_same, ref, dcfg, cfg.drift_bin,
                                                                        cfg.drift_window)}
        # the real long episode the band leans on most, at the strip's frame indices (context = its first frames)
        ep, n = ref["episodes"][0], int(ref["lengths"][0])
        steps = [s for s in [0] + strip_steps if cfg.context - 1 + s < n]
        artifacts["drift_real_strip"] = np.asarray(store.frames(ep))[[cfg.context - 1 + s for s in steps]]
    sl = result["same_level"]
    for key in ("same_level_score", "morphed_rate", "palette_tv_first", "palette_tv_last", "palette_tv_real_limit_last"):
        if sl.get("summary", {}).get(key) is not None:
            result["summary"][key] = sl["summary"][key]
    return result, artifacts


def action_map_accuracy(world, store, cfg: EvalConfig) -> dict:
    """Accuracy of latent action -> control group on the store's true actions: the world's
    shipped map (fitted at build time) and a map refitted on these clips with a held-out part."""
    from driftless.world.action_map import PROCGEN_GROUPS, groups_of, collect_pairs, fit_action_map

    try:
        lat, true = collect_pairs(world.lam, store, clip_len=16, max_clips=cfg.action_clips, seed=cfg.seed + 5,
                                  device=world.device, batch_size=cfg.batch_size)
    except ValueError as e:
        return {"available": False, "reason": str(e)}
    if true.max() >= 15:
        return {"available": False, "reason": "true actions are not Procgen's 15 (control groups undefined)"}
    refit = fit_action_map(lat, true, world.lam.cfg.num_actions, seed=cfg.seed)
    out = {"available": True, "pairs": int(len(lat)),
           "refit": {k: refit[k] for k in ("accuracy", "majority_baseline", "groups", "pairs")}}
    shipped = world.action_map
    if shipped.get("counts") and shipped.get("group_names") == list(PROCGEN_GROUPS):
        latent_to_group = np.asarray(shipped["counts"]).argmax(0)
        g = groups_of(true, PROCGEN_GROUPS)
        out["shipped"] = {"accuracy": float((latent_to_group[lat] == g).mean()),
                          "accuracy_at_build": shipped.get("accuracy")}
    return out


def evaluate(world, store, cfg: EvalConfig, bank_store=None, i3d_path: str | None = None) -> tuple[dict, dict]:
    """Run every protocol not in cfg.skip; returns (JSON-able result, arrays for plots)."""
    result: dict = {"config": asdict(cfg), "info": run_info(world.device), "world": _world_info(world)}
    artifacts: dict = {}
    run = [p for p in PARTS if p not in cfg.skip]
    if "recon" in run:
        result["reconstruction"] = reconstruction(world, store, cfg)
    i3d = None
    if "fvd" in run and i3d_path:
        from driftless.eval.fvd import load_i3d

        i3d = load_i3d(i3d_path, device=world.device, size=cfg.fvd_size)
    if world.dynamics is not None and ("rollout" in run or i3d is not None):
        res, art = rollout_protocol(world, store, cfg, i3d)
        result.update(res)
        artifacts.update(art)
    if world.dynamics is not None and "drift" in run:
        result["drift"], art = drift_protocol(world, store, cfg, bank_store)
        artifacts.update(art)
    if "actions" in run and world.lam is not None:
        codes = artifacts.get("codes")
        if codes is None:
            clips = load_clips(store, cfg.context + cfg.horizon, cfg.clips, cfg.seed)["frames"]
            codes = infer_codes(world, clips, cfg)
        result["latent_actions"] = action_usage(codes, world.lam.cfg.num_actions)
        result["action_map"] = action_map_accuracy(world, store, cfg)
    if "controls" in run:
        from driftless.eval.controls import controls_protocol

        result["controls"], art = controls_protocol(
            world, store, starts=cfg.controls_starts, frames=cfg.controls_frames, split=cfg.split, seed=cfg.seed,
            batch_size=cfg.batch_size, progress=cfg.progress, **cfg.sampling)
        artifacts.update(art)
    if i3d is not None:
        from driftless.eval.fvd import fvd

        result["fvd"] = fvd(artifacts["real_videos"], np.concatenate(artifacts["fake_videos"]), i3d,
                            batch_size=cfg.fvd_batch)
        result["fvd"]["weights"] = str(i3d_path)
    elif "fvd" in run:
        result["fvd"] = {"available": False, "reason": "no I3D weights given (--i3d PATH)"}
    return clean_json(result), artifacts


def _world_info(world) -> dict:
    from driftless.models.common import num_params

    parts = {k: num_params(m) for k, m in (("tokenizer", world.tokenizer), ("lam", world.lam),
                                           ("dynamics", world.dynamics)) if m is not None}
    return {"name": world.meta.get("name"), "resolution": list(world.resolution), "num_actions": world.num_actions,
            "parameters": parts, "sampling": asdict(world.sampling),
            "action_source": world.dynamics.cfg.action_source if world.dynamics is not None else None}
