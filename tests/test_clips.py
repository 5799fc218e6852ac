import itertools

import numpy as np
import pytest
import torch

from driftless.data.clips import ClipDataset, InfiniteSampler, make_loader
from driftless.data.store import EpisodeStore

from conftest import make_store

RES = (4, 4)


def _store(tmp_path, lengths, per_shard=4):
    """Episode e has every pixel equal to e (mod 256) in all frames; actions encode (e, t)."""
    store = EpisodeStore.create(tmp_path / "s", RES)
    for k in range(0, len(lengths), per_shard):
        with store.writer(f"sh{k:03d}") as w:
            for e in range(k, min(k + per_shard, len(lengths))):
                t = lengths[e]
                frames = np.full((t, *RES, 3), e % 256, np.uint8)
                frames[:, 0, 0, 1] = np.arange(t)  # frame index inside the episode
                w.add_episode(frames, actions=100 * e + np.arange(t), rewards=np.arange(t) + 0.5 * e, ep=e)
    return EpisodeStore(tmp_path / "s")


def test_clips_never_cross_episodes(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=40).tolist()
    store = _store(tmp_path, lengths)
    for clip_len, stride in [(4, 1), (5, 2), (1, 3)]:
        ds = ClipDataset(store, clip_len=clip_len, stride=stride)
        expect = sum((t - clip_len) // stride + 1 for t in lengths if t >= clip_len)
        assert len(ds) == expect
        assert ds.skipped_episodes == sum(t < clip_len for t in lengths)
        seen = set()
        for i in range(len(ds)):
            item = ds[i]
            ep, s = item["episode"], item["start"]
            assert (ep, s) == ds.locate(i) and s % stride == 0
            fr = item["frames"]
            assert fr.dtype == torch.uint8 and fr.shape == (clip_len, *RES, 3)
            assert torch.all(fr[..., 0] == ep % 256), "a clip mixes frames of two episodes"
            assert fr[:, 0, 0, 1].tolist() == list(range(s, s + clip_len))
            assert s + clip_len <= lengths[ep]
            # actions/rewards of the transitions inside the clip: t -> t+1 for t in [s, s+clip_len-1)
            assert item["actions"].dtype == torch.int64 and item["actions"].shape == (clip_len - 1,)
            assert item["actions"].tolist() == [100 * ep + t for t in range(s, s + clip_len - 1)]
            assert item["rewards"].dtype == torch.float32
            assert item["rewards"].tolist() == [t + 0.5 * ep for t in range(s, s + clip_len - 1)]
            seen.add((ep, s))
        assert len(seen) == len(ds)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_last_transition_of_episode(tmp_path):
    store = _store(tmp_path, [6])
    ds = ClipDataset(store, clip_len=6)
    assert len(ds) == 1
    item = ds[0]
    assert item["actions"].tolist() == [0, 1, 2, 3, 4]  # the stored -1 of the last frame stays out
    empty = ClipDataset(store, clip_len=7)
    assert len(empty) == 0 and empty.skipped_episodes == 1
    with pytest.raises(ValueError, match="clip_len=7"):
        make_loader(empty, 2)
    with pytest.raises(ValueError, match="clip_len"):
        ClipDataset(store, clip_len=0)


def test_sampler_deterministic_and_epochs():
    a = list(itertools.islice(iter(InfiniteSampler(10, seed=3)), 35))
    b = list(itertools.islice(iter(InfiniteSampler(10, seed=3)), 35))
    c = list(itertools.islice(iter(InfiniteSampler(10, seed=4)), 35))
    assert a == b and a != c
    for e in range(3):
        assert sorted(a[10 * e: 10 * e + 10]) == list(range(10))  # each epoch is a permutation
        expect = torch.randperm(10, generator=torch.Generator().manual_seed(3 + e)).tolist()
        assert a[10 * e: 10 * e + 10] == expect
    assert a[:10] != a[10:20]
    assert list(itertools.islice(iter(InfiniteSampler(1)), 5)) == [0] * 5
    with pytest.raises(ValueError):
        InfiniteSampler(0)
    with pytest.raises(ValueError):
        InfiniteSampler(5, rank=2, world_size=2)


def test_sampler_ranks_and_resume():
    n, w = 12, 3
    full = list(itertools.islice(iter(InfiniteSampler(n, seed=7)), 60))
    per_rank = [list(itertools.islice(iter(InfiniteSampler(n, seed=7, rank=r, world_size=w)), 20)) for r in range(w)]
    for r in range(w):
        assert per_rank[r] == full[r::w]
    first_epoch = [set(p[: n // w]) for p in per_rank]
    assert set.union(*first_epoch) == set(range(n))
    assert sum(len(s) for s in first_epoch) == n  # disjoint within the epoch
    for r in range(w):
        for k in (0, 5, 13):
            resumed = list(itertools.islice(iter(InfiniteSampler(n, seed=7, rank=r, world_size=w, start=k)), 20 - k))
            assert resumed == per_rank[r][k:]


def test_sampler_resumes_the_global_stream_on_another_number_of_ranks():
    """k steps of w ranks x batch b, then steps of w' ranks x batch b' with b' w' = b w (the
    trainer's resume rule): each step's union over ranks is the next block of the global order."""
    n, steps = 10, 5
    full = list(itertools.islice(iter(InfiniteSampler(n, seed=3)), 200))
    for (w, b), (w2, b2), k in (((2, 3), (3, 2), 2), ((4, 1), (1, 4), 3), ((1, 6), (2, 3), 4)):
        def blocks(world, batch, start_step, count):
            its = [iter(InfiniteSampler(n, seed=3, rank=r, world_size=world, start=start_step * batch))
                   for r in range(world)]
            return [sorted(x for it in its for x in itertools.islice(it, batch)) for _ in range(count)]
        got = blocks(w, b, 0, k) + blocks(w2, b2, k, steps - k)
        want = [sorted(full[i * b * w:(i + 1) * b * w]) for i in range(steps)]
        assert got == want, (w, b, w2, b2)


def test_make_loader_resume_exact(tmp_path):
    store = _store(tmp_path, [5, 7, 3, 9, 6])
    ds = ClipDataset(store, clip_len=3, stride=1)
    bs = 4

    def batches(start, count, rank=0, world=1, workers=0):
        loader = make_loader(ds, bs, seed=11, rank=rank, world_size=world, start=start, num_workers=workers)
        out = []
        for batch in itertools.islice(loader, count):
            assert batch["frames"].shape == (bs, 3, *RES, 3)
            out.append(list(zip(batch["episode"].tolist(), batch["start"].tolist())))
        return out

    straight = batches(0, 8, workers=2)
    assert batches(0, 8) == straight  # worker processes deliver the same ordered stream
    for k in (1, 3, 6):
        assert batches(k * bs, 8 - k) == straight[k:]
    r0, r1 = batches(0, 4, 0, 2), batches(0, 4, 1, 2)
    stream = [ds.locate(i) for i in itertools.islice(iter(InfiniteSampler(len(ds), seed=11)), 32)]
    assert [x for b in r0 for x in b] == stream[0::2] and [x for b in r1 for x in b] == stream[1::2]


def test_resident_clips_give_the_loaders_stream(tmp_path):
    """The store copied into (here CPU) device memory serves exactly the loader's batches, from
    any start, so a run can switch between the two and resume."""
    from driftless.data.clips import ClipDataset, ResidentClips, make_loader

    store = make_store(tmp_path / "s", episodes=4, length=9)
    ds = ClipDataset(store.root, clip_len=4)
    for start in (0, 6):
        loader = iter(make_loader(ds, 3, seed=5, rank=1, world_size=2, start=start))
        resident = ResidentClips(ds, 3, "cpu", seed=5, rank=1, world_size=2).stream(start)
        for _ in range(5):
            a, b = next(loader), next(resident)
            assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["actions"], b["actions"])
