"""Latent cache: an episode store encoded once by a trained tokenizer (and LAM), so that the
dynamics model trains on latents without touching pixels.

A cache is a folder:
    cache.json        {"format": "driftless-latents", "num_frames", "tokens", "latent_dim",
                       "episodes": [[offset, length], ...], "tokenizer": path, "lam": path|None}
    latents.npy       (N, s, c) float16, normalised latents
    lam_actions.npy   (N,) int16: latent action of the transition out of each frame (-1 at an
                      episode's last frame or when no LAM was given)
    actions.npy       (N,) int16: the store's true actions (-1 where unknown)
    indices.npy       (N, s) int16: VQ code indices, only when the tokenizer is VQ (the MaskGIT
                      frame model trains on them; cache.json then has "codebook_size")

`LatentClips` draws fixed-length clips that never cross an episode boundary, deterministically
from (seed, rank, step), from memory or from the GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from driftless.checkpoint import atomic_write_json


def _pieces(length: int, chunk: int) -> list[tuple[int, int]]:
    """Split [0, length) into windows of `chunk` frames overlapping by one frame, so every
    transition lies inside one window: [(start, stop), ...]."""
    out, s = [], 0
    while True:
        e = min(length, s + chunk)
        out.append((s, e))
        if e >= length:
            return out
        s = e - 1


@torch.no_grad()
def build_latent_cache(store, tokenizer, out: str | os.PathLike, lam=None, chunk: int = 16,
                       batch_size: int = 64, device="cpu", tokenizer_path: str = "", lam_path: str = "",
                       progress: bool = True) -> Path:
    """Encode every frame of `store` (an EpisodeStore) into a latent cache folder at `out`
    (`progress`: a progress bar on stderr)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n = int(store.num_frames)
    s, c = tokenizer.cfg.tokens_per_frame, tokenizer.cfg.latent_dim
    lat = open_memmap(tmp / "latents.npy", mode="w+", dtype=np.float16, shape=(n, s, c))
    vq = tokenizer.cfg.bottleneck == "vq"
    if vq and tokenizer.cfg.codebook_size > np.iinfo(np.int16).max + 1:
        raise ValueError(f"codebooks of more than 32768 codes do not fit indices.npy (int16), got "
                         f"{tokenizer.cfg.codebook_size}")
    codes = open_memmap(tmp / "indices.npy", mode="w+", dtype=np.int16, shape=(n, s)) if vq else None
    lam_act = open_memmap(tmp / "lam_actions.npy", mode="w+", dtype=np.int16, shape=(n,))
    true_act = open_memmap(tmp / "actions.npy", mode="w+", dtype=np.int16, shape=(n,))
    lam_act[:] = -1
    episodes, offset = [], 0
    jobs: dict[int, list[tuple[int, int, int]]] = {}  # piece length -> [(episode, start, stop)]
    for e, length in enumerate(store.episode_lengths):
        episodes.append([offset, int(length)])
        for a, b in _pieces(int(length), chunk):
            jobs.setdefault(b - a, []).append((e, a, b))
        offset += int(length)
    batches = [(length, items[i:i + batch_size]) for length, items in sorted(jobs.items())
               for i in range(0, len(items), batch_size)]
    pinned = torch.device(device).type == "cuda"

    def load(group: list[tuple[int, int, int]]) -> torch.Tensor:  # (g, L, H, W, 3) uint8
        frames = torch.from_numpy(np.stack([np.asarray(store.frames(e, a, b)) for e, a, b in group]))
        return frames.pin_memory() if pinned else frames

    pbar = tqdm(total=n, desc="encode latents", unit="frame", dynamic_ncols=True, disable=not progress)
    # one thread reads the next batches from the store while the device encodes this one (the
    # serial loop gave 47k frames/s on an H200, where the small tokenizer trains - forward and
    # backward - at 60k)
    with ThreadPoolExecutor(max_workers=1) as reader:
        ahead = deque(reader.submit(load, group) for _, group in batches[:2])
        for k, (length, group) in enumerate(batches):
            frames = ahead.popleft().result().to(device, non_blocking=True)
            if k + 2 < len(batches):
                ahead.append(reader.submit(load, batches[k + 2][1]))
            if vq:  # one encoder pass: indices, and the latents are their normalised code vectors
                idx = tokenizer.encode_indices(frames)  # (g, L, s)
                z = tokenizer.normalize(tokenizer.vq.lookup(idx).float()).to(torch.float16).cpu().numpy()
                idx = idx.cpu().numpy().astype(np.int16)
            else:
                z = tokenizer.encode(frames).to(torch.float16).cpu().numpy()  # (g, L, s, c)
            acts = lam.infer_actions(frames).cpu().numpy() if lam is not None and length > 1 else None
            for j, (e, a, b) in enumerate(group):
                base = episodes[e][0]
                # a window's first frame was already written by the previous window, where it
                # had history; each frame is written once
                skip = 0 if a == 0 else 1
                lat[base + a + skip: base + b] = z[j, skip:]
                if vq:
                    codes[base + a + skip: base + b] = idx[j, skip:]
                if acts is not None:
                    lam_act[base + a: base + b - 1] = acts[j]
                pbar.update(b - a - skip)
    pbar.close()
    for e, (base, length) in enumerate(episodes):
        true_act[base: base + length] = store.episode(e)["actions"]
    for arr in (lat, lam_act, true_act) + ((codes,) if vq else ()):
        arr.flush()
    del lat, lam_act, true_act, codes
    atomic_write_json(tmp / "cache.json", {
        "format": "driftless-latents", "version": 1, "num_frames": n, "tokens": s, "latent_dim": c,
        "episodes": episodes, "tokenizer": str(tokenizer_path), "lam": str(lam_path) if lam is not None else None,
        "num_lam_actions": int(lam.cfg.num_actions) if lam is not None else 0,
        **({"codebook_size": int(tokenizer.cfg.codebook_size)} if vq else {}),
    })
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


class LatentCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / "cache.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root} is not a latent cache (no cache.json); "
                                    f"build one with `driftless train latents`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != "driftless-latents":
            raise ValueError(f"{meta_path} is not a driftless latent cache")
        self.latents = np.load(self.root / "latents.npy", mmap_mode="r")
        self.lam_actions = np.load(self.root / "lam_actions.npy", mmap_mode="r")
        self.actions = np.load(self.root / "actions.npy", mmap_mode="r")
        ipath = self.root / "indices.npy"  # VQ caches only
        self.indices = np.load(ipath, mmap_mode="r") if ipath.exists() else None
        self.episodes = np.asarray(self.meta["episodes"], dtype=np.int64).reshape(-1, 2)


def _readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only memory map, without copying it into RAM (clips only index it;
    nothing ever writes to it, so torch's warning about non-writable arrays does not apply)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(arr))


class LatentClips:
    """Endless deterministic batches of latent clips for the dynamics model.

    Each batch: {"latents": (b, T, s, c) float32, "actions": (b, T-1) int64} where actions are
    the LAM's or the true ones (`action_source`), or absent for "none"; a cache of a VQ
    tokenizer adds "indices": (b, T, s) int64 code indices.
    """

    def __init__(self, cache: LatentCache, clip_len: int, batch_size: int, action_source: str = "lam",
                 seed: int = 0, rank: int = 0, device="cpu", on_device: bool = True):
        self.clip_len = clip_len
        self.batch_size = batch_size
        self.seed, self.rank = seed, rank
        self.device = torch.device(device)
        self.action_source = action_source
        starts = [np.arange(o, o + n - clip_len + 1) for o, n in cache.episodes if n >= clip_len]
        if not starts:
            raise ValueError(f"no episode in {cache.root} is at least {clip_len} frames long")
        self.starts = torch.from_numpy(np.concatenate(starts))
        where = self.device if on_device else torch.device("cpu")
        self.latents = _readonly_tensor(cache.latents).to(where)
        self.indices = _readonly_tensor(cache.indices).to(where) if cache.indices is not None else None
        acts = {"lam": cache.lam_actions, "true": cache.actions}.get(action_source)
        if acts is not None and action_source == "lam" and cache.meta.get("lam") is None:
            raise ValueError(f"{cache.root} has no LAM actions; rebuild it with --lam or use --actions true|none")
        if acts is not None:  # checked once here, not per batch (a read of the device each step)
            acts = np.asarray(acts, dtype=np.int64)
            unknown = np.concatenate([[0], np.cumsum(acts < 0)])  # unknown actions before each frame
            starts = self.starts.numpy()
            if np.any(unknown[starts + clip_len - 1] - unknown[starts] > 0):
                raise ValueError("the cache has unknown actions (-1) inside clips; use --actions none")
        self.actions = torch.from_numpy(acts).to(where) if acts is not None else None

    def batch(self, step: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7_919 + step)
        pick = self.starts[torch.randint(0, len(self.starts), (self.batch_size,), generator=g)]
        idx = (pick[:, None] + torch.arange(self.clip_len)).to(self.latents.device)  # (b, T)
        out = {"latents": self.latents[idx].to(self.device, non_blocking=True).float()}
        if self.indices is not None:
            out["indices"] = self.indices[idx].to(self.device, non_blocking=True).long()
        if self.actions is not None:
            out["actions"] = self.actions[idx[:, :-1]].to(self.device)
        return out

    def stream(self, start_samples: int = 0):
        step = start_samples // self.batch_size
        while True:
            yield self.batch(step)
            step += 1
