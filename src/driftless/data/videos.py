"""Ingest a folder of video files (PyAV) into an episode store.

Each video file under the input folder (recursive, sorted) becomes one episode, in its own
shard named from a stable hash of its path relative to the folder: frames are center-cropped
to a square and resized to `size` x `size` RGB with Pillow; actions are unknown (-1) and
rewards 0; info records "source" (the relative path). A shard that already exists is
skipped, so an interrupted ingestion resumes without duplicating or losing episodes.
Unreadable files (container/codec errors, no video stream, zero frames, or fewer frames
than the container declares, i.e. truncated) are skipped with a warning and counted.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from driftless.data.store import EpisodeStore

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".avi", ".mkv")
# a file yielding fewer than (declared - TRUNCATION_SLACK) frames is treated as truncated;
# the slack tolerates containers whose declared count is off by a frame or two
TRUNCATION_SLACK = 2


class VideoReadError(ValueError):
    """A video file could not be decoded into frames."""


def shard_name_for(rel_path: str) -> str:
    """Stable shard name of a video, from its path relative to the ingested folder."""
    return "video-" + hashlib.sha1(rel_path.encode("utf-8")).hexdigest()[:20]


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


def read_video(path: str | os.PathLike, size: int = 64, max_frames: int | None = None, fps: float | None = None
               ) -> tuple[np.ndarray, dict]:
    """Decode `path` into uint8 (T, size, size, 3) and an info dict; VideoReadError if unreadable.
    `fps` keeps the first frame at or after each 1/fps tick (subsampling; never duplicates)."""
    import av

    frames: list[np.ndarray] = []
    stopped_early = False
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            declared = int(stream.frames or 0)
            rate = stream.average_rate or stream.guessed_rate
            info = {"width": int(stream.codec_context.width), "height": int(stream.codec_context.height),
                    "fps": float(rate) if rate else None}
            next_t, n_seen = 0.0, 0
            for frame in container.decode(stream):
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
                frames.append(square_resize(frame.to_image(), size))
                if max_frames is not None and len(frames) >= max_frames:
                    stopped_early = True
                    break
    except VideoReadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError, IndexError, MemoryError) as e:
        raise VideoReadError(f"{type(e).__name__}: {e}") from e
    if not frames:
        raise VideoReadError("no decodable frames")
    if not stopped_early and declared > 0 and n_seen < declared - TRUNCATION_SLACK:
        raise VideoReadError(f"truncated: decoded {n_seen} of the {declared} frames the container declares")
    if fps is not None:
        info["fps"] = float(fps)
    return np.stack(frames), info  # (T, size, size, 3)


def find_videos(in_dir: str | os.PathLike, extensions=VIDEO_EXTENSIONS) -> list[Path]:
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"no folder of videos at {in_dir}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    return sorted(p for p in in_dir.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def ingest_videos(in_dir, out, size: int = 64, extensions=VIDEO_EXTENSIONS, max_frames: int | None = None,
                  fps: float | None = None, verbose: bool = True) -> dict:
    """Ingest every video under `in_dir` into the store at `out` (created at size x size).

    Returns {"ingested", "skipped_existing", "failed", "failed_files", "frames"} where
    "frames" counts the frames written by this call."""
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if fps is not None and not float(fps) > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    in_dir = Path(in_dir)
    files = find_videos(in_dir, extensions)
    store = EpisodeStore.create(out, (size, size), meta={"source": "videos"})
    summary = {"ingested": 0, "skipped_existing": 0, "failed": 0, "failed_files": [], "frames": 0}
    from tqdm.auto import tqdm

    t0 = time.time()
    for path in tqdm(files, unit="video", desc="ingest", disable=not verbose):
        rel = path.relative_to(in_dir).as_posix()
        name = shard_name_for(rel)
        if store.has_shard(name):
            summary["skipped_existing"] += 1
            continue
        try:
            frames, info = read_video(path, size=size, max_frames=max_frames, fps=fps)
        except VideoReadError as e:
            warnings.warn(f"skipping unreadable video {rel}: {e}", stacklevel=2)
            summary["failed"] += 1
            summary["failed_files"].append(rel)
            continue
        with store.writer(name) as w:
            w.add_episode(frames, source=rel, **info)
        summary["ingested"] += 1
        summary["frames"] += len(frames)
    if verbose:
        print(f"videos: ingested {summary['ingested']}, skipped {summary['skipped_existing']} already stored, "
              f"{summary['failed']} failed, {summary['frames']} frames in {time.time() - t0:.1f} s; "
              f"store {out} holds {store.num_episodes} episodes")
        for rel in summary["failed_files"]:
            print(f"  failed: {rel}")
    return summary
