"""A world as a static web page: `driftless export web WORLD --out DIR`.

The folder plays the world in the browser with onnxruntime-web - WebAssembly everywhere, WebGPU
where the browser has it - and needs nothing but a static file server:

    index.html, play.js              the page (export/static/)
    ui.js, style.css                 what it shares with the play server's page (serve/static/)
    manifest.json                    the graphs' interface, the world, the start frames, the runtime
    encoder.onnx, step.onnx          the graphs (export/onnx.py)
    start/*.png                      start frames (CoinRun test levels, or the images given)
    ort/                             onnxruntime-web's browser files, copied from its npm package

The runtime is pinned (`ORT_VERSION`) and copied at export time, from `npm pack` into a cache
folder (or from `--ort-dir`); nothing is fetched when the page runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from driftless.checkpoint import atomic_write_json
from driftless.export.onnx import MANIFEST, OPSET_OLD, export_onnx
from driftless.world.world import World, load

ORT_PACKAGE = "onnxruntime-web"
ORT_VERSION = "1.30.0"
# the page's graphs stay at opset 18: in onnxruntime-web opset 23's single-node ops ran slower (the
# shipped world: 295 against 269 ms a frame; docs/benchmarks.md, section 11), unlike native ONNX Runtime
WEB_OPSET = OPSET_OLD
# per backend: the bundle the page loads, and the WebAssembly module (loader + binary) it loads. The
# WebAssembly-only bundle compiles in half the time of the all-backends one (14 MB against 28 MB)
# and ran no slower; WebGPU's bundle also runs WebAssembly, so a page that finds a GPU needs only it.
ORT_BACKENDS = {
    "wasm": ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.webgpu.min.js", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
}
ORT_FILES = tuple(f for files in ORT_BACKENDS.values() for f in files)
STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = ("index.html", "play.js")
SERVE_STATIC = Path(__file__).resolve().parent.parent / "serve" / "static"
SHARED_FILES = ("ui.js", "style.css")  # the play server page's shared script (window.DriftlessUI) and look
START_LEVELS = 10500  # first CoinRun test level (the test split), as the play server's levels


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "driftless"


def _dist_of(path: Path, files=ORT_FILES) -> Path | None:
    """The folder holding the runtime's `files` inside `path` (a dist folder, a package folder with
    dist/, or a node_modules folder), or None."""
    for cand in (path, path / "dist", path / "package" / "dist", path / "onnxruntime-web" / "dist",
                 path / "node_modules" / "onnxruntime-web" / "dist"):
        if all((cand / f).is_file() for f in files):
            return cand
    return None


def _extract(tgz: Path, dest: Path) -> None:
    """The runtime's files out of an npm tarball (only those, by name: nothing else is written)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as tar:
        for name in ORT_FILES + ("package.json",):
            member = f"package/dist/{name}" if name != "package.json" else "package/package.json"
            try:
                src = tar.extractfile(member)
            except KeyError:
                src = None
            if src is None:
                raise FileNotFoundError(f"{tgz} has no {member}: is it {ORT_PACKAGE}'s npm package?")
            tmp = dest / (name + ".tmp")
            with src, open(tmp, "wb") as f:
                shutil.copyfileobj(src, f)
            tmp.replace(dest / name)


def _version_of(dist: Path) -> str | None:
    for cand in (dist / "package.json", dist.parent / "package.json"):
        if cand.is_file():
            try:
                return json.loads(cand.read_text()).get("version")
            except ValueError:
                return None
    return None


def ort_runtime(version: str = ORT_VERSION, ort_dir: str | Path | None = None, cache: Path | None = None,
                log=print, backends=tuple(ORT_BACKENDS)) -> tuple[Path, str | None]:
    """-> (the folder holding onnxruntime-web's files for `backends`, its version). From `ort_dir` (a
    downloaded package: its folder, its dist/ folder, a node_modules folder or the .tgz of
    `npm pack`), else from the cache, else `npm pack onnxruntime-web@version` into the cache."""
    needed = tuple(f for b in backends for f in ORT_BACKENDS[b])
    if ort_dir is not None:
        path = Path(ort_dir)
        if path.is_file() and path.name.endswith(".tgz"):
            dest = (cache or cache_dir()) / f"{ORT_PACKAGE}-from-{path.stem}"
            if _dist_of(dest) is None:
                _extract(path, dest)
            return dest, _version_of(dest)
        dist = _dist_of(path, needed) if path.is_dir() else None
        if dist is None:
            raise FileNotFoundError(f"--ort-dir {path} holds no {', '.join(needed)}: give the folder of the "
                                    f"{ORT_PACKAGE} package (npm pack {ORT_PACKAGE}@{version}, then unpack), "
                                    f"its dist/ folder, or the .tgz")
        return dist, _version_of(dist)
    dest = (cache or cache_dir()) / f"{ORT_PACKAGE}-{version}"
    if _dist_of(dest, needed) is not None:
        return dest, version
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(f"npm was not found: the page needs {ORT_PACKAGE}@{version}'s files, which "
                                f"`driftless export web` copies from its npm package. Install Node.js (it brings "
                                f"npm), or run `npm pack {ORT_PACKAGE}@{version}` on a machine that has it and pass "
                                f"the .tgz (or its unpacked folder) with --ort-dir")
    log(f"fetching {ORT_PACKAGE}@{version} with npm pack (once; cached in {dest})")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run([npm, "pack", f"{ORT_PACKAGE}@{version}", "--pack-destination", tmp, "--silent"],
                                  capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            raise FileNotFoundError(f"npm pack {ORT_PACKAGE}@{version} timed out; download it elsewhere and pass "
                                    f"--ort-dir") from None
        tgz = sorted(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tgz:
            raise FileNotFoundError(f"npm pack {ORT_PACKAGE}@{version} failed ({done.stderr.strip()[-400:]}); "
                                    f"download the package elsewhere and pass it with --ort-dir")
        _extract(tgz[0], dest)
    return dest, version


def start_frames(world: World, count: int = 4, images=(), seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """-> [(label, uint8 (H, W, 3))]: the images given (center-cropped and resized to the world),
    else the first frames of `count` CoinRun test levels (Procgen)."""
    from driftless.serve.media import load_image_file
    from driftless.serve.session import LevelSource, resize_frames

    if images:
        return [(f"image {Path(p).name}", load_image_file(p, world.resolution)) for p in images]
    source = LevelSource()
    if count and not source.available:
        raise ValueError(f"start frames from CoinRun test levels need Procgen ({source.reason}); "
                         f"or give images with --start IMAGE")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        frame, info = source.frame(START_LEVELS + i, rng)
        out.append((f"CoinRun test level {info['level']}", resize_frames(frame, world.resolution)[0]))
    return out


def _copy_export(src: Path, out: Path, world: World) -> dict:
    from driftless.export.onnx import FORMAT

    path = src / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest.get("format") != FORMAT:
        raise FileNotFoundError(f"{src} is not a `driftless export onnx` folder (no {MANIFEST} of format {FORMAT!r})")
    if list(manifest["world"]["resolution"]) != list(world.resolution) or \
            manifest["world"]["num_actions"] != world.num_actions:
        raise ValueError(f"{src} was exported from another world (resolution, actions differ)")
    if src.resolve() != out.resolve():
        for graph in manifest["graphs"].values():
            shutil.copyfile(src / graph["file"], out / graph["file"])
    return manifest


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_web(world: World | str | Path, out: str | Path, ort_dir: str | Path | None = None,
               ort_version: str = ORT_VERSION, starts: int = 4, start_images=(), steps: int | None = None,
               weights: str = "auto", check_frames: int | None = None, seed: int = 0, webgpu: bool = True,
               onnx: str | Path | None = None, log=print, **sampling) -> dict:
    """Write the static page for `world` into `out` (see the module docstring); `webgpu=False`
    leaves out WebGPU's runtime files (27 MB: the page then runs on WebAssembly only); `onnx`: an
    `export onnx` folder of this world to take the graphs from instead of exporting them again.
    -> its manifest, with the sizes on disk under "sizes"."""
    from PIL import Image

    if weights == "int8":
        raise ValueError("--weights int8 is for ONNX Runtime on a CPU (driftless export onnx, driftless play "
                         "--backend onnx); the web page has not been measured with quantised graphs: use auto, fp16 or fp32")
    if not isinstance(world, World):
        world = load(world)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the runtime first: a missing npm fails before the (slow) export
    backends = [b for b in ORT_BACKENDS if webgpu or b == "wasm"]
    dist, version = ort_runtime(ort_version, ort_dir, log=log, backends=backends)
    if version and version != ort_version:
        log(f"note: using {ORT_PACKAGE} {version} from --ort-dir; this driftless was tested with {ort_version}")
    frames = start_frames(world, starts, start_images, seed)
    if onnx is not None:
        manifest = _copy_export(Path(onnx), out, world)
    else:
        manifest = export_onnx(world, out, steps=steps, weights=weights, check_frames=check_frames, seed=seed,
                               start_frame=frames[0][1] if frames else None, log=log, opset=WEB_OPSET, **sampling)

    (out / "start").mkdir(exist_ok=True)
    manifest["start_frames"] = []
    for i, (label, frame) in enumerate(frames):
        name = f"start/{i:02d}.png"
        Image.fromarray(frame).save(out / name)
        manifest["start_frames"].append({"file": name, "label": label})
    ort_out = out / "ort"
    if ort_out.exists():
        shutil.rmtree(ort_out)
    ort_out.mkdir()
    for b in backends:
        for name in ORT_BACKENDS[b]:
            shutil.copyfile(dist / name, ort_out / name)
    for name in PAGE_FILES:
        shutil.copyfile(STATIC / name, out / name)
    for name in SHARED_FILES:
        shutil.copyfile(SERVE_STATIC / name, out / name)
    manifest["runtime"] = {"package": ORT_PACKAGE, "version": version or ort_version,
                           "backends": {b: {"bundle": ORT_BACKENDS[b][0], "files": list(ORT_BACKENDS[b])}
                                        for b in backends}}
    graphs = manifest["graphs"]
    manifest["sizes"] = {"onnx": graphs["step"]["bytes"] + graphs["encoder"]["bytes"],
                         "runtime": folder_bytes(ort_out), "total": 0}
    atomic_write_json(out / MANIFEST, manifest)
    manifest["sizes"]["total"] = folder_bytes(out)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest
