"""Sharded, memory-mapped episode store.

A store is a folder::

    store.json              {"format": "driftless-store", "version": 1,
                             "resolution": [H, W], "meta": {...}, "shards": [names...]}
    <shard>/frames.npy      (N, H, W, 3) uint8, every episode of the shard back to back
    <shard>/actions.npy     (N,) int16, -1 where unknown
    <shard>/rewards.npy     (N,) float32
    <shard>/episodes.json   [{"offset": int, "length": int, ...free info...}, ...]

Convention: for an episode of T frames, ``actions[t]`` / ``rewards[t]`` belong to the
transition frame t -> frame t+1 (the action taken after observing frame t and the reward
received for it); the last entry of every episode is -1 / 0. An episode never spans shards.

Writing: ``with store.writer(name) as w: w.add_episode(frames, actions, rewards, **info)``
(or, for an episode too long to hold in memory, ``w.write_frames(chunk)`` as often as needed,
then ``w.end_episode(actions, rewards, **info)``) streams frames into ``<name>.tmp/``; a clean exit fsyncs the folder, renames it to
``<name>/`` and then lists it in store.json (atomic rewrite), all under a store lock, so
several processes may write different shards at once and a crash never leaves a half shard
listed. Leftover ``*.tmp`` folders of dead writers are removed the next time the store is
opened. Reading memory-maps each shard lazily on first use; the object pickles without its
maps, so it can be handed to DataLoader workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from driftless.checkpoint import fsync_dir, fsync_file, atomic_write_json

try:  # POSIX advisory locks; elsewhere locking is a no-op (single writer assumed)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT = "driftless-store"
VERSION = 1
STORE_FILE = "store.json"
LOCK_FILE = ".store.lock"
WRITER_LOCK = ".writer.lock"
TMP_SUFFIX = ".tmp"
# the .npy header of frames.npy is written last, in place, so it gets a fixed size
NPY_HEADER_BYTES = 256
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_RESERVED_INFO = ("offset", "length")


def estimate_bytes(frames: int, resolution: tuple[int, int] | list[int]) -> int:
    """Bytes on disk for `frames` frames at `resolution` (H, W): RGB uint8 pixels plus an
    int16 action and a float32 reward per frame (headers and episodes.json not counted)."""
    h, w = (int(x) for x in resolution)
    return int(frames) * (h * w * 3 + 2 + 4)


def _check_resolution(resolution) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be a pair (H, W) of positive ints, got {resolution!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"resolution must be a pair (H, W) of positive ints, got {resolution!r}")
    return h, w


@contextlib.contextmanager
def _flock(path: Path):
    """Exclusive advisory lock on `path` (created if missing) for the duration."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _try_flock(path: Path) -> int | None:
    """Non-blocking exclusive lock: the open fd (caller closes it) or None if held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:  # pragma: no cover
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _read_store_json(root: Path) -> dict:
    path = root / STORE_FILE
    if not root.exists():
        raise FileNotFoundError(f"no episode store at {root}: the folder does not exist")
    if not path.exists():
        raise ValueError(f"{root} is not a driftless episode store: it has no {STORE_FILE}")
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt (not valid JSON): {e}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a driftless episode store (expected format {FORMAT!r})")
    if header.get("version") != VERSION:
        raise ValueError(f"{path} has store version {header.get('version')!r}; this driftless reads version {VERSION}")
    for key in ("resolution", "shards"):
        if key not in header:
            raise ValueError(f"{path} lacks the field {key!r}")
    header.setdefault("meta", {})
    return header


class EpisodeStore:
    """Read (and, through `writer`, extend) an episode store folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        header = _read_store_json(self.root)
        self._clean_stale_tmp()
        self._load(header)

    # ---------------------------------------------------------------- creation / index
    @classmethod
    def create(cls, root: str | os.PathLike, resolution, meta: dict | None = None) -> "EpisodeStore":
        """Make an empty store at `root`, or open the existing one if its resolution matches."""
        root = Path(root)
        h, w = _check_resolution(resolution)
        if root.exists() and not root.is_dir():
            raise ValueError(f"cannot create an episode store at {root}: it is a file")
        root.mkdir(parents=True, exist_ok=True)
        with _flock(root / LOCK_FILE):
            if not (root / STORE_FILE).exists():
                if any(p.name not in (LOCK_FILE,) for p in root.iterdir()):
                    raise ValueError(f"cannot create an episode store in {root}: the folder is not empty")
                header = {"format": FORMAT, "version": VERSION, "resolution": [h, w],
                          "meta": dict(meta or {}), "shards": []}
                atomic_write_json(root / STORE_FILE, header)
        store = cls(root)
        if store.resolution != (h, w):
            raise ValueError(f"{root} holds a store of resolution {store.resolution}, asked for {(h, w)}")
        return store

    def _load(self, header: dict) -> None:
        self._header = header
        self._resolution = _check_resolution(header["resolution"])
        shards, missing = [], []
        for name in header["shards"]:
            (shards if (self.root / name / "episodes.json").exists() else missing).append(name)
        if missing:
            warnings.warn(f"{self.root}: {len(missing)} listed shard(s) are missing on disk and are ignored: "
                          f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", stacklevel=3)
        self._shards = shards
        ep_shard, ep_offset, ep_length, infos = [], [], [], []
        for si, name in enumerate(shards):
            path = self.root / name / "episodes.json"
            try:
                episodes = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path} is corrupt (not valid JSON): {e}") from e
            for ep in episodes:
                ep = dict(ep)
                ep_shard.append(si)
                ep_offset.append(int(ep.pop("offset")))
                ep_length.append(int(ep.pop("length")))
                infos.append(ep)
        self._ep_shard = np.asarray(ep_shard, dtype=np.int64)
        self._ep_offset = np.asarray(ep_offset, dtype=np.int64)
        self._ep_length = np.asarray(ep_length, dtype=np.int64)
        self._infos = infos
        self._maps: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _index_new_shard(self, header: dict, name: str, episodes: list[dict]) -> None:
        """Add a shard this object just committed to the in-memory index (no re-read of
        the other shards: ingestion of many small shards stays linear)."""
        self._header = header
        si = len(self._shards)
        self._shards.append(name)
        self._ep_shard = np.concatenate([self._ep_shard, np.full(len(episodes), si, dtype=np.int64)])
        self._ep_offset = np.concatenate([self._ep_offset, np.array([e["offset"] for e in episodes], np.int64)])
        self._ep_length = np.concatenate([self._ep_length, np.array([e["length"] for e in episodes], np.int64)])
        self._infos.extend({k: v for k, v in e.items() if k not in _RESERVED_INFO} for e in episodes)

    def refresh(self) -> "EpisodeStore":
        """Re-read store.json and the shard indexes (e.g. after another process committed
        shards; an open store otherwise sees only its own commits)."""
        self._load(_read_store_json(self.root))
        return self

    def _clean_stale_tmp(self) -> None:
        """Remove `*.tmp` shard folders whose writer is gone (crash or kill)."""
        tmps = [p for p in self.root.glob("*" + TMP_SUFFIX) if p.is_dir()]
        if not tmps:
            return
        try:
            with _flock(self.root / LOCK_FILE):
                for tmp in tmps:
                    if not tmp.exists():
                        continue
                    fd = _try_flock(tmp / WRITER_LOCK)
                    if fd is None:
                        continue  # a live writer owns it
                    try:
                        shutil.rmtree(tmp)
                    finally:
                        os.close(fd)
        except OSError as e:  # read-only store: leave it, reading still works
            warnings.warn(f"could not remove unfinished shards in {self.root}: {e}", stacklevel=3)

    # ---------------------------------------------------------------- pickling
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memmaps are reopened lazily in the receiving process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (f"EpisodeStore({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
                f"resolution={self.resolution}, shards={len(self._shards)})")

    # ---------------------------------------------------------------- properties
    @property
    def resolution(self) -> tuple[int, int]:
        return self._resolution

    @property
    def meta(self) -> dict:
        return dict(self._header.get("meta", {}))

    @property
    def shard_names(self) -> list[str]:
        return list(self._shards)

    @property
    def num_episodes(self) -> int:
        return len(self._ep_length)

    @property
    def num_frames(self) -> int:
        return int(self._ep_length.sum())

    @property
    def episode_lengths(self) -> np.ndarray:
        return self._ep_length.copy()

    def __len__(self) -> int:
        return self.num_episodes

    def has_shard(self, name: str) -> bool:
        return name in self._shards

    def shard_episodes(self, name: str) -> list[int]:
        """Global indices of the episodes stored in shard `name`."""
        if name not in self._shards:
            raise ValueError(f"{self.root} has no shard {name!r}")
        return np.nonzero(self._ep_shard == self._shards.index(name))[0].tolist()

    def total_bytes(self) -> int:
        """Bytes on disk of store.json and every listed shard."""
        total = (self.root / STORE_FILE).stat().st_size
        for name in self._shards:
            total += sum(p.stat().st_size for p in (self.root / name).iterdir() if p.is_file())
        return total

    # ---------------------------------------------------------------- reading
    def _shard_arrays(self, si: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        maps = self._maps.get(si)
        if maps is None:
            d = self.root / self._shards[si]
            frames = np.load(d / "frames.npy", mmap_mode="r")
            actions = np.load(d / "actions.npy", mmap_mode="r")
            rewards = np.load(d / "rewards.npy", mmap_mode="r")
            maps = self._maps[si] = (frames, actions, rewards)
        return maps

    def _check_index(self, i: int) -> int:
        n = self.num_episodes
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"episode index {i} out of range for a store of {n} episodes")
        return i

    def frames(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Read-only memmap view of frames [start, stop) of episode i: (t, H, W, 3) uint8."""
        i = self._check_index(i)
        length = int(self._ep_length[i])
        start, stop, _ = slice(start, stop).indices(length)
        off = int(self._ep_offset[i])
        frames, _, _ = self._shard_arrays(int(self._ep_shard[i]))
        return frames[off + start: off + max(start, stop)]

    def actions(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """int64 actions [start, stop) of episode i (-1 where unknown and at the last frame)."""
        i = self._check_index(i)
        start, stop, _ = slice(start, stop).indices(int(self._ep_length[i]))
        off = int(self._ep_offset[i])
        _, actions, _ = self._shard_arrays(int(self._ep_shard[i]))
        return np.asarray(actions[off + start: off + max(start, stop)], dtype=np.int64)

    def rewards(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        i = self._check_index(i)
        start, stop, _ = slice(start, stop).indices(int(self._ep_length[i]))
        off = int(self._ep_offset[i])
        _, _, rewards = self._shard_arrays(int(self._ep_shard[i]))
        return np.array(rewards[off + start: off + max(start, stop)], dtype=np.float32)

    def info(self, i: int) -> dict:
        return dict(self._infos[self._check_index(i)])

    def episode(self, i: int) -> dict[str, Any]:
        """{"frames": read-only memmap (T, H, W, 3) uint8, "actions": (T,) int64,
        "rewards": (T,) float32, "info": dict}."""
        return {"frames": self.frames(i), "actions": self.actions(i), "rewards": self.rewards(i),
                "info": self.info(i)}

    # ---------------------------------------------------------------- writing
    def writer(self, shard_name: str) -> "ShardWriter":
        return ShardWriter(self, shard_name)

    def remove_shard(self, name: str) -> None:
        """Unlist shard `name` (atomic rewrite of store.json), then delete its folder."""
        with _flock(self.root / LOCK_FILE):
            header = _read_store_json(self.root)
            if name not in header["shards"]:
                raise ValueError(f"{self.root} has no shard {name!r}")
            header["shards"] = [s for s in header["shards"] if s != name]
            atomic_write_json(self.root / STORE_FILE, header)
            shutil.rmtree(self.root / name, ignore_errors=True)
        self.refresh()


class ShardWriter:
    """Context manager that writes one shard; see the module docstring. Frames stream to
    disk as episodes are added (memory holds only actions, rewards and infos). An exception
    inside the block, or a block that added no episode, leaves no shard."""

    def __init__(self, store: EpisodeStore, name: str):
        if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith(TMP_SUFFIX) or name == STORE_FILE:
            raise ValueError(f"bad shard name {name!r}: expected letters, digits, '_', '-', '.', "
                             f"not starting with '.' and not ending in {TMP_SUFFIX!r}")
        self.store = store
        self.name = name
        self.tmp = store.root / (name + TMP_SUFFIX)
        self.final = store.root / name
        self._episodes: list[dict] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[np.ndarray] = []
        self._n = 0
        self._pending = 0  # frames written of an episode not yet ended (write_frames)
        self._file = None
        self._lock_fd: int | None = None

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return self._n

    def __enter__(self) -> "ShardWriter":
        root = self.store.root
        with _flock(root / LOCK_FILE):
            listed = _read_store_json(root)["shards"]
            if self.name in listed and (self.final / "episodes.json").exists():
                raise ValueError(f"shard {self.name!r} already exists in {root}; check store.has_shard first")
            if self.tmp.exists():
                fd = _try_flock(self.tmp / WRITER_LOCK)
                if fd is None:
                    raise ValueError(f"another process is writing shard {self.name!r} in {root}")
                os.close(fd)
                shutil.rmtree(self.tmp)
            self.tmp.mkdir()
            self._lock_fd = _try_flock(self.tmp / WRITER_LOCK)
        self._file = open(self.tmp / "frames.npy", "wb")
        self._file.write(b"\0" * NPY_HEADER_BYTES)  # real header written at commit
        return self

    def add_episode(self, frames, actions=None, rewards=None, **info) -> int:
        """Append one episode: frames uint8 (T, H, W, 3); actions (T,) ints (-1 unknown), or
        T-1 of them; rewards likewise (float). The last entry of each is stored as -1 / 0.
        `info` must be JSON-serialisable. Returns the episode's index inside the shard."""
        if self._pending:
            raise RuntimeError("an episode is being streamed: finish it with end_episode first")
        frames = self._check_frames(frames)
        t = frames.shape[0]
        acts, rews = self._check_episode(t, actions, rewards, info)
        self._write(frames)
        return self._record(t, acts, rews, info)

    def write_frames(self, frames) -> None:
        """Stream frames uint8 (k, H, W, 3) of the current episode to disk (any number of calls);
        `end_episode` then closes it. Memory holds none of them."""
        frames = self._check_frames(frames)
        self._write(frames)
        self._pending += frames.shape[0]

    def end_episode(self, actions=None, rewards=None, **info) -> int:
        """Close the episode whose frames `write_frames` streamed (actions, rewards and info as in
        `add_episode`); if they are invalid the episode's frames are discarded and the error raised."""
        t = self._pending
        if t == 0:
            raise ValueError("no frames were written for this episode (write_frames first)")
        try:
            acts, rews = self._check_episode(t, actions, rewards, info)
        except BaseException:
            self.discard_episode()
            raise
        self._pending = 0
        return self._record(t, acts, rews, info)

    def discard_episode(self) -> None:
        """Drop the frames streamed since the last finished episode (the shard keeps the others)."""
        if self._file is None:
            raise RuntimeError("use ShardWriter inside a `with` block")
        h, w = self.store.resolution
        self._file.seek(NPY_HEADER_BYTES + self._n * h * w * 3)
        self._file.truncate()
        self._pending = 0

    def _check_frames(self, frames) -> np.ndarray:
        if self._file is None:
            raise RuntimeError("use ShardWriter inside a `with` block")
        frames = np.asarray(frames)
        h, w = self.store.resolution
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, {h}, {w}, 3), got dtype {frames.dtype}")
        if frames.ndim != 4 or frames.shape[1:] != (h, w, 3) or frames.shape[0] < 1:
            raise ValueError(f"frames must have shape (T, {h}, {w}, 3) with T >= 1 for this store, got {frames.shape}")
        return frames

    def _write(self, frames: np.ndarray) -> None:
        self._file.write(memoryview(np.ascontiguousarray(frames)).cast("B"))

    def _check_episode(self, t: int, actions, rewards, info: dict) -> tuple[np.ndarray, np.ndarray]:
        acts = self._per_frame(actions, t, "actions", np.int64, -1)
        if acts.size and (acts.min() < -1 or acts.max() > np.iinfo(np.int16).max):
            raise ValueError(f"actions must be integers in [-1, {np.iinfo(np.int16).max}] (-1 = unknown), "
                             f"got range [{acts.min()}, {acts.max()}]")
        rews = self._per_frame(rewards, t, "rewards", np.float64, 0.0)
        if not np.all(np.isfinite(rews)):
            raise ValueError("rewards must be finite numbers")
        bad = [k for k in _RESERVED_INFO if k in info]
        if bad:
            raise ValueError(f"episode info may not use the reserved keys {bad}")
        try:
            json.dumps(info)
        except (TypeError, ValueError) as e:
            raise ValueError(f"episode info must be JSON-serialisable (str/int/float/bool/list/dict): {e}") from e
        acts[-1], rews[-1] = -1, 0.0
        return acts, rews

    def _record(self, t: int, acts: np.ndarray, rews: np.ndarray, info: dict) -> int:
        self._actions.append(acts.astype(np.int16))
        self._rewards.append(rews.astype(np.float32))
        self._episodes.append({"offset": self._n, "length": t, **info})
        self._n += t
        return len(self._episodes) - 1

    @staticmethod
    def _per_frame(values, t: int, what: str, dtype, fill) -> np.ndarray:
        if values is None:
            return np.full(t, fill, dtype=dtype)
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.shape[0] not in (t, t - 1):
            raise ValueError(f"{what} must be a 1-d array of length T={t} (or T-1={t - 1}, one per transition), "
                             f"got shape {arr.shape}")
        if dtype is np.int64 and arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
        out = np.full(t, fill, dtype=dtype)
        out[: arr.shape[0]] = arr
        return out

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None or not self._episodes or self._pending:
            self._abort()  # an error, nothing written, or an episode left unfinished: no shard
            if exc_type is None and self._pending:
                self._pending = 0
                raise RuntimeError(f"shard {self.name!r}: an episode was streamed but not ended (end_episode); "
                                   f"nothing was stored")
            return False
        try:
            self._commit()
        except BaseException:
            self._abort()
            raise
        return False

    def _commit(self) -> None:
        h, w = self.store.resolution
        header = "{'descr': '|u1', 'fortran_order': False, 'shape': (%d, %d, %d, 3), }" % (self._n, h, w)
        header = header.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
        assert len(header) + 10 == NPY_HEADER_BYTES, "npy header overflow"
        f = self._file
        f.seek(0)
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1"))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._file = None
        np.save(self.tmp / "actions.npy", np.concatenate(self._actions))
        np.save(self.tmp / "rewards.npy", np.concatenate(self._rewards))
        (self.tmp / "episodes.json").write_text(json.dumps(self._episodes) + "\n")
        for name in ("actions.npy", "rewards.npy", "episodes.json"):
            fsync_file(self.tmp / name)
        root = self.store.root
        with _flock(root / LOCK_FILE):
            store_header = _read_store_json(root)
            (self.tmp / WRITER_LOCK).unlink()  # we keep the lock through its fd until the end
            fsync_dir(self.tmp)
            if self.final.exists():  # a stale copy (crash between rename and listing, or removed shard)
                shutil.rmtree(self.final)
            os.replace(self.tmp, self.final)
            fsync_dir(root)
            if self.name not in store_header["shards"]:
                store_header["shards"].append(self.name)
            atomic_write_json(root / STORE_FILE, store_header)
        os.close(self._lock_fd)
        self._lock_fd = None
        if self.name in self.store._shards:  # replaced a listed-but-missing shard: rebuild the index
            self.store.refresh()
        else:
            self.store._index_new_shard(store_header, self.name, self._episodes)
