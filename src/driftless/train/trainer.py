"""One training loop for every stage (tokenizer, LAM, dynamics, ...): CPU, one GPU or torchrun.

A model trains here if it has
    training_loss(batch) -> (loss tensor, {name: scalar tensor})
and optionally
    before_train_step() -> None   (host-side bookkeeping, called outside compiled code)
    after_train_step() -> None    (after the update, outside compiled code: changes to the
                                  weights the step itself must not see, as dead VQ codes)
    eager_step: bool              (read after before_train_step: true for a step that should run
                                  uncompiled, as the LAM's one k-means step - compiling a graph
                                  used once costs more than it saves)
    unused_parameters: bool       (true when some steps' loss leaves parameters out, as the LAM's
                                  codebook in its VQ warm-up: DDP then looks for them every step,
                                  and leaves their gradient None as one process does).
Validation, optional, is a function validation(model, batch) -> ({name: float}, image uint8
(H, W, 3) or None) given by the stage (its StageSpec, train/specs.py), or else the model's own
`validation(batch)` method if it has one.

The loop: AdamW (no decay on 1-D parameters), linear warm-up then cosine decay, gradient
clipping, EMA weights, bf16 autocast on GPU, optional torch.compile, DDP under torchrun.
Randomness is re-seeded from (seed, rank, step) every step and the data stream is a pure
function of the number of samples consumed, so resuming from a checkpoint continues exactly
as if training had never stopped. A non-finite loss or gradient skips the step (logged); too
many in a row stop training with the last good checkpoint kept.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from driftless import checkpoint
from driftless.config import normalized, option
from driftless.train import compile_cache
from driftless.train.distributed import DistInfo, all_reduce_mean, any_rank, barrier, max_over_ranks


@dataclass
class TrainConfig:
    """How to train (each field is a flag of `driftless train STAGE`, see cli/train.py)."""

    steps: int = option(20000, help="optimizer steps (default %(default)s)")
    batch_size: int = option(32, help="clips per step per process")
    lr: float = option(3e-4, help="peak learning rate, reached after the warm-up")
    min_lr: float = option(3e-5, help="learning rate at the end of the cosine decay")
    warmup: int = option(500, help="steps of linear learning-rate warm-up")
    weight_decay: float = option(0.05, help="AdamW weight decay (not on 1-D parameters)")
    beta1: float = option(0.9, help="AdamW beta1")
    beta2: float = option(0.95, help="AdamW beta2")
    grad_clip: float = option(1.0, help="clip the gradient norm to this")
    ema_decay: float = option(0.999, help="decay of the EMA weights")
    seed: int = option(0, help="seed of the initial weights, the data order and the noise")
    precision: str = option("auto", choices=("auto", "fp32", "bf16"),
                            help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16")
    compile: bool | None = option(None, help="torch.compile the model (default: on with CUDA, off on the CPU)")
    compile_scope: str = option("blocks", choices=("blocks", "model"),
                                help="what --compile compiles: blocks (default) each repeated block (the "
                                     "ST-transformer's), one compiled graph serving every block of a shape - "
                                     "about a third of the compile time of the whole model (benchmarks 5.8) - "
                                     "or model, the whole loss as one graph (models without such blocks: always)")
    compile_cache: str | None = option(None, metavar="FILE",
                                       help="torch.compile artifacts: read before compiling when FILE exists, "
                                            "rewritten after training; carry it to a fresh machine of the same GPU "
                                            "kind and PyTorch version to skip most of each stage's compile time "
                                            "(unpickled by PyTorch: only a file you wrote)")
    log_every: int = option(50, help="steps between training log lines in metrics.jsonl")
    val_every: int = option(1000, help="steps between validations (0: never)")
    save_every: int = option(1000, help="steps between checkpoints (0: only at the end)")
    max_minutes: float = option(0.0, help="stop and save after this many minutes (train in chunks; "
                                          "continue with --resume)")
    # the cosine schedule laid over time instead of steps (for jobs sharing a GPU at unknown
    # speed); not bitwise reproducible
    time_budget: float = option(0.0, help="train for this many minutes, laying the cosine schedule over time "
                                          "instead of steps (--steps becomes an upper bound); useful when jobs "
                                          "share a GPU")
    max_nonfinite: int = option(20, help="consecutive skipped (non-finite) steps before giving up")
    stop_after: int = option(0, help="stop and save after this many steps of this invocation (the schedule "
                                     "still spans --steps; continue with --resume)")
    tensorboard: bool = option(False, help="also log scalars for TensorBoard under OUT/tensorboard "
                                           "(pip install tensorboard)")


class LossModule(nn.Module):
    """Routes forward() to training_loss() so DDP and torch.compile see a plain forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        return self.model.training_loss(batch)


def region_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks `--compile-scope blocks` compiles: modules whose class sets
    `compile_region = True` (the ST-transformer's blocks)."""
    return [m for m in model.modules() if getattr(type(m), "compile_region", False)]


def compile_regions(blocks: list[nn.Module], on: bool = True) -> None:
    """Compile each block in place (`nn.Module.compile`), or (on=False) put it back to eager.
    Blocks of one class and shape share their compiled graph (weights are graph inputs), so the
    compile cost is about one block's, not the whole model's. Released after training, so that the
    model leaves the Trainer as it came (encoding latents, evaluation: other shapes, no recompiles)."""
    for m in blocks:
        if on:
            m.compile(dynamic=False)
        else:
            m._compiled_call_impl = None  # what nn.Module.compile set (no public way back)


def lr_at(step: int, cfg: TrainConfig, time_fraction: float | None = None) -> float:
    """Linear warm-up over cfg.warmup steps, then cosine decay to min_lr over the remaining
    steps, or over the remaining time budget when `time_fraction` (elapsed / budget) is given."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if time_fraction is not None:
        progress = min(1.0, time_fraction)
    else:
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def masked_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """optimizer.step() unless the device scalar `skip` is 1: the fused Adam(W) kernels read it
    on the device (the mechanism torch's GradScaler uses: `found_inf`), so the host never waits."""
    optimizer.grad_scale, optimizer.found_inf = None, skip
    try:
        optimizer.step()
    finally:
        optimizer.found_inf = None


def saved_batch(state: dict) -> tuple[int, int | None]:
    """(processes, clips per step per process) of the run that wrote a train_state; the batch
    is None for a checkpoint of step 0 written before batch_size was stored."""
    saved_bs = state.get("batch_size")
    step = int(state.get("step", 0))
    if saved_bs is None and step:  # checkpoints written before batch_size was stored
        saved_bs = int(state.get("samples_seen", 0)) // step
    return int(state.get("world_size", 1)), (int(saved_bs) if saved_bs else None)


def _method_validation(model: nn.Module, batch: dict):
    return model.validation(batch)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Train `model` and keep its checkpoint in `out_dir/checkpoint`.

    `out_dir=None` trains in memory (small models on in-memory data): no checkpoint, metrics
    file or validation images are written. Every logged record is also kept in `history`.
    `progress=False` hides the progress bar.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        out_dir: str | Path | None,
        info: DistInfo,
        kind: str,
        model_config: dict,
        meta: dict | None = None,
        frames_per_sample: int = 1,
        validation: Callable[[nn.Module, dict], tuple[dict, Any]] | None = None,
        progress: bool = True,
    ):
        self.cfg = cfg
        self.info = info
        self.out = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.history: list[dict] = []  # every record written by _log, in memory
        self.kind = kind
        self.model_config = json.loads(json.dumps(model_config))  # as it will read back from JSON
        self.meta = dict(meta or {})
        self.frames_per_sample = frames_per_sample
        if validation is None and hasattr(model, "validation"):
            validation = _method_validation
        self.validation = validation
        self.model = model.to(info.device)
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        # fused: one kernel for all parameters, and it can skip a non-finite step on the device
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
        self.step = 0
        self.nonfinite_total = 0
        # device-side accounting of skipped (non-finite) steps, read every log_every steps
        zero = torch.zeros((), device=info.device)
        self._bad_total, self._bad_run, self._last_bad, self._step_counter = (zero.clone() for _ in range(4))
        self._nonfinite_base = 0  # skipped steps of earlier runs (resumed)
        self._bad_logged = 0
        if cfg.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and info.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        if info.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        wrapped: nn.Module = LossModule(self.model)
        if info.enabled:
            wrapped = DistributedDataParallel(
                wrapped, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(model, "unused_parameters", False)))
        self.compiled = cfg.compile if cfg.compile is not None else info.device.type == "cuda"
        self._regions: list[nn.Module] = []  # blocks fit() compiles in place (compile scope "blocks")
        if self.compiled:
            # Stages trained in one process (`train world`) share LossModule.forward's code object:
            # without a reset, dynamo's automatic dynamic shapes turns the second stage's graph
            # symbolic, which Inductor (torch 2.11, H200, LAM under DDP) failed to compile. Shapes
            # are static within a stage, so each new shape (validation) gets its own static graph.
            torch._dynamo.reset()
            if cfg.compile_cache:
                compile_cache.load(cfg.compile_cache)
            self._eager_forward = wrapped  # (the same module uncompiled: `eager_step`)
            self._regions = region_blocks(self.model) if cfg.compile_scope == "blocks" else []
            if not self._regions:
                wrapped = torch.compile(wrapped, dynamic=False)
            # else: fit() compiles the blocks in place (`eager_step` then skips only what lies outside them)
        self.forward = wrapped
        self.ckpt_dir = self.out / "checkpoint" if self.out is not None else None
        self.metrics_path = self.out / "metrics.jsonl" if self.out is not None else None
        self.tb = None
        if cfg.tensorboard and info.is_main and self.out is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            self.tb = SummaryWriter(str(self.out / "tensorboard"))

    # ---- state ---------------------------------------------------------------------------
    @property
    def samples_seen(self) -> int:
        """Samples consumed by this rank (the data stream's position)."""
        return self.step * self.cfg.batch_size

    def save(self, sync: bool = True) -> None:
        """Rank 0 writes the checkpoint; with `sync`, every rank then waits at a barrier."""
        if self.info.is_main and self.ckpt_dir is not None:
            train_state = {
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "samples_seen": self.samples_seen,
                "world_size": self.info.world_size,
                "batch_size": self.cfg.batch_size,  # per process: the global batch is batch_size x world_size
                "nonfinite_total": self.nonfinite_total,
            }
            meta = {**self.meta, "step": self.step, "train": self.cfg.__dict__}
            checkpoint.save(self.ckpt_dir, self.kind, self.model_config, self.model.state_dict(),
                            self.ema_model.state_dict(), train_state, meta)
        if sync:
            barrier(self.info)

    def resume(self) -> bool:
        """Load model, EMA, optimizer and step from out_dir/checkpoint if present."""
        if self.ckpt_dir is None or not checkpoint.stored(self.ckpt_dir):
            return False  # nothing there; a checkpoint that is there but unreadable raises below
        header = checkpoint.read_header(self.ckpt_dir, self.kind)
        saved = header["config"]
        if dataclasses.is_dataclass(getattr(self.model, "cfg", None)):  # fields added since: defaults
            saved = normalized(type(self.model.cfg), saved)
        if saved != self.model_config:
            raise ValueError(f"cannot resume: {self.ckpt_dir} was trained with a different model config; "
                             f"use a new --out folder or the same preset/overrides")
        state = checkpoint.read_train_state(self.ckpt_dir)
        if state is None:
            raise checkpoint.CheckpointError(f"{self.ckpt_dir} has no train_state.pt to resume from")
        self._check_global_batch(state)
        self.model.load_state_dict(checkpoint.read_weights(self.ckpt_dir, ema=False))
        self.ema_model.load_state_dict(checkpoint.read_weights(self.ckpt_dir, ema=True))
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.nonfinite_total = self._nonfinite_base = int(state.get("nonfinite_total", 0))
        if "time_spent_s" in header.get("meta", {}):
            self.meta["time_spent_s"] = header["meta"]["time_spent_s"]
        self._truncate_log(self.step)
        return True

    def _check_global_batch(self, state: dict) -> None:
        """Resuming on another number of processes continues the same global data stream (each
        step takes the next batch_size x world_size items of InfiniteSampler's global order) only
        with the same global batch: refuse another one, naming the --batch-size that keeps it."""
        saved_ws, saved_bs = saved_batch(state)
        ws = self.info.world_size
        if saved_ws == ws or not saved_bs:
            return
        total = saved_bs * saved_ws
        if int(self.cfg.batch_size) * ws == total:
            return
        hint = (f"--batch-size {total // ws}" if total % ws == 0 else
                f"a process count that divides {total}")
        raise ValueError(f"cannot resume: {self.ckpt_dir} was trained by {saved_ws} process(es) x batch {saved_bs} "
                         f"(global batch {total}); on {ws} process(es) x batch {self.cfg.batch_size} the data order "
                         f"and the step size would change. Use {hint} to continue the same run, or --init-from "
                         f"to start a new one from its weights")

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (a crash may leave some)."""
        if not self.info.is_main or self.metrics_path is None or not self.metrics_path.exists():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        checkpoint.atomic_write_bytes(self.metrics_path, ("\n".join(keep) + "\n").encode() if keep else b"")

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.info.is_main and self.metrics_path is not None:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tb is not None:
                group = record.get("split") or record.get("event", "event")
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "step":
                        self.tb.add_scalar(f"{group}/{k}", v, record.get("step", 0))
                self.tb.flush()

    @torch.no_grad()
    def _update_ema(self, ok: torch.Tensor | float = 1.0) -> None:
        """ema <- ema + w (param - ema), w = (1 - decay) * ok: one fused pass, no host sync."""
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        ema_params = list(self.ema_model.parameters())
        params = [p.detach() for p in self.model.parameters()]
        if isinstance(ok, torch.Tensor):
            delta = torch._foreach_sub(params, ema_params)
            torch._foreach_mul_(delta, ok * (1 - decay))
            torch._foreach_add_(ema_params, delta)
        else:
            torch._foreach_lerp_(ema_params, params, (1 - decay) * ok)
        for e, b in zip(self.ema_model.buffers(), self.model.buffers()):
            e.copy_(b)

    # ---- validation ------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, val_batches: list[dict]) -> dict:
        if not self.info.is_main or not val_batches or self.validation is None:
            barrier(self.info)
            return {}
        sums: dict[str, float] = {}
        image = None
        for i, batch in enumerate(val_batches):
            batch = _to_device(batch, self.info.device)
            with torch.autocast(self.info.device.type, dtype=self.autocast_dtype,
                                enabled=self.autocast_dtype is not None):
                metrics, img = self.validation(self.ema_model, batch)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if i == 0:
                image = img
        result = {k: v / len(val_batches) for k, v in sums.items()}
        self._log({"step": self.step, "split": "val", **result})
        if image is not None and self.out is not None:
            from PIL import Image

            (self.out / "val").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image)).save(self.out / "val" / f"step_{self.step:07d}.png")
        barrier(self.info)
        return result

    # ---- the loop --------------------------------------------------------------------------
    def train_step(self, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch already on the device: forward, backward, clipping, and,
        when loss and gradient are finite on every rank, the update and EMA; otherwise the update
        and EMA are skipped. The step always advances (the batch is consumed either way).

        Nothing here waits for the device: whether the step was finite stays a device tensor
        (`ok`) that masks the update inside the fused optimizer and the EMA; the loop reads it
        with the other metrics every `log_every` steps. Returns (loss, metrics, grad_norm, ok)."""
        hook = getattr(self.model, "before_train_step", None)
        if hook is not None:  # host-side bookkeeping of the model, kept out of compiled code
            hook()
        forward = self._eager_forward if self.compiled and getattr(self.model, "eager_step", False) else self.forward
        with torch.autocast(self.info.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss, metrics = forward(batch)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        bad = (~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))).float()  # () 1.0 = skip
        if self.info.enabled:
            import torch.distributed as dist

            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # one rank's overflow skips the step everywhere
        masked_step(self.optimizer, bad)
        self._update_ema(ok=1.0 - bad)
        self.optimizer.zero_grad(set_to_none=True)
        hook = getattr(self.model, "after_train_step", None)
        if hook is not None:  # e.g. dead VQ codes replaced, outside compiled code, before any checkpoint
            hook()
        self.step += 1
        self._bad_total += bad
        self._bad_run = (self._bad_run + bad) * bad  # consecutive skipped steps, 0 after a good one
        self._last_bad = torch.where(bad > 0, self._step_counter, self._last_bad)
        self._step_counter += 1
        return loss, metrics, grad_norm, 1.0 - bad

    def fit(self, batches: Callable[[int], Iterator[dict]], val_batches: list[dict] | None = None) -> dict:
        """Train until cfg.steps (or cfg.max_minutes). `batches(start)` must yield this rank's
        batches beginning after `start` samples already consumed."""
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        compile_regions(self._regions)
        try:
            return self._fit(batches, val_batches)
        finally:
            compile_regions(self._regions, on=False)

    def _fit(self, batches: Callable[[int], Iterator[dict]], val_batches: list[dict] | None) -> dict:
        cfg, info = self.cfg, self.info
        it = batches(self.samples_seen)
        t_start = time.time()
        # time already spent in earlier chunks of a time-budgeted run
        t_offset = float(self.meta.get("time_spent_s", 0.0)) if cfg.time_budget else 0.0
        t_last, step_last = t_start, self.step
        first_step = self.step
        stopped = "steps"
        show = info.is_main and self.progress
        budget_s = cfg.time_budget * 60
        if cfg.time_budget:  # the bar runs over the time budget (its ETA is the budget's end), steps in the postfix
            pbar = tqdm(total=round(budget_s), initial=min(round(t_offset), round(budget_s)), disable=not show,
                        desc=f"train {self.kind}", unit="s", dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s of budget [{elapsed}<{remaining}{postfix}]")
        else:
            pbar = tqdm(total=cfg.steps, initial=self.step, disable=not show, desc=f"train {self.kind}",
                        dynamic_ncols=True)
        self.model.train()
        self._step_counter.fill_(self.step)
        frac: float | None = None  # position in a time budget (0..1), None: a step-based schedule
        while self.step < cfg.steps:
            torch.manual_seed(step_seed(cfg.seed, info.rank, self.step))
            # under DDP the wall-clock checks are collectives: make them only every log_every steps
            check_time = not info.enabled or self.step % cfg.log_every == 0
            if cfg.time_budget and (check_time or frac is None):
                # The schedule's position in time is agreed by all ranks (the largest of their clocks)
                # and held between checks: ranks reading their own clocks would step with slightly
                # different learning rates, and DDP keeps weights equal only under equal updates.
                frac = max_over_ranks((t_offset + time.time() - t_start) / budget_s, info)
                if frac >= 1.0:
                    stopped = "time_budget"
                    break
            lr = lr_at(self.step, cfg, frac)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            loss, metrics, grad_norm, ok = self.train_step(_to_device(next(it), info.device))
            if cfg.time_budget:
                pbar.update(max(0, min(round(budget_s), round(t_offset + time.time() - t_start)) - pbar.n))
            else:
                pbar.update(1)

            if self.step % cfg.log_every == 0 or self.step == cfg.steps:  # the loop's one regular sync
                avg = all_reduce_mean({"loss": loss, "grad_norm": grad_norm, **metrics}, info)
                bad_run, skipped = self._read_nonfinite(step_last)
                now = time.time()
                fps = (self.step - step_last) * cfg.batch_size * info.world_size * self.frames_per_sample / max(
                    1e-9, now - t_last)
                t_last, step_last = now, self.step
                if bad_run >= cfg.max_nonfinite:
                    stopped = "nonfinite"
                    tqdm.write(f"stopping: {bad_run} non-finite steps in a row; "
                               f"the last good checkpoint in {self.ckpt_dir} is kept")
                    break
                if bad_run == 0:  # the last step was finite: its loss is worth a record
                    record = {"step": self.step, "split": "train", "lr": lr, "frames_per_s": fps,
                              "elapsed_s": now - t_start, **avg}
                    if info.device.type == "cuda":
                        record["max_mem_gb"] = torch.cuda.max_memory_allocated(info.device) / 2**30
                    self._log(record)
                    pbar.set_postfix(**({"step": self.step} if cfg.time_budget else {}), loss=f"{avg['loss']:.4f}",
                                     fps=f"{fps:.0f}")
            if cfg.val_every and self.step % cfg.val_every == 0:
                self.validate(val_batches or [])
                self.model.train()
            if cfg.save_every and self.step % cfg.save_every == 0 and float(self._bad_run) == 0:
                # (after a skipped step the weights are the last good ones, but its checkpoint was
                # written already; a run that is failing keeps that one)
                self.meta["time_spent_s"] = t_offset + time.time() - t_start
                self.save()
            if cfg.stop_after and self.step - first_step >= cfg.stop_after and self.step < cfg.steps:
                stopped = "stop_after"
                break
            if cfg.max_minutes and check_time and any_rank(time.time() - t_start > cfg.max_minutes * 60, info):
                stopped = "time"  # every rank takes part in the check, so all stop together
                break
        pbar.close()
        if stopped != "nonfinite":
            self.meta["time_spent_s"] = t_offset + time.time() - t_start
            self.save()
        if self.compiled and cfg.compile_cache and info.is_main:
            compile_cache.save(cfg.compile_cache)
        self._read_nonfinite(step_last)
        return {"step": self.step, "stopped": stopped, "seconds": time.time() - t_start,
                "nonfinite_total": self.nonfinite_total, **self.rank_sync()}

    def _read_nonfinite(self, since_step: int) -> tuple[int, int]:
        """Read the device-side counts of skipped steps (a host sync); log an event if steps were
        skipped since `since_step`. Returns (consecutive skipped steps now, skipped since)."""
        run, total, last = (int(v) for v in torch.stack([self._bad_run, self._bad_total, self._last_bad]).cpu())
        skipped = total - self._bad_logged
        if skipped > 0:
            self._log({"step": last, "event": "nonfinite", "skipped": skipped, "since_step": since_step})
        self._bad_logged = total
        self.nonfinite_total = self._nonfinite_base + total
        return run, skipped

    @torch.no_grad()
    def rank_sync(self) -> dict:
        """A checksum of the weights and, under DDP, whether every rank holds the same ones."""
        total = torch.zeros((), dtype=torch.float64, device=self.info.device)
        for i, p in enumerate(self.model.parameters()):
            total += (p.detach().double() * (1 + (i % 7))).sum()
        out = {"weights_checksum": float(total)}
        if self.info.enabled:
            import torch.distributed as dist

            gathered = [torch.zeros_like(total) for _ in range(self.info.world_size)]
            dist.all_gather(gathered, total)
            out["ranks_in_sync"] = all(float(g) == float(total) for g in gathered)
            out["rank"] = self.info.rank
        return out
