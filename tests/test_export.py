"""`driftless export onnx`: the graphs against PyTorch with ONNX Runtime (CPU, Python), their
interface, float16 storage, the noise tape, and the errors a user can meet (src/driftless/export/)."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from driftless.diffusion.gaussian import NoiseTape, randn

from conftest import EXPORT_DECODER_WINDOW


# ---------------------------------------------------------------------------------- the graphs
def test_step_graph_matches_pytorch_past_the_ring_buffers_wrap(debug_export):
    """Same inputs and noise: the step graph's latents equal its PyTorch module's, and its frames
    `World.reset` + `World.step` with that seed, over 14 frames (the dynamics' ring buffer holds 6,
    the decoder's 4: both wrap around)."""
    check = debug_export["manifest"]["check"]
    window = debug_export["manifest"]["world"]["context_window"]
    assert check["frames"] > max(2 * window, 3 * EXPORT_DECODER_WINDOW)
    assert check["latents_max_abs"] < 1e-4, check
    assert check["frames_max_abs"] <= 1 and check["frames_mean_abs"] < 0.01, check
    assert check["encoder_max_abs"] < 1e-4, check


def test_step_graph_leaves_its_ring_buffers_for_the_caller_to_write(debug_export):
    """The KV ring buffers (N, heads, capacity, hd) are read-only inputs of the step graph: it outputs the
    committed position's keys and values (`<name>_new`, capacity 1) and the caller writes them at the slot
    it fed (manifest `writes`). No node transposes, scatters or selects over a whole buffer (a write inside
    the graph copies every buffer every frame: transpose -> ScatterND -> transpose was a sixth of a CPU
    frame at the shipped world's window), and no output has a buffer's shape. At the opset the ONNX
    Runtime here loads best, attention, RMS norms and GELU are single nodes."""
    import onnx

    from driftless.export.onnx import OPSET, export_opset

    step = debug_export["manifest"]["graphs"]["step"]
    model = onnx.shape_inference.infer_shapes(onnx.load(str(debug_export["onnx"] / "step.onnx")))
    shape = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
             for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    writes = step["writes"]
    assert {n[:3] for n in writes} == {"dyn", "dec"} and not set(writes) & set(step["state"])
    buffers = {shape[n] for n in writes}
    for name, w in writes.items():
        assert w["axis"] == 2 and w["slot"] in step["state"] and shape[w["output"]][2] == 1
        assert shape[w["output"]][:2] + shape[w["output"]][3:] == shape[name][:2] + shape[name][3:]
    moved = [n.op_type for n in model.graph.node
             if n.op_type in ("Transpose", "ScatterND", "ScatterElements", "Where", "Concat", "Identity")
             and any(shape.get(i) in buffers for i in n.input)]
    assert not moved, moved
    assert not [o.name for o in model.graph.output if shape[o.name] in buffers]
    assert debug_export["manifest"]["exported"]["opset"] == export_opset()
    ops = {n.op_type for n in model.graph.node}
    if export_opset() == OPSET:
        assert {"Attention", "RMSNormalization", "Gelu"} <= ops


def test_carry_state_writes_a_call_at_the_slot_it_was_fed():
    """`carry_state` (the Python player's and the check's; the page's runStep does the same): the small
    state comes from the `_out` outputs, each buffer gets the call's `_new` at the fed slot, in place."""
    from driftless.world.onnx_play import carry_state

    step = {"state": {"dyn_slot": "dyn_slot_out"}, "writes": {"dyn_k0": {"output": "dyn_k0_new", "slot": "dyn_slot",
                                                                        "axis": 2}}}
    buf = np.zeros((2, 3, 4, 5), np.float32)
    state = {"dyn_slot": np.array(2), "dyn_k0": buf}
    new = np.arange(30, dtype=np.float32).reshape(2, 3, 1, 5)
    after = carry_state(state, {"dyn_slot_out": np.array(3), "dyn_k0_new": new}, step)
    assert after["dyn_k0"] is buf and int(after["dyn_slot"]) == 3
    np.testing.assert_array_equal(buf[:, :, 2], new[:, :, 0])
    assert not buf[:, :, [0, 1, 3]].any()
    t = torch.zeros(2, 3, 4, 5)
    carry_state({"dyn_slot": torch.tensor(0), "dyn_k0": t}, {"dyn_slot_out": torch.tensor(1),
                                                           "dyn_k0_new": torch.from_numpy(new)}, step)
    assert torch.equal(t[:, :, 0], torch.from_numpy(new[:, :, 0])) and not t[:, :, 1:].any()


def test_manifest_describes_the_interface(debug_export):
    m = json.loads((debug_export["onnx"] / "manifest.json").read_text())
    assert m["format"] == "driftless-onnx" and m["batch"] == 1
    step = m["graphs"]["step"]
    inputs = {i["name"]: i for i in step["inputs"]}
    outputs = {o["name"]: o for o in step["outputs"]}
    assert [i["name"] for i in step["inputs"]][:4] == ["action", "start", "given", "noise"]
    s, c = m["world"]["tokens"], m["world"]["channels"]
    # eta = 1 and 2 steps: initial noise, one draw per DDIM step, the context noise
    assert m["sampling"]["steps"] == 2 and m["sampling"]["eta"] == 1.0
    assert m["noise"]["draws"] == 4 and inputs["noise"]["shape"] == [4, 1, 1, s, c]
    assert outputs["frame"] == {"name": "frame", "dtype": "uint8", "shape": [1, 64, 64, 3]}
    assert outputs["latents"]["shape"] == [1, 1, s, c]
    # every state input is carried: the small state by an output of the same dtype and shape, each KV
    # buffer by a write of one slot along axis 2; nothing else
    assert set(step["state"]) | set(step["writes"]) == set(inputs) - {"action", "start", "given", "noise"}
    for name, out in step["state"].items():
        assert {**outputs[out], "name": name} == inputs[name]
    for name, w in step["writes"].items():
        want = list(inputs[name]["shape"])
        want[w["axis"]] = 1
        assert outputs[w["output"]]["shape"] == want and outputs[w["output"]]["dtype"] == inputs[name]["dtype"]
    assert m["version"] == 2
    cap = m["world"]["context_window"]
    assert inputs["dyn_valid"] == {"name": "dyn_valid", "dtype": "bool", "shape": [cap]}
    assert inputs["dyn_k0"]["shape"][2] == cap and inputs["dyn_slot"]["dtype"] == "int64"
    # the decoder's ring buffer is its temporal window (itself and 3 earlier frames), not the dynamics'
    dec_cap = EXPORT_DECODER_WINDOW
    assert dec_cap < cap and inputs["dec_valid"]["shape"] == [dec_cap] and inputs["dec_k0"]["shape"][2] == dec_cap
    assert m["world"]["null_action"] == m["world"]["num_actions"] == 4
    assert m["world"]["action_map"]["keys"]["ArrowRight"] == 2
    assert {g["file"] for g in m["graphs"].values()} == {"encoder.onnx", "step.onnx"}


def test_player_is_reproducible_and_actions_matter(debug_export):
    from driftless.export.onnx import OnnxPlayer

    start = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def roll(actions, seed):
        p = OnnxPlayer(debug_export["onnx"], seed=seed)
        p.reset(start)
        return np.stack([p.step(a)[0] for a in actions])

    a = roll([1, 1, 2, 3], seed=5)
    assert a.shape == (4, 1, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, roll([1, 1, 2, 3], seed=5))
    assert not np.array_equal(a, roll([0, 0, 0, 0], seed=5))  # (the untrained debug world: small effect)
    assert np.abs(a.astype(int) - roll([1, 1, 2, 3], seed=6).astype(int)).mean() > 0.5


def test_only_forcing_worlds_export(tmp_path):
    from driftless.export.onnx import check_exportable
    from driftless.world.debug import make_debug_world
    from driftless.world.world import load

    world = load(make_debug_world(tmp_path / "mar", dynamics_overrides={"frame_model": "mar"}))
    with pytest.raises(ValueError, match="forcing"):
        check_exportable(world)


# ---------------------------------------------------------------------------------- float16 weights
def _matmul_model(path, weight):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("mode", ["auto", "fp16", "fp32"])
def test_weights_storage(tmp_path, mode):
    pytest.importorskip("onnxruntime")
    from driftless.export.onnx import store_weights

    g = np.random.default_rng(0)
    exact = g.standard_normal((64, 32)).astype(np.float16).astype(np.float32)  # a float16-trained weight
    inexact = g.standard_normal((64, 32)).astype(np.float32)
    x = g.standard_normal((2, 64)).astype(np.float32)
    for name, w in (("exact", exact), ("inexact", inexact)):
        path = tmp_path / f"{name}.onnx"
        _matmul_model(path, w)
        before, size = _run(path, x), path.stat().st_size
        info = store_weights(path, mode)
        after = _run(path, x)
        halved = info["fp16"] == 1
        assert halved == (mode == "fp16" or (mode == "auto" and name == "exact")), (mode, name, info)
        assert (path.stat().st_size < 0.6 * size) == halved
        if name == "exact" or not halved:
            np.testing.assert_array_equal(after, before)  # nothing lost
        else:
            assert 0 < np.abs(after - before).max() < 0.05


def test_int8_weights_quantise_the_linear_layers(tmp_path):
    """`--weights int8`: a constant-weight MatMul becomes MatMulInteger on int8 weights (7 bits used, so
    CPUs without VNNI do not saturate) and stays within a few percent of the float product."""
    pytest.importorskip("onnxruntime")
    import onnx

    from driftless.export.onnx import quantize_weights, store_weights

    g = np.random.default_rng(0)
    w = g.standard_normal((64, 32)).astype(np.float32)
    x = g.standard_normal((2, 64)).astype(np.float32)
    path = tmp_path / "m.onnx"
    _matmul_model(path, w)
    before = _run(path, x)
    info = quantize_weights(path)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops and "MatMul" not in ops and info["int8"] == 1, (ops, info)
    weights = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert np.abs(weights[0]).max() <= 64  # reduce_range: 7 bits
    after = _run(path, x)
    assert 0 < np.abs(after - before).max() < 0.05 * np.abs(before).max()
    with pytest.raises(ValueError, match="one of"):
        store_weights(path, "int8")  # float storage only: int8 is quantize_weights'


def test_int8_export_plays_and_the_web_page_refuses_it(debug_world, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from driftless.export.onnx import OnnxPlayer, export_onnx
    from driftless.export.web import export_web

    m = export_onnx(debug_world, tmp_path / "int8", weights="int8", check_frames=4, log=lambda *a: None)
    assert m["weights"]["mode"] == "int8" and m["weights"]["int8_matmuls"] > 0
    assert m["check"]["frames_mean_abs"] < 8, m["check"]  # lossy, but the same world
    p = OnnxPlayer(tmp_path / "int8")
    p.reset(np.zeros((64, 64, 3), np.uint8))
    frame, latents = p.step(1)
    assert frame.shape == (1, 64, 64, 3) and np.isfinite(latents).all()
    with pytest.raises(ValueError, match="int8"):
        export_web(debug_world, tmp_path / "web", weights="int8")


# ---------------------------------------------------------------------------------- the noise tape
def test_noise_tape_replays_a_generators_draws_in_order():
    from driftless.models import registry
    from driftless.models.compose import dynamics_fields
    from driftless.config import override

    torch.manual_seed(0)
    cfg = override(registry.preset("dynamics", "debug"), dynamics_fields(4, (8, 8), 4))
    dyn = registry.build("dynamics", cfg).eval()
    s, c = cfg.tokens_per_frame, cfg.latent_dim
    with torch.no_grad():
        for p in dyn.parameters():
            p.add_(0.02 * torch.randn_like(p))
    first = torch.randn(1, 1, s, c)

    def frame(generator):
        state = dyn.new_state()
        dyn.observe(state, first, None, generator=generator)
        return dyn.generate_frame(state, torch.tensor([2]), steps=3, eta=1.0, generator=generator)

    want = frame(torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    tape = NoiseTape([torch.randn(1, 1, s, c, generator=g) for _ in range(1 + 1 + 3 + 1)])
    np.testing.assert_array_equal(frame(tape).numpy(), want.numpy())
    assert tape.taken == len(tape.tensors)
    with pytest.raises(ValueError, match="used up"):
        tape.draw((1, 1, s, c))
    with pytest.raises(ValueError, match="shape"):
        NoiseTape([torch.zeros(2)]).draw((3,))
    assert randn((2, 3), "cpu", None).shape == (2, 3)


# ---------------------------------------------------------------------------------- the runtime and the CLI
def test_missing_npm_names_the_fix(tmp_path, monkeypatch):
    from driftless.export import web

    monkeypatch.setattr(web.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="npm was not found.*--ort-dir"):
        web.ort_runtime(cache=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="--ort-dir"):
        web.ort_runtime(ort_dir=tmp_path)  # an empty folder


def test_ort_dir_takes_a_folder_or_the_npm_tarball(tmp_path):
    from driftless.export import web

    tgz = tmp_path / "onnxruntime-web-1.30.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name in web.ORT_FILES + ("package.json",):
            data = b'{"version": "1.30.0"}' if name == "package.json" else name.encode()
            info = tarfile.TarInfo(f"package/dist/{name}" if name != "package.json" else "package/package.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("package/../../evil")  # never written: only the named files are taken
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    dist, version = web.ort_runtime(ort_dir=tgz, cache=tmp_path / "cache")
    assert version == "1.30.0" and (dist / "ort.wasm.min.js").read_bytes() == b"ort.wasm.min.js"
    assert not (tmp_path / "evil").exists()
    again, _ = web.ort_runtime(ort_dir=dist)
    assert again == dist


def test_cli_registers_export():
    from driftless.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["export", "onnx", "coinrun", "--out", "x", "--steps", "3"])
    assert args.func.__name__ == "_onnx" and args.steps == 3 and args.weights == "auto"
    args = parser.parse_args(["export", "web", "--out", "y", "--ort-dir", "z", "--no-webgpu"])
    assert args.func.__name__ == "_web" and args.world == "coinrun" and args.no_webgpu and args.ort_dir == "z"


def test_cli_refuses_an_out_that_holds_something_but_builds_the_page_in_its_own_onnx_folder(debug_export, tmp_path,
                                                                                              capsys):
    """--out holding something is refused (nothing changed) unless --force; `export web --onnx DIR
    --out DIR` turns an `export onnx` folder into the page in place (a stand-in runtime, no npm)."""
    import shutil

    from PIL import Image

    from driftless.cli import main
    from driftless.export import web

    runtime = tmp_path / "ort"
    runtime.mkdir()
    for name in web.ORT_BACKENDS["wasm"]:
        (runtime / name).write_bytes(name.encode())
    image = tmp_path / "start.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(image)
    graphs = tmp_path / "graphs"
    shutil.copytree(debug_export["onnx"], graphs)
    page_args = [str(debug_export["world"]), "--onnx", str(graphs), "--ort-dir", str(runtime), "--start", str(image),
                 "--no-webgpu"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    for argv in (["export", "onnx", str(debug_export["world"]), "--out", str(other)],
                 ["export", "web", *page_args, "--out", str(other)]):
        assert main(argv) == 1
        assert "nothing was changed" in capsys.readouterr().err
        assert [p.name for p in other.iterdir()] == ["keep.txt"]

    assert main(["export", "web", *page_args, "--out", str(graphs)]) == 0  # in place: no --force needed
    assert (graphs / "index.html").is_file() and (graphs / "ort" / "ort.wasm.min.js").read_bytes() == b"ort.wasm.min.js"
    assert all((graphs / name).is_file() for name in ("play.js", "ui.js", "style.css"))  # ui.js: shared with serve/
    assert main(["export", "web", *page_args, "--out", str(other), "--force"]) == 0
    assert (other / "step.onnx").read_bytes() == (graphs / "step.onnx").read_bytes() and (other / "keep.txt").exists()


def test_cli_export_onnx_bakes_a_shorter_window_and_refuses_a_longer_one(debug_world, tmp_path, capsys):
    """`export onnx --window N` sizes the dynamics' ring buffers for N frames (N - 1 past ones and the new
    one: capacity N) and records it in the manifest's sampling; a window past the trained one is refused
    with the trained length named, before anything is written."""
    import driftless
    from driftless.cli import main

    trained = driftless.load(debug_world).dynamics.cfg.context_window
    assert trained >= 3
    out = tmp_path / "w2"
    assert main(["export", "onnx", str(debug_world), "--out", str(out), "--window", "2", "--check-frames", "6"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sampling"]["window"] == 2 and manifest["check"]["frames_max_abs"] <= 1
    step = {i["name"]: i["shape"] for i in manifest["graphs"]["step"]["inputs"]}
    assert {s[2] for n, s in step.items() if n.startswith("dyn_k")} == {2}
    capsys.readouterr()
    assert main(["export", "onnx", str(debug_world), "--out", str(tmp_path / "long"), "--window", str(trained + 1)]) != 0
    assert f"window must be an integer in [1, {trained}]" in capsys.readouterr().err
    assert not (tmp_path / "long" / "manifest.json").exists()
