"""Yardsticks for `driftless bench train`: the device's measured matmul peak, and a plain
reference transformer of a stage's shape timed in the same run.

MFU against a datasheet peak mixes two things: how well the chip runs dense matrix products
at all (clocks, power, the library) and how well our model uses it. Both yardsticks are
measured where the benchmark runs, so the ratio of the model's throughput to them travels
between machines:

* `measure_matmul_peak`: the best rate of large square products in the precision in use
  (bf16 on GPU: 8192^3; fp32 on CPU: 1024^3), median of repeats after warm-up.
* `ReferenceST`: the simplest ST-transformer of the same width, depth, heads, tokens per frame
  and clip length - pre-LayerNorm, spatial attention, causal temporal attention, one GELU MLP,
  scaled_dot_product_attention, no conditioning, no rotary embedding, no normalisation of
  queries and keys - trained by the same Trainer step (fused AdamW, clipping, EMA, precision,
  compilation) on random tokens with an MSE loss. What our model loses against it is overhead we add; what
  it loses against the matmul peak is the shape's (small widths, short attention sequences).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device, dtype: torch.dtype | None = None, size: int | None = None,
                        repeats: int = 10, warmup: int = 3) -> dict:
    """Median TFLOP/s of size^3 matrix products on random data (never zeros: they run faster)."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = size or (8192 if device.type == "cuda" else 1024)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    for _ in range(warmup):
        a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {"tflops": 2 * size**3 / med / 1e12, "source": f"measured: {size}^3 {str(dtype).replace('torch.', '')} "
            f"matmul, median of {repeats}", "size": size, "dtype": str(dtype).replace("torch.", "")}


@dataclass
class ReferenceShape:
    dim: int
    depth: int
    heads: int
    tokens: int  # per frame
    frames: int  # clip length
    batch: int
    mlp_ratio: float = 4.0


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv_s, self.out_s = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.qkv_t, self.out_t = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def _attend(self, x: torch.Tensor, qkv: nn.Linear, out: nn.Linear, causal: bool) -> torch.Tensor:
        # x: (N, L, D) -> (N, L, D)
        q, k, v = rearrange(qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.heads)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return out(rearrange(y, "n h l d -> n l (h d)"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]  # x: (b, t, s, d)
        h = rearrange(self.n1(x), "b t s d -> (b t) s d")
        x = x + rearrange(self._attend(h, self.qkv_s, self.out_s, False), "(b t) s d -> b t s d", b=b)
        h = rearrange(self.n2(x), "b t s d -> (b s) t d")
        x = x + rearrange(self._attend(h, self.qkv_t, self.out_t, True), "(b s) t d -> b t s d", b=b)
        return x + self.fc2(F.gelu(self.fc1(self.n3(x)), approximate="tanh"))


class ReferenceST(nn.Module):
    def __init__(self, shape: ReferenceShape):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(shape.dim, shape.heads, shape.mlp_ratio) for _ in range(shape.depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


def reference_shape(model: nn.Module, tokens: int, frames: int, batch: int) -> ReferenceShape:
    """The reference of a model: the width and heads of its widest ST-transformer, the depth of
    all of them together (a tokenizer's encoder and decoder), its tokens per frame and clip."""
    from driftless.nn.st_transformer import STTransformer

    stacks = [m for m in model.modules() if isinstance(m, STTransformer)]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no ST-transformer to take a reference shape from")
    widest = max(stacks, key=lambda m: m.cfg.dim)
    return ReferenceShape(dim=widest.cfg.dim, depth=sum(m.cfg.depth for m in stacks), heads=widest.cfg.heads,
                          tokens=tokens, frames=frames, batch=batch, mlp_ratio=widest.cfg.mlp_ratio)


class ReferenceModel(nn.Module):
    """The reference transformer as a trainable model: MSE of its output to a target."""

    def __init__(self, shape: ReferenceShape):
        super().__init__()
        self.net = ReferenceST(shape)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        loss = F.mse_loss(self.net(batch["x"]).float(), batch["target"])
        return loss, {}


def bench_reference(shape: ReferenceShape, device, precision: str = "auto", compile: bool | None = None,
                    steps: int = 10, warmup: int = 3, seed: int = 0) -> dict:
    """Train steps of the reference transformer through the same Trainer step (fused AdamW,
    clipping, EMA, autocast, compilation) as the stage it is compared with: step time (median),
    TFLOP/s, FLOPs per step."""
    from driftless.eval.bench import count_flops, stats
    from driftless.train.distributed import DistInfo
    from driftless.train.trainer import LossModule, TrainConfig, Trainer

    device = torch.device(device)
    torch.manual_seed(seed)
    model = ReferenceModel(shape)
    cfg = TrainConfig(steps=warmup + steps, batch_size=shape.batch, precision=precision, compile=compile, warmup=1,
                      save_every=0, val_every=0, seed=seed)
    trainer = Trainer(model, cfg, None, DistInfo(device=device), "reference", {}, progress=False)
    x = torch.randn(shape.batch, shape.frames, shape.tokens, shape.dim, device=device)
    batch = {"x": x, "target": torch.randn_like(x)}
    amp = dict(device_type=device.type, dtype=trainer.autocast_dtype, enabled=trainer.autocast_dtype is not None)

    def fwd_bwd() -> None:
        with torch.autocast(**amp):
            loss, _ = LossModule(trainer.model)(batch)
        loss.backward()
        trainer.optimizer.zero_grad(set_to_none=True)

    flops = count_flops(fwd_bwd)
    for _ in range(warmup):
        trainer.train_step(batch)
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        trainer.train_step(batch)
        _sync(device)
        times.append(time.perf_counter() - t)
    st = stats(times)
    return {"shape": asdict(shape), "parameters": sum(p.numel() for p in model.parameters()), "step_s": st,
            "flops_per_step": flops, "tflops": flops / st["median"] / 1e12,
            "frames_per_s": shape.batch * shape.frames / st["median"], "compiled": trainer.compiled}
