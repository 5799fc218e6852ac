"""Benchmarks (`driftless bench train|generate`): timed with warm-up and repeats, median and
interquartile range reported, CUDA synchronised around every timed region.

Training throughput uses the trainer's own components for a model preset: the `Trainer`
object (its optimizer, autocast dtype, optional torch.compile wrapper, EMA update) runs the
same forward / backward / clip / step / EMA sequence as `Trainer.fit`, on synthetic batches
of the stage's shape (data loading is not measured). FLOPs of one step (forward + backward)
are counted with torch.utils.flop_counter.FlopCounterMode; attention on CPU is counted too
(its CPU kernel has no formula in torch, one is given here). Counted FLOPs are executed FLOPs:
causal attention is counted as full attention, as torch does.

    TFLOP/s = FLOPs per step / median step time;  MFU = TFLOP/s / peak of the device.

Peaks (dense, no sparsity) come from PEAK_TFLOPS for known GPUs at the precision in use
(bf16 autocast -> "bf16"; fp32 on CUDA -> "tf32", which the trainer enables), from
`peak_tflops` when declared, or on CPU from `measure_cpu_peak` (best fp32 matmul rate).

Generation speed: a world's `reset` then `step` per frame, batch 1 and batched. Each repeat
starts a new session and first fills the context window (untimed), so timed steps are in the
steady state of an unbounded session (sliding KV-cache window).
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from driftless.config import option
from driftless.runtime import default_device

# dense peak TFLOP/s by precision (vendor datasheets)
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0},
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6},
}


def peak_key(name: str) -> str | None:
    """Map torch.cuda.get_device_name() to a PEAK_TFLOPS entry."""
    n = name.upper()
    if "H100" in n:
        return "H100 PCIe" if "PCIE" in n else "H100 NVL" if "NVL" in n else "H100 SXM"
    for key in ("H200", "A100", "L40S"):
        if key in n:
            return key
    return None


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def stats(values) -> dict:
    """Median, interquartile range, min, max and count of a list of numbers."""
    v = np.asarray(values, dtype=np.float64)
    q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "iqr": float(q75 - q25),
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def measure_cpu_peak(size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 matmul rate of this process's threads, in TFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e12


def resolve_peak(device, precision: str, declared: float | None = None, measure: bool = False) -> dict:
    device = torch.device(device)
    if declared:
        return {"tflops": float(declared), "source": "declared"}
    if device.type == "cuda":
        key = peak_key(torch.cuda.get_device_name(device))
        if key:
            return {"tflops": PEAK_TFLOPS[key][precision], "source": f"table: {key} {precision} dense"}
        return {"tflops": None, "source": f"unknown GPU {torch.cuda.get_device_name(device)!r}: pass --peak-tflops"}
    if measure:
        return {"tflops": measure_cpu_peak(), "source": "measured: best fp32 1024x1024 matmul"}
    return {"tflops": None, "source": "cpu: pass --peak-tflops or --measure-peak"}


def peak_rss_gb() -> float:
    """The process's peak resident memory so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _cpu_attention_flops():
    """Flop formulas for the CPU attention kernels, which FlopCounterMode does not know."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        def fwd(q, k, v, *args, out_shape=None, **kwargs):
            return sdpa_flop_count(q, k, v)

        def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
            return sdpa_backward_flop_count(grad_out, q, k, v)

        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return mapping


def count_flops(fn) -> int:
    """FLOPs executed by fn() (forward and backward ops inside it)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        fn()
    return int(counter.get_total_flops())


# ---- training throughput --------------------------------------------------------------------------
@dataclass
class TrainBenchConfig:
    stage: str = "tokenizer"  # a training stage with a synthetic batch (train.specs.STAGES), e.g. dynamics
    preset: str = option("debug", help="model preset: debug | small | base (default debug)")
    batch_size: int = option(8, help="clips per step")
    clip_len: int | None = option(None, help="frames per clip (default: the stage's, as in training)")
    steps: int = option(10, help="timed steps (default %(default)s)")
    warmup: int = option(3, help="untimed steps first (default %(default)s)")
    device: str | None = option(None, help="cpu | cuda | cuda:N (default: cuda when available)")
    precision: str = option("auto", choices=("auto", "fp32", "bf16"),
                            help="as the trainer: auto (bf16 on GPU) | fp32 | bf16")
    compile: bool | None = option(None, help="torch.compile the model, as `train` does (default: on with CUDA, "
                                             "off on the CPU)")
    peak_tflops: float | None = option(None, help="the device's peak TFLOP/s for MFU (overrides the table)")
    measure_peak: bool | None = option(None, help="measure the device's peak with a large matmul in this run "
                                                  "(default: on with CUDA; on the CPU a fp32 1024^3 product)")
    reference: bool | None = option(None, help="also time a plain ST-transformer of the stage's shape in the same "
                                               "run (default: on with CUDA): the ratio to it travels between "
                                               "machines")
    profile: str | None = option(None, metavar="DIR", help="profile 5 more steps with torch.profiler: a Chrome "
                                                           "trace in DIR and the top kernels")
    data: str | None = option(None, help="also time batches of the stage's real data stream from this store (or "
                                         "latent cache), as `train` reads it: is the data the bottleneck?")
    workers: int = option(4, help="DataLoader worker processes for --data")
    data_on_device: str = option("auto", choices=("auto", "yes", "no"),
                                 help="for --data: the store in GPU memory, as `train --data-on-device`")
    seed: int = option(0, help="seed of the weights and the synthetic batch")
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from driftless.train.specs import get_stage

        get_stage(self.stage)  # a clear error for an unknown stage
        if self.steps < 1 or self.warmup < 0 or self.batch_size < 1:
            raise ValueError(f"need steps >= 1, warmup >= 0, batch_size >= 1, got {self.steps}, {self.warmup}, "
                             f"{self.batch_size}")


def _tokens_per_frame(stage: str, cfg) -> int:
    from driftless.train.specs import get_stage

    return get_stage(stage).tokens_per_frame(cfg)


def bench_train(cfg: TrainBenchConfig) -> dict:
    from driftless.config import override, to_dict
    from driftless.models import registry
    from driftless.models.common import num_params
    from driftless.train.distributed import setup
    from driftless.train.specs import get_stage
    from driftless.train.trainer import LossModule, TrainConfig, Trainer

    info = setup(cfg.device)
    device = info.device
    spec = get_stage(cfg.stage)
    if spec.synthetic_batch is None:
        raise ValueError(f"stage {cfg.stage!r} has no synthetic batch to benchmark with")
    torch.manual_seed(cfg.seed)
    mcfg = registry.preset(cfg.stage, cfg.preset)
    if cfg.overrides:
        mcfg = override(mcfg, cfg.overrides)
    mcfg, clip_len = spec.with_clip_len(mcfg, cfg.clip_len)
    model = registry.build(cfg.stage, mcfg)
    tcfg = TrainConfig(steps=cfg.warmup + cfg.steps, batch_size=cfg.batch_size, precision=cfg.precision,
                       compile=cfg.compile, warmup=1, save_every=0, val_every=0, seed=cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, tcfg, tmp, info, cfg.stage, to_dict(mcfg), frames_per_sample=clip_len)
    gen = torch.Generator().manual_seed(cfg.seed)
    batch = {k: v.to(device) for k, v in spec.synthetic_batch(mcfg, cfg.batch_size, clip_len, gen).items()}
    amp = dict(device_type=device.type, dtype=trainer.autocast_dtype, enabled=trainer.autocast_dtype is not None)

    def step() -> None:  # the trainer's own step: forward, backward, clip, update, EMA
        trainer.train_step(batch)

    trainer.model.train()
    counter_module = LossModule(trainer.model)  # uncompiled: FlopCounterMode sees every op

    def fwd_bwd() -> None:
        with torch.autocast(**amp):
            loss, _ = counter_module(batch)
        loss.backward()
        trainer.optimizer.zero_grad(set_to_none=True)

    flops = count_flops(fwd_bwd)
    for _ in range(cfg.warmup):
        step()
    sync(device)
    if device.type == "cuda":  # peaks of this run only, not of an earlier stage in the process
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(cfg.steps):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    precision = "bf16" if trainer.autocast_dtype == torch.bfloat16 else ("tf32" if device.type == "cuda" else "fp32")
    profile = None
    if cfg.profile:
        profile = _profile(step, device, cfg.profile, f"{cfg.stage}-{cfg.preset}-b{cfg.batch_size}")
    measure = cfg.measure_peak if cfg.measure_peak is not None else device.type == "cuda"
    datasheet = resolve_peak(device, precision) if device.type == "cuda" else {"tflops": None, "source": "cpu"}
    if cfg.peak_tflops:
        peak = {"tflops": float(cfg.peak_tflops), "source": "declared"}
    elif measure:
        from driftless.eval.reference import measure_matmul_peak

        peak = measure_matmul_peak(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    else:
        peak = datasheet
    data = _time_data(spec, cfg, mcfg, clip_len, info) if cfg.data else None
    reference = None
    if cfg.reference if cfg.reference is not None else device.type == "cuda":
        from driftless.eval.reference import bench_reference, reference_shape

        shape = reference_shape(model, _tokens_per_frame(cfg.stage, mcfg), clip_len, cfg.batch_size)
        reference = bench_reference(shape, device, cfg.precision, trainer.compiled, steps=cfg.steps,
                                    warmup=cfg.warmup, seed=cfg.seed)
    st = stats(times)
    frames = cfg.batch_size * clip_len
    tokens = frames * _tokens_per_frame(cfg.stage, mcfg)
    achieved = flops / st["median"] / 1e12
    memory = ({"peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
               "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30}
              if device.type == "cuda" else {"peak_rss_gb": peak_rss_gb(), "note": "process high-water mark"})
    return {
        "stage": cfg.stage, "preset": cfg.preset, "parameters": num_params(model), "batch_size": cfg.batch_size,
        "clip_len": clip_len, "tokens_per_frame": _tokens_per_frame(cfg.stage, mcfg), "precision": precision,
        "step_s": st,
        "frames_per_s": {k: frames / st[q] for k, q in (("median", "median"), ("q25", "q75"), ("q75", "q25"))},
        "tokens_per_s": {k: tokens / st[q] for k, q in (("median", "median"), ("q25", "q75"), ("q75", "q25"))},
        "flops_per_step": flops, "tflops": achieved, "peak": peak,
        "mfu": achieved / peak["tflops"] if peak["tflops"] else None,
        "datasheet_peak": datasheet,
        "mfu_datasheet": achieved / datasheet["tflops"] if datasheet["tflops"] else None,
        "reference": reference,
        "reference_mfu": reference["tflops"] / peak["tflops"] if reference and peak["tflops"] else None,
        "vs_reference": achieved / reference["tflops"] if reference else None,
        "compiled": trainer.compiled, "profile": profile, "data": data,
        "data_bound": data["batch_s"]["median"] > st["median"] if data else None,
        "memory": memory, "config": asdict(cfg), "model_config": to_dict(mcfg),
    }


def _time_data(spec, cfg: TrainBenchConfig, mcfg, clip_len: int, info, batches: int = 20) -> dict:
    """Seconds per batch of the stage's real data stream, read as training reads it (DataLoader
    workers, or the store resident in device memory), each batch on the device."""
    from driftless.train.specs import StageArgs
    from driftless.train.trainer import TrainConfig, _to_device

    if spec.data is None:
        raise ValueError(f"stage {cfg.stage!r} has no data stream to time (it trains in memory: `{spec.verb}`)")
    args = StageArgs(kind=cfg.stage, data=cfg.data, out="", train=TrainConfig(batch_size=cfg.batch_size, seed=cfg.seed),
                     clip_len=clip_len, workers=cfg.workers, device=str(info.device), data_on_device=cfg.data_on_device)
    t = time.perf_counter()
    stream, _ = spec.data(args, mcfg, clip_len, info)
    it = stream(0)
    _to_device(next(it), info.device)
    sync(info.device)
    first = time.perf_counter() - t
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        _to_device(next(it), info.device)
        sync(info.device)
        times.append(time.perf_counter() - t)
    return {"batch_s": stats(times), "setup_and_first_batch_s": first, "source": cfg.data,
            "frames_per_s": cfg.batch_size * clip_len / stats(times)["median"]}


def _profile(step, device, folder: str, name: str, steps: int = 5, top: int = 20) -> dict:
    """Run `steps` more steps under torch.profiler: a Chrome trace in `folder` and the kernels
    that take the most device (or CPU) time, as a table in the result."""
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    Path(folder).mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    trace = str(Path(folder) / f"{name}.json")
    prof.export_chrome_trace(trace)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    if device.type == "cuda":  # the kernels themselves (operators carry their kernels' time too)
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    table = [{"name": e.key[:120], "calls_per_step": e.count / steps, "ms_per_step": getattr(e, key) / steps / 1e3,
              "share": getattr(e, key) / total} for e in rows]
    return {"trace": trace, "time_per_step_ms": total / steps / 1e3, "kernels_per_step": sum(e.count for e in events)
            / steps, "top": table}


# ---- generation speed -----------------------------------------------------------------------------
@dataclass
class GenerateBenchConfig:
    world: str = "debug"  # a world folder, a shipped name, "debug" or "random:PRESET" (random weights)
    batch_sizes: list = field(default_factory=lambda: [1, 16])
    frames: int = option(32, help="timed frames per repeat (default %(default)s)")
    warmup: int = option(8, help="untimed frames of a first session (default %(default)s)")
    repeats: int = option(5, help="sessions timed per batch size (default %(default)s)")
    context: int = option(1, help="context frames at reset")
    device: str | None = option(None, help="cpu | cuda | cuda:N (default: cuda when available)")
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA)
    cuda_graphs: bool | None = option(None, help="replay each frame as a CUDA graph, as `play` does (default: on "
                                                 "with CUDA)")
    seed: int = option(0, help="seed of the context frames, actions and sampling noise")
    sampling: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.repeats < 1 or self.context < 1 or not self.batch_sizes:
            raise ValueError(f"need frames, repeats, context >= 1 and batch sizes, got {self}")
        if any(int(b) < 1 for b in self.batch_sizes):
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_sizes}")


def random_world(preset: str = "debug", device="cpu", seed: int = 0):
    """A World of random-weight components of one preset, built in memory (for speed only:
    compute does not depend on the weights). The dynamics takes the tokenizer's latent shape
    and the LAM's action count."""
    from driftless.config import override
    from driftless.models import registry
    from driftless.models.compose import dynamics_fields
    from driftless.world.world import World

    torch.manual_seed(seed)
    tok_cfg = registry.preset("tokenizer", preset)
    lam_cfg = registry.preset("lam", preset)
    dyn_cfg = override(registry.preset("dynamics", preset),
                       dynamics_fields(tok_cfg.latent_dim, tok_cfg.grid, lam_cfg.num_actions))
    parts = [registry.build(kind, cfg).to(device).eval()
             for kind, cfg in (("tokenizer", tok_cfg), ("lam", lam_cfg), ("dynamics", dyn_cfg))]
    meta = {"name": f"random:{preset}", "sampling": {"steps": dyn_cfg.diffusion.sampling_steps}}
    return World(*parts, meta=meta, device=device)


def load_bench_world(name: str, device):
    """'debug' or 'random:PRESET' (random weights), else a world folder or shipped name."""
    from driftless.world.world import load

    if name == "debug":
        name = "random:debug"
    if name.startswith("random:"):
        return random_world(name.split(":", 1)[1], device)
    return load(name, device=device)


def bench_generate(cfg: GenerateBenchConfig, world=None) -> dict:
    import contextlib

    device = torch.device(default_device(cfg.device))
    world = world if world is not None else load_bench_world(cfg.world, device)
    device = world.device
    if world.dynamics is None:
        raise ValueError(f"{cfg.world} has no dynamics model to generate with")
    world.cuda_graphs = cfg.cuda_graphs
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.precision == "bf16" and device.type == "cuda"
           else contextlib.nullcontext())
    window = world.sampling.updated(**cfg.sampling).window or world.dynamics.cfg.context_window
    h, w = world.resolution
    rng = np.random.default_rng(cfg.seed)
    results = []
    for b in [int(x) for x in cfg.batch_sizes]:
        ctx = rng.integers(0, 256, size=(b, cfg.context, h, w, 3), dtype=np.uint8)

        def action():
            return rng.integers(0, world.num_actions, size=b) if world.dynamics.cfg.num_actions else None

        with amp:
            world.reset(ctx, seed=cfg.seed, **cfg.sampling)
            for _ in range(cfg.warmup):
                world.step(action())
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step_times, reset_times, repeat_fps = [], [], []
        for r in range(cfg.repeats):
            with amp:
                sync(device)
                t = time.perf_counter()
                world.reset(ctx, seed=cfg.seed + r, **cfg.sampling)
                sync(device)
                reset_times.append(time.perf_counter() - t)
                for _ in range(max(0, window - cfg.context)):  # fill the window: steady state
                    world.step(action())
                total = 0.0
                for _ in range(cfg.frames):
                    a = action()
                    sync(device)
                    t = time.perf_counter()
                    world.step(a)  # returns host frames: includes the device -> host copy
                    sync(device)
                    dt = time.perf_counter() - t
                    step_times.append(dt)
                    total += dt
            repeat_fps.append(b * cfg.frames / total)
        st = stats(step_times)
        graph = getattr(world._session, "graph", None)
        entry = {"batch": b, "step_s": st, "reset_s": stats(reset_times),
                 "fps_per_session": 1.0 / st["median"], "fps_total": b / st["median"],
                 "fps_total_repeats": stats(repeat_fps),
                 "cuda_graph": bool(graph is not None and graph.captured),
                 "cuda_graph_error": graph.error if graph is not None else None}
        entry["memory"] = ({"peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30}
                           if device.type == "cuda" else {"peak_rss_gb": peak_rss_gb(),
                                                          "note": "process high-water mark"})
        results.append(entry)
    opts = asdict(world.sampling.updated(**cfg.sampling))
    return {"world": cfg.world, "resolution": [h, w], "num_actions": world.num_actions, "window": window,
            "sampling": opts, "results": results, "config": asdict(cfg)}
