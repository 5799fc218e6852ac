"""Fixed-length clips from an episode store, and a deterministic, resumable loader.

`ClipDataset` enumerates every clip start s (step `stride`) with s + clip_len <= episode
length, so a clip never crosses an episode boundary. `InfiniteSampler` is an endless,
seeded stream of dataset indices, split across ranks; `make_loader` wraps both in a
DataLoader whose position is one integer: after k batches on a rank, building the loader
again with start = k * batch_size continues the identical stream. `ResidentClips` serves the
same stream from a copy of the store in (GPU) memory, for stores that fit.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from driftless.data.store import EpisodeStore


class ClipDataset(Dataset):
    """Clips of `clip_len` frames from one episode each.

    Item: {"frames": uint8 (clip_len, H, W, 3), "actions": int64 (clip_len-1,),
    "rewards": float32 (clip_len-1,), "episode": int, "start": int}; actions[t] / rewards[t]
    belong to the transition frames[t] -> frames[t+1] (-1 where the action is unknown).
    """

    def __init__(self, store_or_path: EpisodeStore | str | os.PathLike, clip_len: int = 16, stride: int = 1):
        if int(clip_len) < 1 or int(stride) < 1:
            raise ValueError(f"clip_len and stride must be >= 1, got clip_len={clip_len}, stride={stride}")
        self.store = store_or_path if isinstance(store_or_path, EpisodeStore) else EpisodeStore(store_or_path)
        self.clip_len = int(clip_len)
        self.stride = int(stride)
        lengths = self.store.episode_lengths
        usable = lengths >= self.clip_len
        self.skipped_episodes = int((~usable).sum())
        counts = np.where(usable, (lengths - self.clip_len) // self.stride + 1, 0)  # clips per episode
        self._episodes = np.nonzero(counts)[0]  # episodes with at least one clip
        self._cum = np.cumsum(counts[self._episodes])  # clips before and in each usable episode
        # an empty dataset is allowed here (callers may check len); make_loader refuses it

    def __len__(self) -> int:
        return int(self._cum[-1]) if len(self._cum) else 0

    def locate(self, i: int) -> tuple[int, int]:
        """(episode index in the store, first frame of the clip) of clip i."""
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"clip index {i} out of range for {n} clips")
        k = int(np.searchsorted(self._cum, i, side="right"))  # first usable episode whose cum > i
        before = int(self._cum[k - 1]) if k else 0
        return int(self._episodes[k]), (i - before) * self.stride

    def __getitem__(self, i: int) -> dict:
        ep, s = self.locate(i)
        e = s + self.clip_len
        frames = np.array(self.store.frames(ep, s, e))  # copy out of the read-only memmap
        return {
            "frames": torch.from_numpy(frames),
            "actions": torch.from_numpy(self.store.actions(ep, s, e - 1)),
            "rewards": torch.from_numpy(self.store.rewards(ep, s, e - 1)),
            "episode": ep,
            "start": s,
        }


class InfiniteSampler(Sampler):
    """Endless stream of indices in [0, n).

    The global stream is the concatenation of permutations, epoch e drawn with
    torch.Generator().manual_seed(seed + e). Rank r of world_size w takes global items
    r, r + w, r + 2w, ... (so ranks are disjoint within an epoch when w divides n).
    `start` is how many items this rank has already consumed.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0):
        if int(n) < 1:
            raise ValueError(f"InfiniteSampler needs n >= 1 items, got {n}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if int(start) < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.n, self.seed, self.rank, self.world_size, self.start = int(n), int(seed), int(rank), int(world_size), int(start)

    def _perm(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g).numpy()

    def __iter__(self) -> Iterator[int]:
        g = self.rank + self.start * self.world_size  # global position of this rank's next item
        epoch = g // self.n
        perm = self._perm(epoch)
        while True:
            e, p = divmod(g, self.n)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield int(perm[p])
            g += self.world_size


def make_loader(dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Endless DataLoader over `dataset` driven by InfiniteSampler; batches arrive in order,
    so after k batches, `start=k * batch_size` resumes the identical stream."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        detail = ""
        if isinstance(dataset, ClipDataset):
            lengths = dataset.store.episode_lengths
            detail = (f": {dataset.store.root} has no episode with at least clip_len={dataset.clip_len} frames "
                      f"({len(lengths)} episodes, longest {int(lengths.max()) if len(lengths) else 0} frames)")
        raise ValueError(f"cannot make a loader over an empty dataset{detail}")
    sampler = InfiniteSampler(len(dataset), seed=seed, rank=rank, world_size=world_size, start=start)
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=sampler,
        drop_last=True,
        num_workers=int(num_workers),
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        in_order=True,
    )


class ResidentClips:
    """The clips of a `make_loader` stream, served from a copy of the whole store in device memory.

    Every frame of the store is copied once into one uint8 tensor on `device` (on a GPU: 1.2M
    CoinRun frames are 15 GB of an H200's 141), with the true actions beside them; a batch is
    then one gather on the device instead of worker processes reading memory maps and copying
    pixels over PCIe. The clips are the same, in the same order, as `make_loader` gives for the
    same seed, rank, world size and start (the same `InfiniteSampler` picks them), so a run may
    switch between the two and stays resumable: `stream(start)` continues after `start` samples.
    Batches: {"frames": (b, T, H, W, 3) uint8, "actions": (b, T-1) int64} on `device`.
    """

    def __init__(self, dataset: ClipDataset, batch_size: int, device, seed: int = 0, rank: int = 0,
                 world_size: int = 1, progress: bool = False):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError(f"{dataset.store.root} has no episode of at least {dataset.clip_len} frames")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        store = dataset.store
        lengths = store.episode_lengths
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # first frame of each episode
        h, w = store.resolution
        self.frames = torch.empty((int(lengths.sum()), h, w, 3), dtype=torch.uint8, device=self.device)
        self.actions = torch.empty(int(lengths.sum()), dtype=torch.int64, device=self.device)
        episodes = range(store.num_episodes)
        if progress:
            from tqdm import tqdm

            episodes = tqdm(episodes, desc=f"copying {store.root.name} to {self.device}", unit="episode")
        for ep in episodes:  # episode by episode: host memory holds one episode at a time
            o, n = int(self.offsets[ep]), int(lengths[ep])
            self.frames[o:o + n].copy_(torch.from_numpy(np.array(store.frames(ep))))
            self.actions[o:o + n].copy_(torch.from_numpy(store.actions(ep)))  # (-1 at the last frame)

    @staticmethod
    def nbytes(store: EpisodeStore) -> int:
        """Device memory the frames of `store` take (pixels and actions)."""
        h, w = store.resolution
        return store.num_frames * (h * w * 3 + 8)

    def _starts(self, items: list[int]) -> np.ndarray:
        starts = [self.offsets[ep] + s for ep, s in map(self.dataset.locate, items)]
        return np.asarray(starts, dtype=np.int64)

    def stream(self, start: int = 0) -> Iterator[dict]:
        """Endless batches after `start` samples already consumed by this rank."""
        sampler = iter(InfiniteSampler(len(self.dataset), seed=self.seed, rank=self.rank,
                                       world_size=self.world_size, start=start))
        T = self.dataset.clip_len
        steps = torch.arange(T, device=self.device)
        while True:
            items = [next(sampler) for _ in range(self.batch_size)]
            first = torch.from_numpy(self._starts(items)).to(self.device, non_blocking=True)
            idx = first[:, None] + steps  # (b, T) frame indices
            yield {"frames": self.frames[idx], "actions": self.actions[idx[:, :-1]]}
