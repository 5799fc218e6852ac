"""Pictures in and out of a world: prompt images, recordings as MP4 / GIF, PNG strips.

Frames everywhere are uint8 (H, W, 3). Output is scaled up with nearest-neighbour (crisp
pixels) and, for MP4, padded to even dimensions because yuv420p halves the chroma planes.

Untrusted image bytes (uploads) go through `load_image_bytes`: size limit, PNG/JPEG magic
bytes, a pixel-count limit checked from the header before anything is decoded, then a full
decode, EXIF orientation, alpha flattened on black, center crop and resize to the world's
resolution.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class ImageLimits:
    """Limits on an uploaded prompt image."""

    max_bytes: int = 4 * 1024 * 1024  # encoded file size
    max_pixels: int = 16_000_000  # width * height, read from the header before decoding


class ImageError(ValueError):
    """An image that is not an acceptable PNG/JPEG prompt."""


# ---------------------------------------------------------------------------------- frames
def check_frame(frame, name: str = "frame") -> np.ndarray:
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 (H, W, 3), got {a.dtype} {a.shape}")
    return a


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour scale-up of uint8 (H, W, 3) by an integer factor."""
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    if scale == 1:
        return frame
    return np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def tile(frames: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """(N, H, W, 3) -> one (rows*H + gaps, cols*W + gaps, 3) image, row-major, dark gaps."""
    frames = np.asarray(frames)
    n, h, w, _ = frames.shape
    cols = max(1, min(n, columns or n))
    rows = -(-n // cols)
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 16, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = frames[i]
    return out


# ---------------------------------------------------------------------------------- video out
def _pick_codec() -> str:
    import av

    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises several types for a missing codec
            continue
    raise RuntimeError("PyAV has neither libx264 nor mpeg4 encoders; cannot write MP4")


class Mp4Writer:
    """Stream frames into an MP4 (H.264 via libx264 when present, else MPEG-4 part 2), yuv420p.

        with Mp4Writer(path_or_buffer, fps=15, scale=4) as w:
            w.write(frame)
    """

    def __init__(self, target, fps: float = 15, scale: int = 4):
        import av

        self.target, self.scale = target, int(scale)
        self.fps = Fraction(fps).limit_denominator(1000)
        self._container = av.open(target, mode="w", format="mp4")
        self._codec = _pick_codec()
        self._stream = None
        self.frames = 0

    def _open_stream(self, h: int, w: int) -> None:
        s = self._container.add_stream(self._codec, rate=self.fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if self._codec == "libx264":
            s.options = {"crf": "18", "preset": "veryfast", "tune": "animation"}
        else:
            s.bit_rate = 4_000_000
        self._stream = s

    def write(self, frame: np.ndarray) -> None:
        import av

        img = _even(upscale(check_frame(frame), self.scale))
        if self._stream is None:
            self._open_stream(img.shape[0], img.shape[1])
        elif (img.shape[0], img.shape[1]) != (self._stream.height, self._stream.width):
            raise ValueError(f"all frames of a video must share one size; got {img.shape[:2]} after "
                             f"{(self._stream.height, self._stream.width)}")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_mp4(frames: Iterable[np.ndarray], fps: float = 15, scale: int = 4) -> bytes:
    """Frames -> MP4 file bytes."""
    buf = io.BytesIO()
    with Mp4Writer(buf, fps=fps, scale=scale) as w:
        for f in frames:
            w.write(f)
    if w.frames == 0:
        raise ValueError("cannot encode a video of zero frames")
    return buf.getvalue()


class GifWriter:
    """An animated GIF built one frame at a time: `add` does all the work of a frame (palette,
    scale-up, LZW), `getvalue` only joins the encoded frames, so a recording can be encoded while it
    is made and downloaded at once (and again) without encoding it anew.

    Each frame gets its own 256-colour palette (median cut, no dithering) and only the rectangle
    that changed since the previous frame is stored (the rest is kept: disposal 1); a frame equal to
    the previous one lengthens its display time instead.
    """

    def __init__(self, fps: float = 15, scale: int = 4):
        if int(scale) < 1:
            raise ValueError(f"scale must be an integer >= 1, got {scale}")
        self.scale = int(scale)
        # GIF delays are in hundredths of a second
        self.delay_cs = max(2, int(round(100 / max(float(fps), 1e-3))))
        self.added = 0  # frames given to `add`
        self._frames: list[list] = []  # [delay in cs, image descriptor + palette + data]
        self._size: tuple[int, int] | None = None  # (width, height) of the source frames
        self._prev: np.ndarray | None = None

    @property
    def frames(self) -> int:
        """Frames stored (equal neighbours merged)."""
        return len(self._frames)

    def add(self, frame: np.ndarray) -> None:
        from PIL import GifImagePlugin, Image

        f = check_frame(frame)
        h, w = f.shape[:2]
        if self._size is None:
            self._size = (w, h)
        elif self._size != (w, h):
            raise ValueError(f"all frames of a GIF must share one size; got {w}x{h} after "
                             f"{self._size[0]}x{self._size[1]}")
        self.added += 1
        x0, y0, x1, y1 = 0, 0, w, h
        if self._prev is not None:
            changed = np.any(f != self._prev, axis=2)  # (h, w)
            rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
            if rows.size == 0:  # the same picture: show the previous one longer
                self._frames[-1][0] += self.delay_cs
                return
            x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        self._prev = f.copy()
        # palette from the small region (far less work than after scaling), then a nearest-neighbour
        # resize of the paletted image, which keeps the palette and the crisp pixels
        im = Image.fromarray(np.ascontiguousarray(f[y0:y1, x0:x1])).quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        s = self.scale
        im = im.resize(((x1 - x0) * s, (y1 - y0) * s), Image.Resampling.NEAREST)
        body = b"".join(GifImagePlugin.getdata(im, offset=(x0 * s, y0 * s), include_color_table=True))
        self._frames.append([self.delay_cs, body])

    def extend(self, frames: Iterable[np.ndarray]) -> None:
        for f in frames:
            self.add(f)

    def getvalue(self) -> bytes:
        """The GIF file: header, loop forever, each frame with its delay, trailer."""
        if not self._frames:
            raise ValueError("cannot encode a GIF of zero frames")
        w, h = self._size[0] * self.scale, self._size[1] * self.scale
        out = [b"GIF89a", w.to_bytes(2, "little"), h.to_bytes(2, "little"), b"\x00\x00\x00",  # no global palette
               b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"]  # loop forever
        for delay, body in self._frames:
            # graphic control extension: disposal 1 (keep the picture), the delay, no transparency
            out += [b"!\xf9\x04\x04", min(delay, 0xFFFF).to_bytes(2, "little"), b"\x00\x00", body]
        out.append(b";")
        return b"".join(out)


def encode_gif(frames: Iterable[np.ndarray], fps: float = 15, scale: int = 4) -> bytes:
    """Frames -> looping animated GIF bytes (adaptive palette per frame, no dithering; see `GifWriter`)."""
    writer = GifWriter(fps, scale)
    writer.extend(frames)
    return writer.getvalue()


def encode_png(frame: np.ndarray, scale: int = 1, compress_level: int = 6) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(upscale(check_frame(frame), scale)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def png_strip(frames: np.ndarray, scale: int = 2, columns: int = 16) -> bytes:
    """(N, H, W, 3) -> PNG bytes of the frames side by side, wrapped every `columns` frames."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"a strip needs frames (N, H, W, 3) with N >= 1, got {frames.shape}")
    return encode_png(tile(frames, columns), scale=scale)


def save_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 15, scale: int = 4) -> Path:
    """Write frames (N, H, W, 3) to .mp4, .gif or .png (a strip), atomically."""
    from driftless.checkpoint import atomic_write_bytes

    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".mp4":
        data = encode_mp4(frames, fps, scale)
    elif ext == ".gif":
        data = encode_gif(frames, fps, scale)
    elif ext == ".png":
        data = png_strip(np.asarray(frames), scale=max(1, scale // 2))
    else:
        raise ValueError(f"output must end in .mp4, .gif or .png, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


# ---------------------------------------------------------------------------------- images in
def fit_to(img, resolution: tuple[int, int]) -> np.ndarray:
    """PIL image -> uint8 (H, W, 3): center crop to the target aspect ratio, then resize."""
    from PIL import Image

    h, w = int(resolution[0]), int(resolution[1])
    iw, ih = img.size
    target = w / h
    if iw / ih > target:  # too wide: crop the sides
        cw = max(1, round(ih * target))
        box = ((iw - cw) // 2, 0, (iw - cw) // 2 + cw, ih)
    else:  # too tall: crop top and bottom
        ch = max(1, round(iw / target))
        box = (0, (ih - ch) // 2, iw, (ih - ch) // 2 + ch)
    img = img.crop(box)
    if img.size != (w, h):
        # BOX averages when shrinking (no aliasing), NEAREST keeps pixel art crisp when growing
        shrinking = img.size[0] >= w and img.size[1] >= h
        img = img.resize((w, h), Image.Resampling.BOX if shrinking else Image.Resampling.NEAREST)
    return np.asarray(img, dtype=np.uint8).copy()


def load_image_bytes(data: bytes, resolution: tuple[int, int], limits: ImageLimits | None = None) -> np.ndarray:
    """Validate and decode an untrusted PNG/JPEG -> uint8 (H, W, 3) at `resolution`.

    Raises ImageError (a ValueError) saying what was expected."""
    from PIL import Image, ImageOps

    limits = limits or ImageLimits()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise ImageError("the image is empty (0 bytes); expected a PNG or JPEG file")
    if len(data) > limits.max_bytes:
        raise ImageError(f"the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes "
                         f"({limits.max_bytes / 1e6:.1f} MB)")
    if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
        raise ImageError("not a PNG or JPEG file (unrecognised signature); expected a .png or .jpg image")
    try:
        # Image.open reads only the header; Pillow's global MAX_IMAGE_PIXELS bomb guard stays on,
        # and the stricter per-call limit below is checked before a single pixel is decoded
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("PNG", "JPEG"):
                raise ImageError(f"expected a PNG or JPEG image, got {img.format}")
            w, h = img.size
            if w < 1 or h < 1 or w * h > limits.max_pixels:
                raise ImageError(f"the image is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                img = Image.alpha_composite(base, rgba)
            if img.mode.startswith("I;16") or img.mode == "I":
                img = img.point(lambda v: v / 256).convert("L")  # 16-bit grey -> 8-bit
            img = img.convert("RGB")
            return fit_to(img, resolution)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"the image has too many pixels (limit {limits.max_pixels}): {e}") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError("could not read the image: the PNG/JPEG file is corrupt or truncated") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow's errors for corrupt files
        raise ImageError(f"could not decode the image as PNG/JPEG ({type(e).__name__}: {e})") from e


def load_image_file(path: str | os.PathLike, resolution: tuple[int, int],
                    limits: ImageLimits | None = None) -> np.ndarray:
    """A PNG/JPEG file on disk -> uint8 (H, W, 3) at `resolution` (same checks as uploads)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    limits = limits or ImageLimits(max_bytes=64 * 1024 * 1024, max_pixels=64_000_000)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ImageError(f"{path} is {size} bytes; the limit is {limits.max_bytes} bytes")
    return load_image_bytes(path.read_bytes(), resolution, limits)
