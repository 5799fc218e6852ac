"""Collect the tokenizer candidates of a GPU session (tools/plans/tok1*.sh results) into one JSON
and a PSNR-by-frame figure.

    python tools/tokenizer_report.py RES_DIR --json docs/results/x.json --plot docs/img/x.png \
        --commit C --date D [--names a,conv,c32]
"""

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _last(path: Path, key: str) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if key in r]
    return rows[-1] if rows else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("res")
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot", required=True)
    ap.add_argument("--names", default="a,conv,c32")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--date", required=True)
    a = ap.parse_args()
    res = Path(a.res)
    out = {"commit": a.commit, "date": a.date, "candidates": {}}
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    for name in a.names.split(","):
        short = json.loads((res / f"eval-tok-{name}.json").read_text())
        long = json.loads((res / f"long-tok-{name}.json").read_text())
        train = _last(res / f"metrics-tok-{name}.jsonl", "frames_per_s")
        world = {}
        for tag in ("world2", "world"):
            f = res / f"eval-{tag}-{name}.json"
            if f.exists():
                w = json.loads(f.read_text())
                world = {"eval": tag, "rollout_psnr": w["rollout"]["psnr"], "rollout_ssim": w["rollout"]["ssim"],
                         "copy_last_psnr": w["rollout"].get("copy_last", {}).get("psnr"),
                         "clips": w["rollout"].get("clips")}
                break
        pp = np.array(long["reconstruction"]["psnr_per_position"])
        out["candidates"][name] = {
            "config": short.get("world", {}),
            "test_16": {k: short["reconstruction"][k] for k in ("clips", "psnr", "ssim")},
            "test_256": {"clips": long["reconstruction"]["clips"], "psnr": long["reconstruction"]["psnr"],
                         "ssim": long["reconstruction"]["ssim"], "first16": float(pp[:16].mean()),
                         "last16": float(pp[-16:].mean()), "psnr_per_position": pp.tolist()},
            "train": {k: train.get(k) for k in ("step", "frames_per_s", "elapsed_s", "max_mem_gb")},
            "dynamics_on_latents": world,
        }
        window = 8
        smooth = np.convolve(pp, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(pp) + 1), smooth, label=f"{name}: {short['reconstruction']['psnr']:.2f} dB (16-frame clips)")
    ax.set_xlabel("frame index in a 256-frame clip (mean of 8)")
    ax.set_ylabel("PSNR (dB), CoinRun test levels")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    FigureCanvasAgg(fig)
    Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.plot, dpi=110, bbox_inches="tight")
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    for n, c in out["candidates"].items():
        print(n, round(c["test_16"]["psnr"], 2), round(c["test_16"]["ssim"], 4), round(c["test_256"]["first16"], 2),
              round(c["test_256"]["last16"], 2), c["train"], {k: v for k, v in c["dynamics_on_latents"].items()})


if __name__ == "__main__":
    main()
