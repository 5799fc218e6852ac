"""Copy a checkpoint's EMA weights (or its weights) as float16, without optimizer state, to carry a
run between GPU sessions (continue with `--init-from OUT`).

    python tools/fp16_checkpoint.py RUN/checkpoint OUT
"""

import sys

import torch

from driftless import checkpoint


def main(src: str, dst: str) -> None:
    header = checkpoint.read_header(src)
    state = checkpoint.read_weights(src, ema=True)
    meta = {**header.get("meta", {}), "fp16_copy_of": str(src)}
    checkpoint.save(dst, header["kind"], header["config"], state, meta=meta, dtype=torch.float16)
    print(f"wrote {dst} ({header['kind']}, {sum(v.numel() for v in state.values()) / 1e6:.2f}M values, fp16)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
