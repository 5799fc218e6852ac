"""driftless export onnx|web WORLD --out DIR: play a world without Python (src/driftless/export/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("world", nargs="?", default="coinrun", help="world folder or shipped name (default: coinrun)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--force", action="store_true", help="write into an --out that already holds something")
    p.add_argument("--steps", type=int, help="DDIM steps per frame, unrolled in the step graph (default: the world's)")
    p.add_argument("--fused-commit", action=argparse.BooleanOptionalAction,
                   help="the last denoising pass appends the frame to the context: one backbone pass fewer per frame "
                        "(default: the world's sampling option)")
    p.add_argument("--window", type=int,
                   help="frames the dynamics attends to, the new one included, baked into the graphs' ring buffers: "
                        "fewer play faster and remember less of the level (default: the world's own; from 1 to it)")
    p.add_argument("--weights", choices=["auto", "fp16", "fp32", "int8"], default="auto",
                   help="auto (default): float16 where that loses nothing (the shipped world's weights are float16), "
                        "else float32; fp16: every large weight in float16 (lossy for float32 worlds); fp32; "
                        "int8: the step graph's linear layers quantised (int8 weights, uint8 inputs; lossy, faster "
                        "on a CPU)")
    p.add_argument("--check-frames", type=int,
                   help="frames of the numerical check against PyTorch (default: the context window + 8; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the check's noise and actions (default 0)")


def _summary(manifest: dict, out: str) -> None:
    c = manifest.get("check")
    summary = {"out": out, "bytes": manifest.get("sizes") or {g: v["bytes"] for g, v in manifest["graphs"].items()},
               "check": c}
    print(json.dumps(summary))


def _onnx(args: argparse.Namespace) -> int:
    from driftless.checkpoint import refuse_overwrite
    from driftless.export.onnx import export_onnx

    refuse_overwrite(args.out, args.force, "export")
    manifest = export_onnx(args.world, args.out, steps=args.steps, weights=args.weights,
                           check_frames=args.check_frames, seed=args.seed, fused_commit=args.fused_commit,
                           window=args.window)
    _summary(manifest, args.out)
    return 0


def _web(args: argparse.Namespace) -> int:
    from driftless.checkpoint import refuse_overwrite
    from driftless.export.web import ORT_VERSION, export_web

    # (an `export onnx` folder may be turned into the page in place: --onnx DIR --out DIR)
    if not (args.onnx and Path(args.onnx).resolve() == Path(args.out).resolve()):
        refuse_overwrite(args.out, args.force, "export")
    manifest = export_web(args.world, args.out, ort_dir=args.ort_dir, ort_version=args.ort_version or ORT_VERSION,
                          starts=args.start_frames, start_images=args.start or (), steps=args.steps,
                          weights=args.weights, check_frames=args.check_frames, seed=args.seed,
                          webgpu=not args.no_webgpu, onnx=args.onnx, fused_commit=args.fused_commit,
                          window=args.window)
    s = manifest["sizes"]
    print(f"wrote {args.out}: {s['total'] / 1e6:.1f} MB ({s['onnx'] / 1e6:.1f} MB of graphs, "
          f"{s['runtime'] / 1e6:.1f} MB of {manifest['runtime']['package']} {manifest['runtime']['version']})")
    print(f"serve it with any static file server, e.g.:  python -m http.server --directory {args.out} 8000"
          f"  (then open http://localhost:8000/)")
    _summary(manifest, args.out)
    return 0


ORT_PACKAGE = "onnxruntime-web"  # (its pinned version lives in export/web.py, imported only when run)


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a world to play without Python: ONNX graphs, or a static web page")
    verbs = p.add_subparsers(dest="export_verb", metavar="VERB", required=True)
    o = verbs.add_parser(
        "onnx", help="the encoder and one play frame as ONNX graphs, checked against PyTorch",
        description="Write encoder.onnx (a start image -> latents), step.onnx (one play frame: sample, commit, "
                    "decode, with the KV ring buffers and the noise as explicit inputs and outputs) and "
                    "manifest.json, then run them with ONNX Runtime against the PyTorch world on the same inputs "
                    "and noise. See docs/playing.md.")
    _common(o)
    o.set_defaults(func=_onnx)
    w = verbs.add_parser(
        "web", help="a static folder that plays the world in the browser (onnxruntime-web)",
        description=f"Write a self-contained static page (index.html, play.js, ui.js, the ONNX graphs, start frames and "
                    f"{ORT_PACKAGE}'s files) that plays the world with WebAssembly, or WebGPU where the browser has "
                    f"it. Serve the folder with any static file server.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  driftless export web coinrun --out coinrun-web\n"
               "  python -m http.server --directory coinrun-web 8000")
    _common(w)
    w.add_argument("--start-frames", type=int, default=4,
                   help="start frames: the first frames of this many CoinRun test levels (default 4; needs procgen)")
    w.add_argument("--start", action="append", metavar="IMAGE",
                   help="a start frame from a PNG or JPEG instead (repeatable)")
    w.add_argument("--ort-dir", help=f"an already downloaded {ORT_PACKAGE} package (its folder, dist/ or the .tgz of "
                                     f"npm pack) instead of npm pack")
    w.add_argument("--ort-version", help=f"{ORT_PACKAGE} version (default: the pinned one the page was tested with)")
    w.add_argument("--onnx", metavar="DIR", help="take the graphs from this `driftless export onnx` folder of the "
                                                 "world instead of exporting them again")
    w.add_argument("--no-webgpu", action="store_true",
                   help="leave out the WebGPU runtime (27 MB): the page runs on WebAssembly only")
    w.set_defaults(func=_web)
    return p
