"""A World as ONNX graphs: `driftless export onnx WORLD --out DIR`.

The folder holds two graphs and a manifest:

* `encoder.onnx`: uint8 frames `frames` (b, 1, H, W, 3) -> normalised latents `latents`
  (b, 1, s, c): the tokenizer's encoder, for a start image.
* `step.onnx`: one whole play frame as a pure function - sample the next frame's latents by
  DDIM from the cached past and the action (the world's default number of steps, unrolled),
  commit them to the dynamics' KV caches at the context noise level (or, with the `fused_commit`
  option, keep the last denoising pass's keys), decode them with the decoder's KV caches.
  Everything the PyTorch session keeps between frames is an explicit input, which the caller
  carries over (the small state as a matching `<name>_out` output, the KV buffers by a write):

  | input | dtype, shape | what |
  | --- | --- | --- |
  | `action` | int64 (b,) | the latent action into the new frame; `num_actions` = the null action (start frames) |
  | `start` | bool () | true: the frame is `given` (a start frame) instead of a sampled one |
  | `given` | float32 (b, 1, s, c) | a start frame's normalised latents (the encoder's output); read when `start` |
  | `noise` | float32 (draws, b, 1, s, c) | standard normal noise, in the order the sampler draws it: the initial noise, one draw per DDIM step when eta > 0, the context noise of the commit (with the `fused_commit` option: drawn before the last DDIM step's, `context_slot`) |
  | `position` | int64 () | frames committed so far (the new frame's time index) |
  | `dyn_k`, `dyn_v` | float32 (layers, b*tokens, heads, capacity, head_dim) | the dynamics' temporal-attention KV ring buffers |
  | `dyn_slot`, `dyn_valid` | int64 (), bool (capacity,) | the ring buffer's write slot and which slots hold a frame |
  | `dec_k`, `dec_v`, `dec_slot`, `dec_valid` | likewise | the decoder's |

  Outputs: `frame` uint8 (b, H, W, 3), `latents` float32 (b, 1, s, c), `position_out`,
  `dyn_slot_out`, ... (the small state after this frame), and for each KV buffer `<name>_new`
  (b*tokens, heads, 1, head_dim): the keys or values of the frame committed by this call, which
  the caller writes into its buffer at the slot it fed (`dyn_slot` / `dec_slot`) along axis 2, in
  place (manifest `graphs.step.writes`; `OnnxPlayer.run`, the page's `runStep`): a graph cannot
  update an input in place, so a buffer carried through it as an output is a copy of every buffer
  every frame. A session starts from zeros (position 0, empty buffers), runs once with `start`
  and the null action on the start image's latents, then once per frame.
* `manifest.json`: the world (resolution, actions, action map), the sampling options baked into
  the step graph, every input and output with its dtype and shape, which inputs are state, the
  noise layout, the weights' storage and the numerical check.

The graphs wrap the model's own modules (`ForcingFrame.sample` and `observe`, `Tokenizer.decode_step`,
`StaticKVCache`, whose slot and validity mask are device tensors already); the sampler's random
draws come from a `NoiseTape` of the `noise` input, so a graph fed the noise a seeded
`torch.Generator` draws gives the frames `World.step` gives for that seed (`check_against_torch`).

Weights: `auto` (default) stores a weight in float16 when that loses nothing (the shipped world's
weights are float16 already), `fp16` every large weight (lossy for a float32-trained world),
`fp32` none; a `Cast` to float32 follows each float16 weight, which ONNX Runtime folds when it
loads the graph, so the arithmetic is float32 either way. `int8` quantises the step graph's linear
layers (`quantize_weights`: int8 weights per output channel, inputs quantised to uint8 on the fly,
int32 products; lossy, faster on a CPU; docs/benchmarks.md 2.14).
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from driftless import __version__
from driftless.checkpoint import atomic_write_json
from driftless.diffusion.gaussian import NoiseTape
from driftless.models.dynamics import RolloutState
from driftless.nn.attention import StaticKVCache
from driftless.world.onnx_play import (  # noqa: F401
    FORMAT,
    MANIFEST,
    NP_DTYPES,
    OnnxPlayer,
    carry_state,
    initial_state,
)
from driftless.world.world import SamplingOptions, World, load

# ONNX opset of the exports: 23 writes attention, RMS norms and GELU as one node each (Attention,
# RMSNormalization, Gelu), which ONNX Runtime runs from 1.23 on: about 17 % more frames/s on a 2-core
# CPU than the same graph at 18, where they are dozens of small nodes (docs/benchmarks.md, 2.10).
# An older ONNX Runtime here gets OPSET_OLD (`export_opset`).
OPSET = 23
OPSET_OLD = 18
OPSET_MIN_RUNTIME = (1, 23)
FLOAT_WEIGHTS = ("auto", "fp16", "fp32")  # how `store_weights` stores float weights
WEIGHTS = (*FLOAT_WEIGHTS, "int8")  # int8: `quantize_weights` (the step graph), the encoder as auto
FP16_MIN_SIZE = 1024  # `fp16` stores float weights of at least this many values in float16
INPUTS = ("action", "start", "given", "noise")  # then the state (`state_names`)
OUTPUTS = ("frame", "latents")  # then the small state after the frame, `<name>_out`, and the buffers' writes
SMALL_STATE = ("position", "dyn_slot", "dyn_valid", "dec_slot", "dec_valid")  # carried as outputs; the rest written



# ---------------------------------------------------------------------------------- the graphs
def export_opset() -> int:
    """OPSET, or OPSET_OLD where the installed ONNX Runtime is older than OPSET_MIN_RUNTIME (its graphs
    would not load there) or cannot be read."""
    try:
        import onnxruntime

        version = tuple(int(p) for p in onnxruntime.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return OPSET_OLD
    return OPSET if version >= OPSET_MIN_RUNTIME else OPSET_OLD


def sampling_options(world: World, **overrides) -> SamplingOptions:
    """The world's default sampling options with `overrides` (None: keep), all resolved to values
    (the graph bakes them in). History guidance is refused: the step graph runs one branch."""
    opts = world._options(world.sampling, overrides)  # checked like World's (window, context_level in range)
    if opts.history_guidance != 1.0:
        where = "given" if overrides.get("history_guidance") is not None else "the world's sampling default"
        raise ValueError(f"the ONNX export does not support history guidance (history_guidance "
                         f"{opts.history_guidance:g}, {where}): its step graph runs one branch, the past's; "
                         f"export with history_guidance=1, or play with the torch backend")
    cfg = world.dynamics.cfg
    eta = cfg.diffusion.eta if opts.eta is None else opts.eta
    level = cfg.diffusion.context_level if opts.context_level is None else opts.context_level
    return SamplingOptions(steps=opts.steps, cfg_scale=opts.cfg_scale, context_level=level, eta=float(eta),
                           window=opts.window or cfg.context_window, temperature=opts.temperature,
                           fused_commit=opts.fused_commit, cfg_steps=opts.cfg_steps)


def noise_draws(opts: SamplingOptions) -> int:
    """Draws of frame-sized noise per step: initial, one per DDIM step when eta > 0, context."""
    return 2 + (opts.steps if opts.eta > 0 else 0)


def context_slot(opts: SamplingOptions) -> int:
    """Which draw holds the frame in the context (a start frame's only one): the last, or with
    fused_commit the one before the last DDIM step's (models/frame_forcing.py)."""
    if opts.fused_commit:
        return 1 + (opts.steps - 1 if opts.eta > 0 else 0)
    return noise_draws(opts) - 1


def state_names(dyn_layers: int, dec_layers: int) -> tuple[str, ...]:
    """The step graph's state inputs: the position, the ring buffers' slot and validity, then one
    key and one value buffer per attention layer (separate tensors: stacking them cost a copy of
    every buffer per frame)."""
    kv = [f"{p}_{kv}{i}" for p, n in (("dyn", dyn_layers), ("dec", dec_layers)) for i in range(n) for kv in "kv"]
    return (*SMALL_STATE, *kv)


def check_exportable(world: World) -> None:
    if world.dynamics is None:
        raise ValueError("this world has only a tokenizer: export needs a dynamics model")
    frame = world.dynamics.frame
    if not (frame.capturable and callable(getattr(frame, "sample", None))):
        raise ValueError(f"export needs a frame model that samples a whole frame in fixed shapes (forcing); "
                         f"the {frame.name!r} frame model does not")


class PlayStep(nn.Module):
    """One play frame of `world` as a function of explicit tensors (the module docstring's table);
    the world's own modules do the work."""

    def __init__(self, world: World, opts: SamplingOptions):
        super().__init__()
        check_exportable(world)
        self.dynamics = world.dynamics
        self.tokenizer = world.tokenizer
        self.opts = opts
        self.decoder_window = world._decoder_window(opts.window)  # as World._frame decodes

    @property
    def layers(self) -> tuple[int, int]:
        return len(self.dynamics.backbone.blocks), len(self.tokenizer.decoder.blocks)

    def forward(self, action, start, given, noise, position, dyn_slot, dyn_valid, dec_slot, dec_valid, *kv):
        """kv: the key and value buffers of every dynamics layer, then of every decoder layer."""
        dyn, frame, o = self.dynamics, self.dynamics.frame, self.opts
        b = given.shape[0]
        n_dyn, n_dec = self.layers
        dyn_kv, dec_kv = kv[:2 * n_dyn], kv[2 * n_dyn:]
        if len(dec_kv) != 2 * n_dec:
            raise ValueError(f"expected {2 * (n_dyn + n_dec)} key/value buffers, got {len(kv)}")
        # the buffers are read, never written (host_write: the new position's keys and values are outputs);
        # clones of the slot and validity, which the commit updates in place
        caches = [StaticKVCache.of(dyn_kv[2 * i], dyn_kv[2 * i + 1], dyn_slot.clone(), dyn_valid.clone(),
                                   host_write=True) for i in range(n_dyn)]
        state = RolloutState(caches=caches, position=position.clone())
        acts = action.reshape(b, 1) if dyn.cfg.num_actions else None
        tape = NoiseTape(noise.unbind(0))
        if o.fused_commit:  # the last denoising pass appends the frame; a start frame is put in its input
            frame.check_fused(o.cfg_scale, state, o.cfg_steps, o.steps)

            def held(x0, level, fresh):  # the frame (or the given start frame) as `World` holds it
                return frame.diffusion.q_sample(torch.where(start, given.float(), x0), level, fresh)

            x = frame.sample(dyn.run, state, acts, b, given.device, steps=o.steps, cfg_scale=o.cfg_scale, eta=o.eta,
                             temperature=o.temperature, generator=tape, commit_last=True, held_level=o.context_level,
                             last_input=held, cfg_steps=o.cfg_steps)
        else:
            x = frame.sample(dyn.run, state, acts, b, given.device, steps=o.steps, cfg_scale=o.cfg_scale, eta=o.eta,
                             temperature=o.temperature, generator=tape, cfg_steps=o.cfg_steps)
        x = torch.where(start, given, x)  # (b, 1, s, c)
        if not o.fused_commit:
            frame.observe(dyn.run, state, x, acts, context_level=o.context_level, generator=tape)
        if tape.taken != len(tape.tensors):
            raise ValueError(f"the sampler drew {tape.taken} noise tensors, the graph was given {len(tape.tensors)}")
        dec = [StaticKVCache.of(dec_kv[2 * i], dec_kv[2 * i + 1], dec_slot.clone(), dec_valid.clone(),
                                host_write=True) for i in range(n_dec)]
        z = frame.to_latents(self.tokenizer, x)
        pixels = self.tokenizer.decode_step(z, dec, position, window=self.decoder_window)[:, 0]  # (b, h, w, 3)
        unwritten = [i for i, c in enumerate(caches + dec) if c.new_k is None]
        if unwritten:
            raise ValueError(f"the step graph committed no position to caches {unwritten}: nothing to write")
        return (pixels, x, state.position, caches[0].slot, caches[0].valid, dec[0].slot, dec[0].valid,
                *[t for c in caches + dec for t in (c.new_k, c.new_v)])



class Encode(nn.Module):
    """uint8 frames (b, t, H, W, 3) -> normalised latents (b, t, s, c): `Tokenizer.encode`."""

    def __init__(self, world: World):
        super().__init__()
        self.tokenizer = world.tokenizer

    def forward(self, frames):
        return self.tokenizer.encode(frames).float()


def state_shapes(world: World, opts: SamplingOptions, batch: int = 1) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every state input of the step graph, read off the caches of a
    one-frame static session."""
    dyn, tok = world.dynamics, world.tokenizer
    s, c = dyn.cfg.tokens_per_frame, dyn.cfg.latent_dim
    device = next(dyn.parameters()).device
    with torch.no_grad():
        state = dyn.new_state(static=True, window=opts.window)  # ring buffers of the window's size
        z = torch.zeros(batch, 1, s, c, device=device)
        dyn.observe(state, z, dyn.frame_actions(None, batch, 1, device))
        dec = tok.decoder.new_cache(static=True)
        tok.decode_step(z, dec, torch.zeros((), dtype=torch.long, device=device),
                        window=world._decoder_window(opts.window))
    out = {"position": ((), "int64")}
    for prefix, caches in (("dyn", state.caches), ("dec", dec)):
        out.update({f"{prefix}_slot": ((), "int64"), f"{prefix}_valid": ((caches[0].valid.shape[0],), "bool")})
    for prefix, caches in (("dyn", state.caches), ("dec", dec)):
        for i, c in enumerate(caches):
            out.update({f"{prefix}_k{i}": (tuple(c.k.shape), "float32"), f"{prefix}_v{i}": (tuple(c.v.shape), "float32")})
    assert tuple(out) == state_names(len(state.caches), len(dec))
    return out


def _example_inputs(world: World, opts: SamplingOptions, batch: int) -> tuple[torch.Tensor, ...]:
    cfg = world.dynamics.cfg
    device = next(world.dynamics.parameters()).device
    s, c = cfg.tokens_per_frame, cfg.latent_dim
    shapes = state_shapes(world, opts, batch)
    dtypes = {"float32": torch.float32, "int64": torch.long, "bool": torch.bool}
    state = [torch.zeros(shape, dtype=dtypes[dtype], device=device) for shape, dtype in shapes.values()]
    return (torch.zeros(batch, dtype=torch.long, device=device), torch.tensor(False, device=device),
            torch.zeros(batch, 1, s, c, device=device), torch.zeros(noise_draws(opts), batch, 1, s, c, device=device),
            *state)


# ---------------------------------------------------------------------------------- exporting
@contextmanager
def _quiet_exporter():
    """The exporter's progress lines and warnings (torchvision missing, ...) are not ours to show."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_graph(module: nn.Module, args: tuple, inputs, outputs, path: Path, opset: int) -> None:
    """torch.onnx's exporter (torch.export + translation), then constant folding, common
    subexpressions, dead nodes and per-node metadata removed. (The exporter's own optimizer adds pattern rewrites
    that took 3/4 of the time on the unrolled step graph and left it no faster in ONNX Runtime.)"""
    import onnx_ir as ir
    import onnx_ir.passes.common as passes
    from onnxscript.optimizer import fold_constants

    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(module.eval(), args, None, input_names=list(inputs), output_names=list(outputs),
                                    dynamo=True, opset_version=opset, optimize=False, verbose=False)
        model = program.model
        ir.passes.Sequential(passes.InlinePass(), passes.RemoveUnusedNodesPass())(model)
        fold_constants(model, onnx_shape_inference=True)
        ir.passes.Sequential(
            passes.RemoveUnusedNodesPass(),
            passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            passes.DeduplicateInitializersPass(),
            passes.CommonSubexpressionEliminationPass(),
            passes.RemoveUnusedNodesPass(),
            passes.ClearMetadataAndDocStringPass(),  # per-node provenance: 40% of the file
            passes.OutputFixPass(),
            passes.NameFixPass(),
        )(model)
    model.producer_name, model.producer_version = "driftless", __version__
    tmp = path.with_name(path.name + ".tmp")
    ir.save(model, tmp)
    tmp.replace(path)


def store_weights(path: Path, mode: str = "auto") -> dict:
    """Rewrite float32 weights of the graph at `path` as float16 + Cast (see the module docstring);
    -> {"fp16": n, "fp32": n, "bytes": size on disk}."""
    import onnx
    from onnx import helper, numpy_helper

    if mode not in FLOAT_WEIGHTS:
        raise ValueError(f"weights must be one of {FLOAT_WEIGHTS}, got {mode!r}")
    model = onnx.load(str(path))
    graph = model.graph
    casts, kept, converted = [], [], 0
    for init in graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype != np.float32 or mode == "fp32" or a.size < 2:
            kept.append(init)
            continue
        with np.errstate(over="ignore"):
            half = a.astype(np.float16)
        exact = np.array_equal(half.astype(np.float32), a)
        if not (exact or (mode == "fp16" and a.size >= FP16_MIN_SIZE and np.isfinite(half).all())):
            kept.append(init)
            continue
        name16 = init.name + "__fp16"
        kept.append(numpy_helper.from_array(half, name16))
        casts.append(helper.make_node("Cast", [name16], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=init.name + "__cast"))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    floats = sum(1 for i in kept if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    return {"fp16": converted, "fp32": floats - converted, "bytes": path.stat().st_size}


def quantize_weights(path: Path) -> dict:
    """`int8` weights for the step graph at `path` (float32 weights, as exported): the matrix products
    with a constant weight (every linear layer) become ONNX Runtime's dynamic quantisation - weights
    int8 (7 bits used) per output channel, each input quantised to uint8 as it arrives, products accumulated in
    int32 (MatMulInteger) - and the other weights are stored as `auto` would. The weights are first
    folded into plain constants by ONNX Runtime's basic graph optimisations (transposes and casts of
    initializers), which is what the quantiser recognises. -> {"int8": matrix products quantised, "fp16": n,
    "fp32": n, "bytes": size}."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folded, quantized = path.with_name(path.name + ".folded"), path.with_name(path.name + ".int8")
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        # reduce_range: 7-bit weights. With full 8-bit ones, x86 CPUs without VNNI (this project's 2-core
        # dev machine) saturate the uint8 x int8 pair sums: 3.3 dB lost over ten frames of the shipped
        # world on 8 validation clips, 0.07 dB with 7 bits (0.17 dB on 128; docs/benchmarks.md 2.14)
        logging.disable(logging.WARNING)  # the quantiser's advice to pre-process (shape inference) on the root logger
        quantize_dynamic(str(folded), str(quantized), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul", "Gemm"], extra_options={"MatMulConstBOnly": True})
        quantized.replace(path)
    finally:
        logging.disable(logging.NOTSET)
        folded.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)
    stored = store_weights(path, "auto")
    model = onnx.load(str(path), load_external_data=False)
    stored["int8"] = sum(1 for n in model.graph.node if n.op_type == "MatMulInteger")  # products quantised
    return stored


def _spec(names, tensors) -> list[dict]:
    dt = {torch.float32: "float32", torch.long: "int64", torch.bool: "bool", torch.uint8: "uint8"}
    return [{"name": n, "dtype": dt[t.dtype], "shape": list(t.shape)} for n, t in zip(names, tensors)]


def export_onnx(world: World | str | Path, out: str | Path, steps: int | None = None, weights: str = "auto",
                batch: int = 1, check_frames: int | None = None, seed: int = 0, start_frame: np.ndarray | None = None,
                log=print, opset: int | None = None, **sampling) -> dict:
    """Write `encoder.onnx`, `step.onnx` and `manifest.json` for `world` (a World, a world folder or
    a shipped name) into `out`; `steps` and `sampling` (eta, cfg_scale, context_level, temperature,
    window) override the world's sampling options, which the step graph bakes in. With
    `check_frames` (default: the context window + 8, past the ring buffer's wrap-around; 0: no
    check) the graphs are run with ONNX Runtime against the PyTorch world on the same inputs and
    noise, and the agreement goes into the manifest. `opset`: the graphs' ONNX opset (None:
    `export_opset()`, the fastest the ONNX Runtime here loads). -> the manifest."""
    if not isinstance(world, World):
        world = load(world)
    check_exportable(world)
    opset = export_opset() if opset is None else int(opset)
    if weights not in WEIGHTS:
        raise ValueError(f"--weights must be one of {WEIGHTS}, got {weights!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opts = sampling_options(world, steps=steps, **sampling)
    cfg, tok_cfg = world.dynamics.cfg, world.tokenizer.cfg
    h, w = world.resolution

    t0 = time.time()
    args = _example_inputs(world, opts, batch)
    step_module = PlayStep(world, opts)
    with torch.no_grad():
        results = step_module(*args)
    names = state_names(*step_module.layers)
    small, buffers = names[:len(SMALL_STATE)], names[len(SMALL_STATE):]
    inputs = INPUTS + names
    outputs = OUTPUTS + tuple(f"{n}_out" for n in small) + tuple(f"{n}_new" for n in buffers)
    _export_graph(step_module, args, inputs, outputs, out / "step.onnx", opset)
    step_store = quantize_weights(out / "step.onnx") if weights == "int8" else store_weights(out / "step.onnx", weights)
    log(f"step.onnx: {step_store['bytes'] / 1e6:.1f} MB ({time.time() - t0:.0f} s)")

    t1 = time.time()
    frames = torch.zeros(batch, 1, h, w, 3, dtype=torch.uint8, device=args[0].device)
    encode = Encode(world)
    with torch.no_grad():
        latents = encode(frames)
    _export_graph(encode, (frames,), ("frames",), ("latents",), out / "encoder.onnx", opset)
    enc_store = store_weights(out / "encoder.onnx", "auto" if weights == "int8" else weights)  # runs once a session
    log(f"encoder.onnx: {enc_store['bytes'] / 1e6:.1f} MB ({time.time() - t1:.0f} s)")

    from driftless.serve.session import noop_action

    manifest = {
        "format": FORMAT,
        "version": 2,  # 2: the KV buffers are written by the caller (graphs.step.writes)
        "world": {
            "name": world.meta.get("name", Path(str(getattr(world, "path", "world"))).name),
            "resolution": [h, w],
            "num_actions": world.num_actions,
            "null_action": cfg.num_actions,
            "action_map": world.action_map,
            "noop": noop_action(world.action_map),
            "tokens": cfg.tokens_per_frame,
            "channels": cfg.latent_dim,
            "context_window": cfg.context_window,
            "patch": tok_cfg.patch,
        },
        "sampling": asdict(opts),
        "batch": batch,
        "noise": {"draws": noise_draws(opts),
                  "order": ["initial"] + [f"ddim step {i + 1}" for i in range(opts.steps if opts.eta > 0 else 0)]
                  + ["context"]},
        "graphs": {
            "encoder": {"file": "encoder.onnx", "bytes": enc_store["bytes"], "inputs": _spec(["frames"], [frames]),
                        "outputs": _spec(["latents"], [latents])},
            "step": {"file": "step.onnx", "bytes": step_store["bytes"], "inputs": _spec(inputs, args),
                     "outputs": _spec(outputs, results), "state": {n: f"{n}_out" for n in small},
                     "writes": {n: {"output": f"{n}_new", "slot": f"{n.split('_')[0]}_slot", "axis": 2}
                                for n in buffers}},
        },
        "weights": {"mode": weights, "fp16_tensors": step_store["fp16"] + enc_store["fp16"],
                    "fp32_tensors": step_store["fp32"] + enc_store["fp32"], "int8_matmuls": step_store.get("int8", 0)},
        "exported": {"driftless": __version__, "torch": torch.__version__, "opset": opset,
                     "date": time.strftime("%Y-%m-%d")},
    }
    atomic_write_json(out / MANIFEST, manifest)
    if check_frames is None:
        check_frames = cfg.context_window + 8
    if check_frames:
        t2 = time.time()
        manifest["check"] = check_against_torch(world, out, frames=check_frames, seed=seed, start_frame=start_frame)
        c = manifest["check"]
        log(f"check ({check_frames} frames, {time.time() - t2:.0f} s): latents max |ONNX - PyTorch| "
            f"{c['latents_max_abs']:.2e}; frames max |ONNX - World| {c['frames_max_abs']} of 255, "
            f"mean {c['frames_mean_abs']:.4f}")
        atomic_write_json(out / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------------------------- playing them
# ---------------------------------------------------------------------------------- the check
def replayed_noise(generator: torch.Generator, manifest: dict, start: bool) -> np.ndarray:
    """The `noise` input that makes the step graph draw what `World.reset` (start) or `World.step`
    draws from `generator`: frame-sized draws in the sampler's order (a start frame draws only
    its context noise, at `context_slot`)."""
    shape = next(i["shape"] for i in manifest["graphs"]["step"]["inputs"] if i["name"] == "noise")
    draws, frame = shape[0], shape[1:]
    out = np.zeros(shape, np.float32)
    for i in ([context_slot(SamplingOptions(**manifest["sampling"]))] if start else range(draws)):
        out[i] = torch.randn(frame, generator=generator).numpy()
    return out


def default_start_frame(world: World, seed: int = 0) -> np.ndarray:
    """A start frame for checks: CoinRun test level 10500 when Procgen is here, else seeded noise."""
    from driftless.serve.session import LevelSource, NoStartSource, resize_frames

    try:
        frame, _ = LevelSource().frame(10500, np.random.default_rng(seed))
        return resize_frames(frame, world.resolution)[0]
    except NoStartSource:
        return np.random.default_rng(seed).integers(0, 256, world.resolution + (3,), dtype=np.uint8)


def check_against_torch(world: World, folder: str | Path, frames: int = 24, seed: int = 0,
                        start_frame: np.ndarray | None = None) -> dict:
    """See `_check`; PyTorch runs on one thread meanwhile (like ONNX Runtime here: at batch 1 on a
    busy CPU, two threads mostly wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _check(world, folder, frames, seed, start_frame)
    finally:
        torch.set_num_threads(threads)


def _check(world: World, folder: str | Path, frames: int, seed: int, start_frame: np.ndarray | None) -> dict:
    """Run the exported graphs (ONNX Runtime, CPU) against PyTorch for `frames` frames from one start
    frame with seeded actions, fed the noise a `torch.Generator` seeded `seed` draws:

    * `latents_max_abs`: the step graph against its PyTorch module (`PlayStep`), each carrying its
      own state: max |difference| of the frames' latents over the rollout;
    * `frames_max_abs` / `frames_mean_abs` / `frames_differing`: the graph's uint8 frames against
      `World.reset` + `World.step` with that seed (the public API's frames);
    * `encoder_max_abs`: the encoder graph against `World.encode` on the start frame."""
    player = OnnxPlayer(folder, seed=seed)
    manifest = player.manifest
    opts = SamplingOptions(**manifest["sampling"])
    b = manifest["batch"]
    start = default_start_frame(world, seed) if start_frame is None else np.asarray(start_frame, np.uint8)
    actions = np.random.default_rng(seed).integers(0, max(world.num_actions, 1), size=frames)
    sampling = dict(steps=opts.steps, eta=opts.eta, cfg_scale=opts.cfg_scale, context_level=opts.context_level,
                    temperature=opts.temperature, window=opts.window, fused_commit=opts.fused_commit,
                    cfg_steps=opts.cfg_steps)

    # the public API with a seed
    starts = np.array(np.broadcast_to(start, (b,) + start.shape))  # (a writable copy)
    world.reset(starts[:, None], seed=seed, **sampling)
    want = np.stack([world.step(np.full(b, a) if world.num_actions else None) for a in actions])  # (n, b, h, w, 3)
    world.end_session()

    # the graph, and its PyTorch module, on the same noise
    g = torch.Generator().manual_seed(seed)
    module = PlayStep(world, opts)
    device = next(world.dynamics.parameters()).device
    state = {k: torch.from_numpy(v).to(device) for k, v in initial_state(manifest).items()}

    step = manifest["graphs"]["step"]
    in_names = [i["name"] for i in step["inputs"]][len(INPUTS):]  # the graph's order (the manifest's dicts are sorted)
    out_names = [o["name"] for o in step["outputs"]][len(OUTPUTS):]
    def torch_step(action, is_start, given, noise):
        out = module(torch.full((b,), int(action), device=device), torch.tensor(is_start, device=device),
                     torch.from_numpy(given).to(device), torch.from_numpy(noise).to(device),
                     *[state[n] for n in in_names])
        state.update(carry_state(state, dict(zip(out_names, out[len(OUTPUTS):])), step))
        return out[1].cpu().numpy()

    with torch.no_grad():
        noise = replayed_noise(g, manifest, start=True)
        given = player.reset(starts, noise)
        torch_step(manifest["world"]["null_action"], True, given, noise)
        got, lat_diff = [], 0.0
        zeros = np.zeros_like(given)
        for a in actions:
            noise = replayed_noise(g, manifest, start=False)
            frame, lat = player.step(a, noise)
            ref = torch_step(a, False, zeros, noise)
            lat_diff = max(lat_diff, float(np.abs(lat - ref).max()))
            got.append(frame)
    got = np.stack(got)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    enc = player.encode(starts[:, None])
    return {
        "frames": int(frames),
        "seed": int(seed),
        "latents_max_abs": lat_diff,
        "frames_max_abs": int(diff.max()),
        "frames_mean_abs": float(diff.mean()),
        "frames_differing": float((diff > 0).mean()),
        "encoder_max_abs": float(np.abs(enc - world.encode(starts[:, None])).max()),
        "onnxruntime": __import__("onnxruntime").__version__,
    }
