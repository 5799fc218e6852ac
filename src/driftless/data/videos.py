"""Ingest a folder of video files (PyAV) into an episode store.

Each video file under the input folder (recursive, sorted) becomes one episode, in its own
shard named from a stable hash of its path relative to the folder: frames are center-cropped
to a square and resized to `size` x `size` RGB with Pillow; actions are unknown (-1) and
rewards 0; info records "source" (the relative path). A shard that already exists is
skipped, so an interrupted ingestion resumes without duplicating or losing episodes.
Unreadable files (container/codec errors, no video stream, zero frames, or fewer frames
than the container declares, i.e. truncated) are skipped with a warning and counted, and so is
a file that fails in any other way: every failure is named in the summary, and one file never
stops the others (only a store that cannot be written, e.g. a full disk, stops the run).

Frames stream from the decoder to the store `CHUNK_FRAMES` at a time, so memory stays bounded
however long a video is. File names are bytes on POSIX: a name that is not valid UTF-8 is
hashed as its bytes (`shard_name_for`) and shown with `\\xNN` escapes (`display_name`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from driftless.data.store import EpisodeStore

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".avi", ".mkv")
# a file yielding fewer than (declared - TRUNCATION_SLACK) frames is treated as truncated;
# the slack tolerates containers whose declared count is off by a frame or two
TRUNCATION_SLACK = 2
CHUNK_FRAMES = 64  # decoded frames handed to the store at a time
# errors of the store's disk: they would fail every file alike, so they stop the ingestion
STORE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class VideoReadError(ValueError):
    """A video file could not be decoded into frames."""


def shard_name_for(rel_path: str | bytes) -> str:
    """Stable shard name of a video, from its path relative to the ingested folder (the name's
    bytes: a file name that is not valid UTF-8 hashes like any other)."""
    raw = rel_path if isinstance(rel_path, bytes) else os.fsencode(rel_path)
    return "video-" + hashlib.sha1(raw).hexdigest()[:20]


def display_name(rel_path: str | bytes) -> str:
    """A file name as printable text: bytes that are not UTF-8 become `\\xNN` escapes."""
    raw = rel_path if isinstance(rel_path, bytes) else os.fsencode(rel_path)
    return raw.decode("utf-8", "backslashreplace")


def square_resize(img: Image.Image, size: int, area: bool = False) -> np.ndarray:
    """Center-crop `img` to a square, resize to (size, size), return uint8 (size, size, 3).
    Lanczos by default; `area=True` averages pixels when shrinking (bicubic when enlarging)."""
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        method = (Image.Resampling.BOX if side > size else Image.Resampling.BICUBIC) if area else Image.Resampling.LANCZOS
        img = img.resize((size, size), method)
    return np.asarray(img, dtype=np.uint8)


def read_video(path: str | os.PathLike, size: int = 64, max_frames: int | None = None, fps: float | None = None,
               sink: Callable[[np.ndarray], None] | None = None) -> tuple[np.ndarray | int, dict]:
    """Decode `path` into uint8 (T, size, size, 3) and an info dict; VideoReadError if unreadable.
    `fps` keeps the first frame at or after each 1/fps tick (subsampling; never duplicates).

    With `sink`, frames are not kept: they go to `sink` as uint8 (k, size, size, 3) chunks of at
    most CHUNK_FRAMES as they are decoded, and the call returns (number of frames, info). A video
    found unreadable (truncated, say) after some chunks went out still raises VideoReadError."""
    kept: list[np.ndarray] = []
    info: dict = {}
    n = 0
    with contextlib.closing(_decode_chunks(path, size, max_frames, fps, info)) as chunks:
        for chunk in chunks:
            n += len(chunk)
            if sink is None:
                kept.append(chunk)
            else:
                sink(chunk)
    if sink is not None:
        return n, info
    return np.concatenate(kept), info  # (T, size, size, 3)


def _decode_chunks(path, size: int, max_frames: int | None, fps: float | None, info: dict) -> Iterator[np.ndarray]:
    """The frames of a video as (k, size, size, 3) chunks; `info` is filled once it is opened.
    Decoder errors become VideoReadError; the caller's own errors pass through untouched."""
    import av

    errors = (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError, IndexError, MemoryError)
    try:
        container = av.open(str(path))
    except errors as e:
        raise VideoReadError(f"{type(e).__name__}: {e}") from e
    n_kept = n_seen = 0
    stopped_early = False
    with container:
        try:
            if not container.streams.video:
                raise VideoReadError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            declared = int(stream.frames or 0)
            rate = stream.average_rate or stream.guessed_rate
            info.update(width=int(stream.codec_context.width), height=int(stream.codec_context.height),
                        fps=float(rate) if rate else None)
            decoded = container.decode(stream)
        except errors as e:
            raise VideoReadError(f"{type(e).__name__}: {e}") from e
        next_t = 0.0
        buf: list[np.ndarray] = []
        while True:
            try:
                frame = next(decoded, None)
                if frame is None:
                    break
                n_seen += 1
                if fps is not None:
                    t = frame.time
                    if t is None:
                        t = (n_seen - 1) / float(rate) if rate else float(n_seen - 1)
                    if t + 1e-6 < next_t:
                        continue
                    next_t += 1.0 / fps
                    while next_t <= t:  # skip ticks that fell inside a long frame
                        next_t += 1.0 / fps
                buf.append(square_resize(frame.to_image(), size))
            except errors as e:
                raise VideoReadError(f"{type(e).__name__}: {e}") from e
            n_kept += 1
            if max_frames is not None and n_kept >= max_frames:
                stopped_early = True
            if len(buf) == CHUNK_FRAMES or stopped_early:
                yield np.stack(buf)
                buf = []
            if stopped_early:
                break
        if buf:
            yield np.stack(buf)
    if n_kept == 0:
        raise VideoReadError("no decodable frames")
    if not stopped_early and declared > 0 and n_seen < declared - TRUNCATION_SLACK:
        raise VideoReadError(f"truncated: decoded {n_seen} of the {declared} frames the container declares")
    if fps is not None:
        info["fps"] = float(fps)


def find_videos(in_dir: str | os.PathLike, extensions=VIDEO_EXTENSIONS) -> list[Path]:
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"no folder of videos at {in_dir}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    return sorted(p for p in in_dir.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def ingest_videos(in_dir, out, size: int = 64, extensions=VIDEO_EXTENSIONS, max_frames: int | None = None,
                  fps: float | None = None, verbose: bool = True) -> dict:
    """Ingest every video under `in_dir` into the store at `out` (created at size x size).

    Returns {"ingested", "skipped_existing", "failed", "failed_files", "errors", "frames"}:
    "failed_files" names each file that failed (printable, see `display_name`), "errors" says
    why ({name: reason}), "frames" counts the frames written by this call."""
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if fps is not None and not float(fps) > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    in_dir = Path(in_dir)
    files = find_videos(in_dir, extensions)
    store = EpisodeStore.create(out, (size, size), meta={"source": "videos"})
    summary = {"ingested": 0, "skipped_existing": 0, "failed": 0, "failed_files": [], "errors": {}, "frames": 0}
    from tqdm.auto import tqdm

    t0 = time.time()
    for path in tqdm(files, unit="video", desc="ingest", disable=not verbose):
        rel = path.relative_to(in_dir).as_posix()  # undecodable bytes of the name as surrogates
        shown = display_name(rel)
        name = shard_name_for(rel)
        if store.has_shard(name):
            summary["skipped_existing"] += 1
            continue
        try:
            # frames go straight from the decoder into the shard; a failure leaves no shard
            with store.writer(name) as w:
                n, info = read_video(path, size=size, max_frames=max_frames, fps=fps, sink=w.write_frames)
                w.end_episode(source=shown, **info)
        except VideoReadError as e:
            _failed(summary, shown, f"skipping unreadable video {shown}: {e}", str(e))
            continue
        except OSError as e:
            if e.errno in STORE_ERRNOS:  # the store cannot be written: every further file would fail too
                raise OSError(e.errno, f"cannot write the store at {out} (while ingesting {shown}): "
                                       f"{e.strerror}") from e
            _failed(summary, shown, f"skipping video {shown}: {type(e).__name__}: {e}", f"{type(e).__name__}: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - one file must not stop the others; it is named and counted
            _failed(summary, shown, f"skipping video {shown}: {type(e).__name__}: {e}", f"{type(e).__name__}: {e}")
            continue
        summary["ingested"] += 1
        summary["frames"] += n
    if verbose:
        print(f"videos: ingested {summary['ingested']}, skipped {summary['skipped_existing']} already stored, "
              f"{summary['failed']} failed, {summary['frames']} frames in {time.time() - t0:.1f} s; "
              f"store {out} holds {store.num_episodes} episodes")
        for shown in summary["failed_files"]:
            print(f"  failed: {shown}: {summary['errors'][shown]}")
    return summary


def _failed(summary: dict, shown: str, warning: str, reason: str) -> None:
    warnings.warn(warning, stacklevel=3)
    summary["failed"] += 1
    summary["failed_files"].append(shown)
    summary["errors"][shown] = reason
