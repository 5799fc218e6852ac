"""Time attention variants (forward + backward) at the shapes of the ST-transformer's passes.

    PYTHONPATH=src python3 tools/attention_bench.py [--json out.json]

Shapes: the temporal pass (one sequence per spatial position, L = clip length, causal) and the
spatial pass (one sequence per frame) of the base/small presets at the batch sizes bench uses.
Variants: scaled_dot_product_attention with each backend, and driftless.nn.attention's
short_causal_attention compiled. Prints a table; --json writes it.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from driftless.nn.attention import short_causal_attention

SHAPES = {  # name: (N sequences, heads, L, head_dim, causal)
    "tok-base temporal": (48 * 256, 6, 8, 64, True),
    "dyn-base temporal": (128 * 65, 6, 16, 64, True),
    "tok-small temporal": (192 * 64, 4, 8, 40, True),
    "dyn-small temporal": (256 * 65, 4, 16, 52, True),
    "dyn-base spatial (65)": (128 * 16, 6, 65, 64, False),
    "dyn-base spatial (64)": (128 * 16, 6, 64, 64, False),
    "tok-base spatial": (48 * 8, 6, 256, 64, False),
}


def broadcast_causal_attention(q, k, v):
    """The same attention as products and sums over broadcast axes instead of einsum: inductor
    may fuse these into reduction kernels where it lowers einsum to batched GEMMs (a candidate
    for short sequences; measure before adopting)."""
    L = q.shape[-2]
    scores = (q.float().unsqueeze(-2) * k.float().unsqueeze(-3)).sum(-1) * q.shape[-1] ** -0.5  # (N, h, L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    p = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    return (p.unsqueeze(-1) * v.float().unsqueeze(-3)).sum(-2).to(v.dtype)


def time_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    short = torch.compile(short_causal_attention)
    bcast = torch.compile(broadcast_causal_attention)
    for name, (n, h, L, d, causal) in SHAPES.items():
        q, k, v = (torch.randn(n, h, L, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn(n, h, L, d, device="cuda", dtype=torch.bfloat16)
        variants = {f"sdpa:{b.name}": b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                                                  SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)}
        row = {"shape": name, "n": n, "heads": h, "len": L, "head_dim": d, "causal": causal}
        for label, backend in variants.items():
            def run(backend=backend):
                with sdpa_kernel(backend):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                out.backward(g)
            try:
                row[label] = time_ms(run)
            except RuntimeError as e:
                row[label] = None
                row[label + ":error"] = str(e).splitlines()[0][:80]
        if causal:
            def run_short():
                short(q, k, v).backward(g)
            row["short_compiled"] = time_ms(run_short)

            def run_bcast():
                bcast(q, k, v).backward(g)
            row["broadcast_compiled"] = time_ms(run_bcast)
        # the minimum traffic of the pass: q, k, v, out, and their gradients, bf16
        row["min_bytes_gb"] = 8 * n * h * L * d * 2 / 1e9
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
