"""Playing through ONNX Runtime on the CPU (world/onnx_play.py, `driftless play --backend`)."""

import shutil
import types

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def loaded(debug_export):
    from driftless.world.world import load

    return load(debug_export["world"])


def _frames(world, t=1, seed=0):
    h, w = world.resolution
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_onnx_world_plays_like_a_world_session(loaded, debug_export):
    from driftless.world.onnx_play import OnnxWorld

    world = loaded

    ow = OnnxWorld(loaded, debug_export["onnx"])
    start = _frames(world, t=3)  # a clip: encoded as a clip, its transitions labelled by the LAM
    assert np.array_equal(ow.reset(start, seed=5), start[-1]), "reset returns the last start frame as given"
    a = [ow.step(i % 3) for i in range(6)]
    assert all(f.shape == (*world.resolution, 3) and f.dtype == np.uint8 for f in a)
    ow.reset(start, seed=5)
    assert all(np.array_equal(x, ow.step(i % 3)) for i, x in enumerate(a)), "same seed, same frames"
    ow.reset(start, seed=6)
    assert not all(np.array_equal(x, ow.step(i % 3)) for i, x in enumerate(a)), "the sampler's noise is seeded"
    ow.end_session()
    with pytest.raises(ValueError, match="reset"):
        ow.step(0)


def test_onnx_world_refuses_other_options_and_other_worlds(loaded, debug_export):
    from driftless.world.onnx_play import OnnxWorld

    world = loaded

    ow = OnnxWorld(loaded, debug_export["onnx"])
    ow.reset(_frames(world), seed=0)
    with pytest.raises(ValueError, match="2 steps"):
        ow.step(0, steps=3)
    assert ow.step(0, steps=2).shape == (*world.resolution, 3)  # the baked-in count is fine
    exported = ow.player.manifest["sampling"]["window"]
    assert ow.step(0, window=exported).shape == (*world.resolution, 3)  # the baked-in window is fine
    with pytest.raises(ValueError, match="exported with"):
        ow.step(0, window=exported - 1)
    with pytest.raises(ValueError, match="cannot sample with history guidance.*--backend torch"):
        ow.step(0, history_guidance=2.0)
    other = types.SimpleNamespace(resolution=(32, 32), num_actions=world.num_actions)
    with pytest.raises(ValueError, match="another world"):
        OnnxWorld(other, debug_export["onnx"])


def test_play_sessions_run_through_onnx_runtime(loaded, debug_export):
    from driftless.serve.session import PlayConfig, SessionManager
    from driftless.world.onnx_play import OnnxWorld

    world = loaded

    manager = SessionManager(world, PlayConfig(onnx=str(debug_export["onnx"]), max_sessions=2))
    s1, s2 = manager.open(), manager.open()
    assert isinstance(s1.world, OnnxWorld) and s1.world.player.session is s2.world.player.session  # shared graphs
    frame, _, _ = s1.start(_frames(world), {})
    for i in range(3):
        frame, _, ms = s1.step(i % 2)
    assert frame.shape == (*world.resolution, 3) and ms > 0
    s2.start(_frames(world, seed=1), {})
    assert s2.step(0)[0].shape == frame.shape
    manager.close(s1.id)
    assert s2.step(1)[0].shape == frame.shape, "closing one tab leaves the other's state alone"


def test_cli_backend_choice(loaded, debug_export, tmp_path, monkeypatch):
    from driftless.cli.play import choose_backend, onnx_cache

    world = loaded

    monkeypatch.setenv("DRIFTLESS_CACHE", str(tmp_path))
    assert choose_backend("auto", "cpu", world, 2) == ("torch", None), "no export cached: torch"
    assert choose_backend("torch", "cpu", world, 2) == ("torch", None)
    with pytest.raises(ValueError, match="CPU"):
        choose_backend("onnx", "cuda", world, 2)
    folder = onnx_cache(world, 2)
    assert folder.parent == tmp_path / "onnx" and folder != onnx_cache(world, 4), "the step count is in the key"
    assert onnx_cache(world, 2, 3).name == folder.name + "-w3", "a play window is in the key"
    assert onnx_cache(world, 2, weights="int8").name == folder.name + "-int8", "quantised weights are in the key"
    with pytest.raises(ValueError, match="--backend onnx"):
        choose_backend("auto", "cpu", world, 2, weights="int8")
    with monkeypatch.context() as m:
        m.setattr("driftless.cli.play.export_code_digest", lambda: "other code")
        assert onnx_cache(world, 2) != folder, "an export made by other code is not reused"
    shutil.copytree(debug_export["onnx"], folder)
    assert choose_backend("auto", "cpu", world, 2) == ("onnx", folder)
    assert choose_backend("onnx", "cpu", world, 2) == ("onnx", folder), "a cached export is not made again"
    assert choose_backend("auto", "cpu", world, 2, 3) == ("torch", None), "an export for another window is not used"
    assert choose_backend("auto", "cuda", world, 2) == ("torch", None)
