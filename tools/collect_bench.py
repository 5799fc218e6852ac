"""Collect `driftless bench` JSON files into the summary tables of docs/results/.

    python tools/collect_bench.py train OUT.json --commit SHA --gpu-minutes M FILE.json ...
    python tools/collect_bench.py generate OUT.json --commit SHA --gpu-minutes M FILE.json ...

One row per result: preset, stage, parameters, batch, frames/s, TFLOP/s, MFU against the peak
measured in the same run, the plain reference transformer's MFU beside it, steps, date (train);
world, batch, frames/s per session and in total, CUDA graph on or off (generate). The commit is
given because a tree copied to a GPU machine may carry a stale .git.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def train_rows(doc: dict, name: str) -> list[dict]:
    rows = []
    for r in doc["results"]:
        cfg = r["config"]
        rows.append({
            "stage": r["stage"], "preset": r["preset"], "parameters": r["parameters"], "batch": r["batch_size"],
            "clip_len": r["clip_len"], "frames_per_s": round(r["frames_per_s"]["median"], 1),
            "tflops": round(r["tflops"], 2), "mfu": round(r["mfu"], 4) if r["mfu"] is not None else None,
            "peak_tflops_measured": round(r["peak"]["tflops"], 1),
            "reference_tflops": round(r["reference"]["tflops"], 2) if r.get("reference") else None,
            "reference_mfu": round(r["reference_mfu"], 4) if r.get("reference_mfu") else None,
            "vs_reference": round(r["vs_reference"], 3) if r.get("vs_reference") else None,
            "compiled": r.get("compiled"), "precision": r["precision"], "steps": cfg["steps"],
            "step_ms": round(r["step_s"]["median"] * 1e3, 2), "peak_memory_gb": round(
                r["memory"].get("peak_allocated_gb", 0.0), 2), "date": doc["info"]["date"],
            "device": doc["info"]["device_name"], "torch": doc["info"]["torch"], "file": name,
        })
    return rows


def generate_rows(doc: dict, name: str) -> list[dict]:
    return [{"world": doc["world"], "batch": e["batch"], "fps_per_session": round(e["fps_per_session"], 1),
             "fps_total": round(e["fps_total"], 1), "ms_per_step": round(e["step_s"]["median"] * 1e3, 2),
             "cuda_graph": e.get("cuda_graph"), "steps": doc["sampling"]["steps"],
             "peak_memory_gb": round(e["memory"].get("peak_allocated_gb", 0.0), 2), "date": doc["info"]["date"],
             "device": doc["info"]["device_name"], "torch": doc["info"]["torch"], "file": name}
            for e in doc["results"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["train", "generate"])
    ap.add_argument("out")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--gpu-minutes", type=float, required=True, help="device minutes the runs took")
    ap.add_argument("--command", default="", help="the command that made the files")
    args = ap.parse_args()
    rows = []
    for f in args.files:
        doc = json.loads(Path(f).read_text())
        rows += (train_rows if args.kind == "train" else generate_rows)(doc, Path(f).name)
    out = {"bench": args.kind, "commit": args.commit, "gpu_minutes": args.gpu_minutes, "command": args.command,
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {len(rows)} rows")


if __name__ == "__main__":
    main()
