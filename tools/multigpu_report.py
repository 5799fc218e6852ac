"""Summarise a multi-GPU plan's results (tools/plans/mgpu1.sh) into docs/results/multigpu.json.

    python tools/multigpu_report.py RES_DIR OUT.json --device "2x NVIDIA H200" --commit 8467420

RES_DIR holds metrics-mg-{tok,dyn}{1,N}.jsonl (the scaling runs), metrics-mg-r{N,1}.jsonl (a run
stopped halfway on N GPUs and resumed on N and on 1), mg-*.log (the trainers' summary lines, with
ranks_in_sync) and mg-resume.json (relative L2 difference of the two resumed runs' weights).
Frames/s per run: the median over the log records after the first (which holds the compile).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def _records(path: Path) -> list[dict]:
    return [r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())
            if r.get("split") == "train"]


def _summaries(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(m) for m in re.findall(r"^\{.*\"stopped\".*\}$", log.read_text(), flags=re.M)]


def _run(res: Path, name: str, after_step: int = 0) -> dict:
    recs = [r for r in _records(res / f"metrics-{name}.jsonl") if r["step"] > after_step][1:]
    fps = [r["frames_per_s"] for r in recs]
    sums = _summaries(res / f"{name}.log")
    return {"frames_per_s": statistics.median(fps), "records": len(fps), "final_step": recs[-1]["step"],
            "final_loss": recs[-1]["loss"],
            "mean_loss": statistics.mean(r["loss"] for r in recs), "max_mem_gb": recs[-1].get("max_mem_gb"),
            "ranks_in_sync": all(s.get("ranks_in_sync", True) for s in sums) if sums else None,
            "weights_checksums": sorted({s["weights_checksum"] for s in sums})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("res", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--device", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--date", default="2026-11-29")
    ap.add_argument("--gpus", type=int, default=2)
    args = ap.parse_args()
    n = args.gpus
    scaling = {}
    for stage, key in (("tokenizer", "tok"), ("dynamics", "dyn")):
        one, many = _run(args.res, f"mg-{key}1"), _run(args.res, f"mg-{key}{n}")
        scaling[stage] = {"preset": "base", "1": one, str(n): many,
                          "speedup": many["frames_per_s"] / one["frames_per_s"],
                          "efficiency": many["frames_per_s"] / (n * one["frames_per_s"])}
    resume = {"stopped_at_step": 100, "final_step": 200,
              f"resumed_on_{n}": _run(args.res, f"mg-r{n}", after_step=100),
              "resumed_on_1": _run(args.res, "mg-r1", after_step=100),
              **json.loads((args.res / "mg-resume.json").read_text())}
    out = {"bench": "multigpu", "device": args.device, "commit": args.commit, "date": args.date,
           "scaling": scaling, "resume": resume}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for stage, s in scaling.items():
        print(f"{stage:9s} 1 GPU {s['1']['frames_per_s']:8.0f} frames/s   {n} GPUs {s[str(n)]['frames_per_s']:8.0f}"
              f"   speedup {s['speedup']:.2f}  efficiency {s['efficiency']:.1%}  in sync {s[str(n)]['ranks_in_sync']}")
    print(f"resume: relative L2 difference of the weights {resume['relative_l2_difference']:.4f}; mean loss after "
          f"the resume {resume[f'resumed_on_{n}']['mean_loss']:.4f} ({n} GPUs) / {resume['resumed_on_1']['mean_loss']:.4f} (1 GPU)")


if __name__ == "__main__":
    main()
