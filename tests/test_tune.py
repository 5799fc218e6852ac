"""The per-world context noise level: `driftless world tune` (eval/tune.py) measures candidates on
validation data, chooses by its rule and stores the choice in world.json, which World and the
ONNX export take as their default."""

import json
import shutil

import numpy as np
import pytest
import torch

import driftless
from driftless.cli import main
from driftless.eval.tune import (
    TuneConfig,
    choose,
    choose_fused_commit,
    choose_steps,
    choose_temperature,
    tune_context_level,
)

TINY = dict(levels=(15, 500), clips=2, horizon=2, rollouts=2, frames=12, drift_window=4, bank_size=32,
            reference_size=16, batch_size=4, progress=False, temperatures=(), steps=(), fused_commit=False)


def _store(root, split="val", episodes=4, length=24, seed=0):
    """A store of `split` whose episodes stand for long one-level ones (moving squares)."""
    from driftless.data.store import EpisodeStore

    g = np.random.default_rng(seed)
    store = EpisodeStore.create(root, (64, 64), meta={"split": split})
    with store.writer("synthetic") as wr:
        for e in range(episodes):
            frames = np.zeros((length, 64, 64, 3), dtype=np.uint8)
            frames[..., e % 3] = 40 + 30 * e
            for t in range(length):
                x = (4 + 2 * t + 5 * e) % 56
                frames[t, 20:28, x:x + 8] = 255
            wr.add_episode(frames, actions=g.integers(0, 15, size=length), rewards=np.zeros(length, np.float32),
                           same_level=True)
    return root


@pytest.fixture
def world_copy(debug_world, tmp_path):
    return shutil.copytree(debug_world, tmp_path / "world")


def _r(level, psnr, score, frozen=0.0):
    return {"context_level": level, "psnr": psnr, "same_level_score": score, "frozen_rate": frozen}


def test_the_rule():
    cfg = TuneConfig(psnr_tolerance=0.3, min_gain=0.05, max_frozen=0.25)
    # the best score among those within 0.3 dB of the best PSNR
    got = choose([_r(15, 17.0, 0.1), _r(300, 16.8, 0.3), _r(500, 16.5, 0.6)], 15, cfg)
    assert got["context_level"] == 300 and got["eligible"] == [15, 300]
    assert "0.50 dB below the best" in got["excluded"]["500"]
    # a gain under min_gain keeps the current level
    assert choose([_r(15, 17.0, 0.30), _r(300, 17.0, 0.33)], 15, cfg)["context_level"] == 15
    # a frozen candidate is not eligible, whatever its score
    frozen = choose([_r(15, 17.0, 0.1), _r(300, 17.0, 1.0, frozen=0.5)], 15, cfg)
    assert frozen["context_level"] == 15 and "frozen" in frozen["excluded"]["300"]
    # ties go to the higher PSNR; a current level that is not eligible is replaced without a margin
    assert choose([_r(15, 15.0, 0.5), _r(100, 17.0, 0.2), _r(300, 17.1, 0.2)], 15, cfg)["context_level"] == 300
    # no same-level score measured: nothing eligible, the current level stays
    assert choose([_r(15, 17.0, None), _r(300, 17.0, None)], 15, cfg)["context_level"] == 15


def test_tune_writes_the_choice_and_its_evidence(world_copy, tmp_path):
    data = _store(tmp_path / "val")
    before = json.loads((world_copy / "world.json").read_text())
    record = tune_context_level(world_copy, data, TuneConfig(**TINY), log=lambda *a: None)
    meta = json.loads((world_copy / "world.json").read_text())
    assert meta["sampling"]["context_level"] == record["chosen"] in (15, 500)
    assert {k: v for k, v in meta["sampling"].items() if k != "context_level"} == before["sampling"]
    assert meta["action_map"] == before["action_map"]  # nothing else touched
    t = meta["tuning"]["context_level"]
    assert t == record
    assert [c["context_level"] for c in t["candidates"]] == [15, 500]  # the current level (15) is among them
    for c in t["candidates"]:
        assert c["psnr"] > 0 and 0 <= c["same_level_score"] <= 1 and len(c["psnr_per_step"]) == 2
    assert t["data"]["split"] == "val" and t["data"]["path"] == str(data) and t["data"]["episodes"] == 4
    assert "within 0.3 dB" in t["rule"] and t["reason"] and t["date"][:2] == "20" and t["previous"] == 15
    assert driftless.load(world_copy).sampling.context_level == record["chosen"]
    # the same rollouts for every candidate, and reproducible: a dry run measures the same numbers
    again = tune_context_level(world_copy, data, TuneConfig(**{**TINY, "levels": (500,)}), write=False,
                               log=lambda *a: None)
    assert json.loads((world_copy / "world.json").read_text()) == meta  # --dry-run: untouched
    same = {c["context_level"]: c for c in again["candidates"]}
    assert same[500]["psnr"] == next(c for c in t["candidates"] if c["context_level"] == 500)["psnr"]


def test_tune_refuses_the_test_split_and_short_stores(world_copy, tmp_path, capsys):
    test = _store(tmp_path / "test", split="test")
    with pytest.raises(ValueError, match="test split.*--allow-test"):
        tune_context_level(world_copy, test, TuneConfig(**TINY), log=lambda *a: None)
    short = _store(tmp_path / "short", length=8)
    with pytest.raises(ValueError, match=r"episodes of 13\+ frames.*--same-level-frames 13"):
        tune_context_level(world_copy, short, TuneConfig(**TINY), log=lambda *a: None)
    assert "tuning" not in json.loads((world_copy / "world.json").read_text())
    # the command says the same, without a traceback
    rc = main(["world", "tune", str(world_copy), "--data", str(test), "--levels", "15,500", "--no-progress"])
    assert rc == 1 and "--allow-test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["world", "tune", str(world_copy), "--data", str(test), "--levels", "15,x"])


def test_tune_cli_dry_run_with_allow_test(world_copy, tmp_path, capsys, monkeypatch):
    """... on the device asked for: stop 27 and 28 tuned on the H200 machine's CPU, which the
    command used whatever the machine had, for up to 9 minutes a world."""
    import driftless.world.world as world_module

    loaded = []
    real_load = world_module.load
    monkeypatch.setattr(world_module, "load", lambda *a, **k: loaded.append(k.get("device")) or real_load(*a, **k))
    test = _store(tmp_path / "test", split="test")
    out = tmp_path / "tune.json"
    rc = main(["world", "tune", str(world_copy), "--data", str(test), "--split", "test", "--allow-test",
               "--levels", "15,500", "--clips", "2", "--horizon", "2", "--rollouts", "2", "--frames", "12",
               "--drift-window", "4", "--batch-size", "4", "--dry-run", "--json", str(out), "--no-progress",
               "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and "chosen: context level" in text and "unchanged" in text
    assert loaded == ["cpu"]
    if not torch.cuda.is_available():
        assert main(["world", "tune", str(world_copy), "--data", str(test), "--device", "cuda"]) != 0
        assert "CUDA is not available" in capsys.readouterr().err
    assert "tuning" not in json.loads((world_copy / "world.json").read_text())
    assert [c["context_level"] for c in json.loads(out.read_text())["candidates"]] == [15, 500]


def test_a_world_json_context_level_is_the_default(world_copy):
    """world.json's sampling.context_level changes the frames a world plays by default, as passing
    it does."""
    ctx = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    actions = np.arange(8) % 4
    plain = driftless.load(world_copy).rollout(ctx, actions, seed=0)
    meta = json.loads((world_copy / "world.json").read_text())
    meta["sampling"]["context_level"] = 500
    (world_copy / "world.json").write_text(json.dumps(meta))
    tuned = driftless.load(world_copy)
    assert tuned.sampling.context_level == 500
    noisy = tuned.rollout(ctx, actions, seed=0)
    assert not np.array_equal(noisy[2:], plain[2:])
    assert np.array_equal(noisy, driftless.load(world_copy).rollout(ctx, actions, seed=0, context_level=500))
    assert np.array_equal(plain, tuned.rollout(ctx, actions, seed=0, context_level=15))


def test_the_onnx_export_takes_the_worlds_context_level_and_window(world_copy, tmp_path):
    """The step graph bakes world.json's context level in (the check replays World with it) and
    sizes the dynamics' ring buffers to a shorter window."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from driftless.export.onnx import export_onnx

    meta = json.loads((world_copy / "world.json").read_text())
    meta["sampling"]["context_level"] = 400
    (world_copy / "world.json").write_text(json.dumps(meta))
    m = export_onnx(world_copy, tmp_path / "onnx", steps=1, window=3, check_frames=8, log=lambda *a: None)
    assert m["sampling"]["context_level"] == 400 and m["sampling"]["window"] == 3
    inputs = {i["name"]: i for i in m["graphs"]["step"]["inputs"]}
    assert inputs["dyn_valid"]["shape"] == [3] and inputs["dyn_k0"]["shape"][2] == 3
    c = m["check"]
    assert c["latents_max_abs"] < 1e-4 and c["frames_max_abs"] <= 1, c  # against World with window 3, level 400
    with pytest.raises(ValueError, match=r"window must be an integer in \[1, 6\]"):
        export_onnx(world_copy, tmp_path / "too-long", window=7, check_frames=0, log=lambda *a: None)


def test_the_temperature_rule():
    """The best short-horizon PSNR wins if it gains temperature_min_gain dB and its long rollouts
    hold (not frozen, same-level score not lower by more than min_gain); the long rollouts are
    measured only for a challenger."""
    cfg = TuneConfig(temperature_min_gain=0.1, max_frozen=0.25, min_gain=0.05)
    short = [{"temperature": 1.0, "psnr": 20.0}, {"temperature": 0.7, "psnr": 21.0}, {"temperature": 0.5, "psnr": 20.5}]
    asked = []

    def long_of(t, frozen=0.0, score=0.5):
        asked.append(t)
        return {"frozen_rate": frozen, "same_level_score": score}

    got = choose_temperature(short, 1.0, {"same_level_score": 0.5}, long_of, cfg)
    assert got["temperature"] == 0.7 and asked == [0.7]
    assert choose_temperature(short, 1.0, {"same_level_score": 0.5},
                              lambda t: long_of(t, frozen=0.5), cfg)["temperature"] == 1.0
    lower = choose_temperature(short, 1.0, {"same_level_score": 0.5}, lambda t: long_of(t, score=0.3), cfg)
    assert lower["temperature"] == 1.0 and "same-level" in lower["reason"]
    small = [{"temperature": 1.0, "psnr": 20.0}, {"temperature": 0.7, "psnr": 20.05}]
    asked.clear()
    assert choose_temperature(small, 1.0, {}, long_of, cfg)["temperature"] == 1.0 and asked == []
    with pytest.raises(ValueError, match="temperatures"):
        TuneConfig(temperatures=(3.0,))


def test_tune_writes_a_temperature(world_copy, tmp_path, capsys):
    """With candidate temperatures the tune measures each at the chosen level on the same clips
    (the current one reuses the level's own numbers), stores the choice as sampling.temperature
    and the evidence as tuning.temperature; World takes it as its default. 'none' turns it off."""
    data = _store(tmp_path / "val")
    cfg = TuneConfig(**{**TINY, "levels": (15,), "temperatures": (1.0, 0.0), "temperature_min_gain": 0.0})
    record = tune_context_level(world_copy, data, cfg, log=lambda *a: None)
    temp = record["temperature"]
    assert [c["temperature"] for c in temp["candidates"]] == [1.0, 0.0] and temp["previous"] == 1.0
    level = record["candidates"][0]
    assert temp["candidates"][0]["psnr"] == level["psnr"]  # the current temperature: the level's own figure
    assert temp["candidates"][1]["psnr"] != level["psnr"]  # another temperature generates other frames
    meta = json.loads((world_copy / "world.json").read_text())
    assert meta["sampling"]["temperature"] == temp["chosen"] and meta["tuning"]["temperature"] == temp
    assert "temperature" not in meta["tuning"]["context_level"]
    assert driftless.load(world_copy).sampling.temperature == temp["chosen"]
    rc = main(["world", "tune", str(world_copy), "--data", str(data), "--levels", "15", "--clips", "2", "--horizon", "2",
               "--rollouts", "2", "--frames", "12", "--drift-window", "4", "--batch-size", "4", "--temperatures",
               "none", "--dry-run", "--no-progress"])
    assert rc == 0 and "chosen: temperature" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["world", "tune", str(world_copy), "--data", str(data), "--temperatures", "1,x"])


def test_the_steps_rule():
    """The fewest steps within steps_tolerance dB of the best short-horizon PSNR, if their long
    rollouts hold; a failing challenger passes the choice on to the next fewest; the current
    steps need no long check."""
    cfg = TuneConfig(steps_tolerance=0.15, max_frozen=0.25, min_gain=0.05)
    short = [{"steps": 2, "psnr": 20.0}, {"steps": 3, "psnr": 20.9}, {"steps": 4, "psnr": 21.0},
             {"steps": 8, "psnr": 21.0}]
    asked = []

    def long_of(n, bad=()):
        asked.append(n)
        return {"frozen_rate": 0.5 if n in bad else 0.0, "same_level_score": 0.5}

    got = choose_steps(short, 8, {"same_level_score": 0.5}, long_of, cfg)
    assert got["steps"] == 3 and asked == [3]  # 2 steps lose 1 dB: never rolled out long
    asked.clear()
    got = choose_steps(short, 8, {"same_level_score": 0.5}, lambda n: long_of(n, bad=(3,)), cfg)
    assert got["steps"] == 4 and asked == [3, 4] and "frozen" in got["reason"]
    assert set(got["longs"]) == {3, 4} and got["longs"][3]["frozen_rate"] == 0.5  # the failed one's numbers kept
    asked.clear()
    got = choose_steps(short, 8, {"same_level_score": 0.5}, lambda n: long_of(n, bad=(3, 4)), cfg)
    assert got["steps"] == 8 and asked == [3, 4]
    asked.clear()  # more steps than the current ones win only by more than the tolerance
    assert choose_steps(short, 3, {}, long_of, cfg)["steps"] == 3 and asked == []
    lower = choose_steps(short, 8, {"same_level_score": 0.9}, long_of, cfg)
    assert lower["steps"] == 8 and "same-level" in lower["reason"]
    with pytest.raises(ValueError, match="sampling steps"):
        TuneConfig(steps=(0,))


def test_tune_writes_sampling_steps(world_copy, tmp_path, capsys):
    """With candidate steps the tune measures each at the chosen level and temperature on the same
    clips (the current steps reuse the level's own numbers), stores sampling.steps and the evidence
    as tuning.steps; World takes it as its default; a tolerance of 100 dB picks the fewest."""
    data = _store(tmp_path / "val")
    current = driftless.load(world_copy).sampling.steps
    cfg = TuneConfig(**{**TINY, "levels": (15,), "steps": (1,), "steps_tolerance": 100.0})
    record = tune_context_level(world_copy, data, cfg, log=lambda *a: None)
    st = record["steps"]
    assert [c["steps"] for c in st["candidates"]] == sorted({1, current}) and st["previous"] == current
    level = record["candidates"][0]
    assert next(c for c in st["candidates"] if c["steps"] == current)["psnr"] == level["psnr"]
    assert next(c for c in st["candidates"] if c["steps"] == 1)["psnr"] != level["psnr"]
    assert st["chosen"] == 1 and st["challenger_long"] is not None and st["challengers_long"] == {"1": st["challenger_long"]}
    meta = json.loads((world_copy / "world.json").read_text())
    assert meta["sampling"]["steps"] == 1 and meta["tuning"]["steps"] == st
    assert "steps" not in meta["tuning"]["context_level"]
    assert driftless.load(world_copy).sampling.steps == 1
    rc = main(["world", "tune", str(world_copy), "--data", str(data), "--levels", "15", "--clips", "2", "--horizon", "2",
               "--rollouts", "2", "--frames", "12", "--drift-window", "4", "--batch-size", "4", "--temperatures",
               "none", "--steps", "1,2", "--dry-run", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "sampling steps (was 1)" in out and "1 steps:" in out and "2 steps:" in out
    with pytest.raises(SystemExit):
        main(["world", "tune", str(world_copy), "--data", str(data), "--steps", "2,x"])


def test_the_fused_commit_rule():
    """On (one pass fewer) within steps_tolerance dB of off's short-horizon PSNR, if its rollouts are
    not frozen and its same-level score is at most min_gain under off's; each failure is named."""
    cfg = TuneConfig(steps_tolerance=0.15, max_frozen=0.25, min_gain=0.05)
    off_s, off_l = {"psnr": 23.88}, {"same_level_score": 0.726, "frozen_rate": 0.09}
    on = choose_fused_commit({"psnr": 23.81}, off_s, {"same_level_score": 0.715, "frozen_rate": 0.02}, off_l, cfg)
    assert on["fused_commit"] is True and "holds" in on["reason"]  # the shipped world's figures (benchmarks 2.10)
    worse = choose_fused_commit({"psnr": 23.6}, off_s, {"same_level_score": 0.715, "frozen_rate": 0.0}, off_l, cfg)
    assert worse["fused_commit"] is False and "short-horizon" in worse["reason"]
    lost = choose_fused_commit({"psnr": 23.9}, off_s, {"same_level_score": 0.63, "frozen_rate": 0.5}, off_l, cfg)
    assert lost["fused_commit"] is False and "same-level" in lost["reason"] and "frozen" in lost["reason"]


def test_tune_writes_fused_commit(world_copy, tmp_path, capsys):
    """Last, fused_commit measured on and off at the chosen level, temperature and steps (the world's
    current setting reuses the numbers measured there), stored as sampling.fused_commit with both
    sides' numbers under tuning.fused_commit; World plays with it by default."""
    data = _store(tmp_path / "val")
    w = driftless.load(world_copy)
    assert w.sampling.fused_commit is False and w.sampling.steps >= 2
    cfg = TuneConfig(**{**TINY, "levels": (15,), "fused_commit": True, "steps_tolerance": 100.0, "min_gain": 1.0,
                        "max_frozen": 1.0})
    record = tune_context_level(world_copy, data, cfg, log=lambda *a: None)
    fc, level = record["fused_commit"], record["candidates"][0]
    assert fc["chosen"] is True and fc["previous"] is False and fc["steps"] == w.sampling.steps
    assert fc["off"]["short"]["psnr"] == level["psnr"] and fc["on"]["short"]["psnr"] != level["psnr"]
    assert fc["off"]["long"]["nn_psnr_last"] == level["nn_psnr_last"]
    meta = json.loads((world_copy / "world.json").read_text())
    assert meta["sampling"]["fused_commit"] is True and meta["tuning"]["fused_commit"] == fc
    assert driftless.load(world_copy).sampling.fused_commit is True
    strict = TuneConfig(**{**cfg.__dict__, "steps_tolerance": -0.0, "min_gain": 0.0, "max_frozen": 0.0})
    again = tune_context_level(world_copy, data, strict, write=False, log=lambda *a: None)
    assert again["fused_commit"]["previous"] is True  # now measured from the on side
    assert again["fused_commit"]["on"]["short"]["psnr"] == again["candidates"][0]["psnr"]


def test_world_sampling_verb_sets_checks_and_copies(tmp_path, capsys):
    """`driftless world sampling`: prints the settings, changes only the flags given, refuses a
    combination the world cannot play (world.json untouched), copies another world's, unsets."""
    import shutil

    from driftless.world.debug import make_debug_world

    path = tmp_path / "a"
    make_debug_world(path)
    shutil.copytree(path, tmp_path / "b")

    def sampling(folder):
        return json.loads((folder / "world.json").read_text())["sampling"]

    assert main(["world", "sampling", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == sampling(path)
    assert main(["world", "sampling", str(path), "--cfg-scale", "2", "--steps", "3", "--no-fused-commit"]) == 0
    got = sampling(path)
    assert got["cfg_scale"] == 2.0 and got["steps"] == 3 and got["fused_commit"] is False
    before = (path / "world.json").read_text()
    with pytest.raises(SystemExit, match="fused_commit"):
        main(["world", "sampling", str(path), "--fused-commit"])  # with cfg_scale 2: refused
    with pytest.raises(SystemExit, match="context_level"):
        main(["world", "sampling", str(path), "--context-level", str(10 ** 6)])
    assert (path / "world.json").read_text() == before
    assert main(["world", "sampling", str(tmp_path / "b"), "--from", str(path), "--unset", "steps"]) == 0
    copied = sampling(tmp_path / "b")
    assert copied["cfg_scale"] == 2.0 and "steps" not in copied
