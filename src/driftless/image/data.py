"""Still images for the MAR image model: an ImageFolder reader and the Procgen-16-games set.

ImageFolder layout (as torchvision's): one sub-folder per class, images inside it (searched
recursively), classes numbered in sorted folder-name order:

    DIR/bigfish/0001.png
    DIR/bigfish/...
    DIR/coinrun/...

`read_image_folder(DIR, size=64)` returns uint8 (N, size, size, 3) images (centre-cropped to a
square, then resized), int64 labels and the class names. Bad layouts raise ValueError naming
what was expected (no class folders, an empty class, an unreadable file).

`build_procgen_games(OUT, per_game=400)` writes such a folder: 64x64 frames of the 16 Procgen
games, one class per game, from a uniform random agent. Each of `envs` vector envs keeps one
frame every `stride` steps (random phase per env, so frames are not all episode starts); levels
come from the split's seed range (train [0, 10000), val [10000, 10500), test [10500, 11000), as
for CoinRun), so a val folder shares no level with the train folder. Games are written one
folder at a time; a game folder that already holds `per_game` images is skipped (resumable).

`encode_images` / `cached_latents`: the normalised latents of an ImageFolder through the video
tokenizer (one frame at a time), cached beside a run; training batches of them come from
`driftless.train.memory.TensorBatches`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from driftless.checkpoint import atomic_write_json
from driftless.data.coinrun import PROCGEN_GAMES

GAMES = PROCGEN_GAMES  # one class per Procgen game
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64, index into classes
    classes: list[str]
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def per_class(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


# ------------------------------------------------------------------------------------ reading
def as_uint8_images(images, name: str = "images"):
    """A uint8 (N, H, W, 3) torch tensor of `images` (numpy or torch), or a ValueError naming `name`."""
    import torch

    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x


def list_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """(image paths, labels, class names) of an ImageFolder-layout directory; no pixels read."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory: expected an ImageFolder layout, one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:3]
        hint = f" (it holds images directly, e.g. {loose}: move them into a class sub-folder)" if loose else ""
        raise ValueError(f"{root} has no class sub-folders: expected DIR/<class>/<image>.png{hint}")
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"class folder {root / c} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                             f"remove it or add images")
        paths += files
        labels += [i] * len(files)
    return paths, labels, classes


def load_image(path: str | Path, size: int) -> np.ndarray:
    """One image -> uint8 (size, size, 3): RGB, centre-cropped to a square, area-resized."""
    from PIL import Image, UnidentifiedImageError

    from driftless.data.videos import square_resize

    try:
        with Image.open(path) as im:
            return square_resize(im, size, area=True)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def read_image_folder(root: str | Path, size: int = 64, max_per_class: int | None = None,
                      classes: list[str] | None = None, progress: bool = True) -> ImageSet:
    """Read an ImageFolder directory into memory. `classes` fixes the class list (and order) to
    that of a trained model: every folder must be one of them; `max_per_class` keeps the first
    files of each class (sorted by path)."""
    if size < 8:
        raise ValueError(f"image size must be >= 8 pixels, got {size}")
    paths, labels, found = list_image_folder(root)
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"{root} has class folders {unknown} that the model does not know; its classes are "
                             f"{list(classes)}")
        remap = {i: list(classes).index(c) for i, c in enumerate(found)}
        labels = [remap[y] for y in labels]
        found = list(classes)
    if max_per_class is not None:
        keep, seen = [], {}
        for p, y in zip(paths, labels):
            if seen.get(y, 0) < max_per_class:
                keep.append((p, y))
                seen[y] = seen.get(y, 0) + 1
        paths, labels = [p for p, _ in keep], [y for _, y in keep]
    from tqdm.auto import tqdm

    images = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(tqdm(paths, desc=f"read {Path(root).name}", unit="img", disable=not progress,
                               leave=False)):
        images[i] = load_image(p, size)
    return ImageSet(images, np.asarray(labels, np.int64), list(found), [str(p) for p in paths])


def write_image_folder(root: str | Path, images: np.ndarray, labels: np.ndarray, classes: list[str],
                       prefix: str = "img") -> list[Path]:
    """Write uint8 (N, H, W, 3) images as PNGs in ImageFolder layout ROOT/<class>/<prefix>-<i>.png."""
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    out, counters = [], {}
    for img, y in zip(images, np.asarray(labels)):
        c = classes[int(y)]
        (Path(root) / c).mkdir(parents=True, exist_ok=True)
        k = counters.get(c, 0)
        counters[c] = k + 1
        path = Path(root) / c / f"{prefix}-{k:05d}.png"
        Image.fromarray(img).save(path)
        out.append(path)
    return out


# ------------------------------------------------------------------------ the 16 Procgen games
def _game_frames(game: str, count: int, split: str, stride: int, envs: int, seed: int, mode: str,
                 max_steps: int) -> np.ndarray:
    """`count` frames (count, 64, 64, 3) of one game from a random agent, `stride` steps apart."""
    from driftless.data.coinrun import NUM_ACTIONS, make_env

    key = [seed, _SPLIT_ID[split], GAMES.index(game)]
    env_seed = int(np.random.SeedSequence(key + [0]).generate_state(1)[0] % (2**31 - 1))
    rng = np.random.default_rng(np.random.SeedSequence(key + [1]))
    env = make_env(envs, split, env_seed, mode, game)
    phase = rng.integers(0, stride, size=envs)  # each env keeps frames at its own offset
    frames, step = [], 0
    try:
        while len(frames) < count:
            if step >= max_steps:
                raise RuntimeError(f"{game}: only {len(frames)} of {count} frames after {max_steps} steps")
            _, obs, _ = env.observe()
            for i in np.flatnonzero((step - phase) % stride == 0):
                if step >= phase[i] and len(frames) < count:
                    frames.append(obs["rgb"][i].copy())
            env.act(rng.integers(0, NUM_ACTIONS, size=envs).astype(np.int32))
            step += 1
    finally:
        env.close()
    # interleaved over envs as collected; shuffle so that any prefix mixes envs and times
    frames = np.stack(frames)
    return frames[rng.permutation(len(frames))]


def build_procgen_games(out: str | Path, per_game: int = 400, split: str = "train", stride: int = 24,
                        envs: int = 64, seed: int = 0, mode: str = "hard", games: tuple[str, ...] | list[str] = GAMES,
                        progress: bool = True) -> dict:
    """Write `per_game` 64x64 random-agent frames of each game into OUT/<game>/<split>-NNNNN.png.

    Returns {"out", "games", "per_game", "written", "skipped", "seconds"}; writes OUT/games.json
    with the settings. Deterministic given (seed, split, stride, envs, mode)."""
    import time

    from tqdm.auto import tqdm

    from driftless.data.coinrun import MODES, split_range

    split_range(split)
    if mode not in MODES:
        raise ValueError(f"unknown distribution mode {mode!r}: expected one of {list(MODES)}")
    unknown = [g for g in games if g not in GAMES]
    if unknown or not games:
        raise ValueError(f"unknown Procgen game(s) {unknown}; expected a non-empty subset of {list(GAMES)}")
    for name, v in (("per_game", per_game), ("stride", stride), ("envs", envs)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"source": "procgen-games", "split": split, "stride": int(stride), "envs": int(envs),
                "seed": int(seed), "mode": mode, "resolution": [64, 64], "agent": "uniform random"}
    manifest = out / "games.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise ValueError(f"{out} was built with settings { {k: old.get(k) for k in settings} }, this run asks for "
                             f"{settings}: use another --out")
    t0 = time.time()
    written, skipped = 0, []
    max_steps = stride * (-(-per_game // envs)) + stride + 10_000
    for game in tqdm(list(games), desc=f"procgen games ({split})", unit="game", disable=not progress):
        folder = out / game
        have = sorted(folder.glob(f"{split}-*.png")) if folder.exists() else []
        if len(have) >= per_game:
            skipped.append(game)
            continue
        frames = _game_frames(game, per_game, split, stride, envs, seed, mode, max_steps)
        write_image_folder(out, frames, np.zeros(len(frames), np.int64), [game], prefix=split)
        written += len(frames)
    counts = {g: len(list((out / g).glob(f"{split}-*.png"))) for g in games}
    atomic_write_json(manifest, {**settings, "games": list(games), "per_game": int(per_game), "counts": counts})
    summary = {"out": str(out), "games": len(games), "per_game": int(per_game), "written": written,
               "skipped": skipped, "seconds": round(time.time() - t0, 1)}
    return summary


# ---------------------------------------------------------------------------- latent caches
def encode_images(tokenizer, images: np.ndarray, batch_size: int = 128, device="cpu", progress: bool = True):
    """uint8 (N, H, W, 3) -> normalised latents (N, s, C) float32 on the CPU, one frame at a time
    through the (causal video) tokenizer: encode(frames[:, None])[:, 0]."""
    import torch
    from tqdm.auto import tqdm

    h, w = tokenizer.cfg.resolution
    if images.ndim != 4 or tuple(images.shape[1:]) != (h, w, 3) or images.dtype != np.uint8:
        raise ValueError(f"the tokenizer encodes uint8 (N, {h}, {w}, 3) images, got {images.dtype} {images.shape}")
    if tokenizer.cfg.latent_mean is None:
        raise ValueError("this tokenizer has no latent statistics (latent_mean/std): finish its training first")
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="encode images", disable=not progress, leave=False):
        x = torch.from_numpy(images[i:i + batch_size]).to(device)
        out.append(tokenizer.encode(x[:, None])[:, 0].float().cpu())  # (n, s, C)
    return torch.cat(out) if out else torch.zeros(0, tokenizer.cfg.tokens_per_frame, tokenizer.cfg.latent_dim)


def cached_latents(data: str, tok, tok_path: str, cache: Path, classes=None, max_per_class=None,
                   device: str = "cpu"):
    """(latents (N, s, C), labels (N,), classes) of an ImageFolder encoded by `tok`, cached in the
    safetensors file `cache` (re-encoded when the folder, tokenizer or class list changes)."""
    import torch
    from safetensors.torch import load_file, save_file

    paths, _, found = list_image_folder(data)
    from driftless.checkpoint import resolve

    weights = resolve(tok_path) / "model.safetensors"  # a retrained tokenizer invalidates the cache
    key = {"data": str(Path(data).resolve()), "tokenizer": str(Path(tok_path).resolve()), "files": len(paths),
           "tokenizer_mtime_ns": weights.stat().st_mtime_ns if weights.exists() else 0,
           "max_per_class": max_per_class, "classes": list(classes or found)}
    meta_path = cache.with_suffix(".json")
    if cache.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == key:
        t = load_file(str(cache))
        return t["latents"], t["labels"], key["classes"]
    h, _ = tok.cfg.resolution
    ds = read_image_folder(data, size=h, max_per_class=max_per_class, classes=classes)
    lat = encode_images(tok, ds.images, device=device)
    labels = torch.from_numpy(ds.labels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": lat.contiguous(), "labels": labels.contiguous()}, str(cache))
    atomic_write_json(meta_path, key)
    return lat, labels, ds.classes
