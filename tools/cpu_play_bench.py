"""Frames/s of batch-1 play on this CPU: the PyTorch world vs the same world through ONNX Runtime
(`driftless play --backend torch|onnx`), alternating in one run, for each thread count.
`--fused-commit` adds both backends with that sampling option on (one backbone pass fewer per frame);
`--window N` plays both with an N-frame window (`driftless play --window N`); `--int8` adds ONNX
Runtime on the export with quantised linear layers (`driftless play --backend onnx --weights int8`).
`--also W1,W2` adds ONNX Runtime on other worlds (e.g. copies with other sampling settings in world.json,
`driftless world sampling`), timed in the same rounds: this machine's speed drifts by a third within minutes.

    python tools/cpu_play_bench.py [WORLD] --threads 1,2 --frames 150 --rounds 3 [--fused-commit] [--int8] --json out.json
"""

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import date

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world", nargs="?", default="coinrun")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fused-commit", action="store_true", help="also time both backends with fused_commit on")
    ap.add_argument("--window", type=int, help="frames the dynamics attends to (default: the world's own)")
    ap.add_argument("--int8", action="store_true", help="also time ONNX Runtime on the int8 export")
    ap.add_argument("--no-torch", action="store_true", help="time ONNX Runtime only")
    ap.add_argument("--also", default="", help="comma-separated world folders also timed through ONNX Runtime")
    ap.add_argument("--json")
    a = ap.parse_args()

    from driftless.cli.play import choose_backend
    from driftless.export.onnx import default_start_frame, export_onnx
    from driftless.world.onnx_play import OnnxWorld
    from driftless.world.world import load

    world = load(a.world)
    steps = world.sampling.steps
    _, folder = choose_backend("onnx", "cpu", world, steps, a.window)
    int8_folder = choose_backend("onnx", "cpu", world, steps, a.window, "int8")[1] if a.int8 else None
    own = {"window": a.window} if a.window else {}
    fused_folder = folder.with_name(folder.name + "-fused")
    if a.fused_commit and not (fused_folder / "manifest.json").is_file():
        export_onnx(world, fused_folder, steps=steps, fused_commit=True, log=lambda *x: None, **own)
    start = default_start_frame(world)[None]
    also = {}
    for path in [p for p in a.also.split(",") if p]:
        other = load(path)
        also[path] = (other, choose_backend("onnx", "cpu", other, other.sampling.steps, a.window)[1])
    rows = []
    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        backends = {"torch": (world, own), "onnx": (OnnxWorld(world, folder, threads=threads), {})}
        if a.int8:
            backends["onnx-int8"] = (OnnxWorld(world, int8_folder, threads=threads), {})
        if a.fused_commit:
            backends.update({"torch-fused": (world, {"fused_commit": True, **own}),
                             "onnx-fused": (OnnxWorld(world, fused_folder, threads=threads), {})})
        for path, (other, other_folder) in also.items():
            backends[f"onnx:{path}"] = (OnnxWorld(other, other_folder, threads=threads), {})
        if a.no_torch:
            backends = {k: v for k, v in backends.items() if not k.startswith("torch")}
        fps = {k: [] for k in backends}
        for _ in range(a.rounds):
            for name, (w, opts) in backends.items():
                w.reset(start, seed=0, **opts)
                for i in range(5):
                    w.step(i % world.num_actions)
                t = time.perf_counter()
                for i in range(a.frames):
                    w.step(i % world.num_actions)
                fps[name].append(a.frames / (time.perf_counter() - t))
        for name, v in fps.items():
            rows.append({"backend": name, "threads": threads, "fps_median": float(np.median(v)), "fps_all": v})
            rounds = ", ".join(f"{x:.1f}" for x in v)
            print(f"{name:11s} {threads} thread(s): {np.median(v):5.1f} frames/s (rounds: {rounds})")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"world": a.world, "steps": steps, "window": world.dynamics.check_window(a.window), "frames": a.frames,
           "rounds": a.rounds, "rows": rows,
           "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
           "onnxruntime": __import__("onnxruntime").__version__, "commit": commit, "date": str(date.today()),
           "load_average_after": os.getloadavg()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
