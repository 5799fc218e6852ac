"""`driftless train world`: the whole pipeline on the debug preset, its resume, its run folder."""

import json
import shutil

import pytest
import torch

from driftless.cli import main
from driftless.train.world_plan import PLANS, TRAINED, WorldRunConfig, identity, make_plan, stop_rule
from driftless.train.world_run import RUN_FILE, _fit_init, init_checkpoint

from conftest import world_weights

def _train_world(stores, out, *extra):
    rc = main(["train", "world", "--data", str(stores / "toy-train"), "--out", str(out), "--preset", "debug",
               "--device", "cpu", "--no-progress", *extra])
    return rc, json.loads((out / RUN_FILE).read_text())


@pytest.mark.slow
def test_train_world_end_to_end_and_resume_gives_the_same_world(world_stores, tmp_path):
    """Uninterrupted, and stopped twice mid-stage (mid-tokenizer, before its latent statistics are
    fitted; mid-dynamics) then continued by the same command: the same world, bit for bit, and
    the same evaluation."""
    a = tmp_path / "straight"
    rc, status = _train_world(world_stores, a)
    assert rc == 0 and status["state"] == "done" and status["current"] is None
    assert [s for s in status["stages"]] == sorted(["tokenizer", "lam", "latents", "dynamics", "world", "eval"])
    assert all(e["state"] == "done" for e in status["stages"].values())
    assert {status["stages"][s]["step"] for s in TRAINED} == {4} and status["minutes"] > 0
    for path in ("tokenizer/checkpoint/config.json", "lam/checkpoint/config.json", "latents/train/cache.json",
                 "latents/val/cache.json", "dynamics/checkpoint/config.json", "world/world.json", "eval.json"):
        assert (a / path).exists(), path
    world_meta = json.loads((a / "world" / "world.json").read_text())
    assert world_meta["name"] == "toy" and world_meta["action_map"]["keys"]
    assert world_meta["trained_by"]["config"]["preset"] == "debug"
    result = json.loads((a / "eval.json").read_text())
    assert result["data"]["path"].endswith("toy-test") and result["config"]["size"] == "quick"
    assert {"reconstruction", "rollout", "delta", "drift", "latent_actions"} <= set(result)

    b = tmp_path / "interrupted"
    rc, status = _train_world(world_stores, b, "--stop-after", "tokenizer:2")
    assert rc == 0 and status["state"] == "stopped" and status["current"] == {"stage": "tokenizer", "step": 2}
    assert status["stages"]["tokenizer"]["state"] == "stopped" and status["stages"]["lam"]["state"] == "pending"
    rc, status = _train_world(world_stores, b, "--stop-after", "dynamics:1")
    assert status["state"] == "stopped" and status["current"] == {"stage": "dynamics", "step": 1}
    assert [status["stages"][s]["state"] for s in ("tokenizer", "lam", "latents")] == ["done"] * 3
    rc, status = _train_world(world_stores, b)
    assert rc == 0 and status["state"] == "done" and len(status["invocations"]) == 3
    wa, wb = world_weights(a), world_weights(b)
    for c in TRAINED:
        assert wa[c].keys() == wb[c].keys() and all(torch.equal(wa[c][k], wb[c][k]) for k in wa[c]), c
    ra, rb = (json.loads((x / "eval.json").read_text()) for x in (a, b))
    for key in ("reconstruction", "rollout", "delta", "drift", "latent_actions", "action_map"):
        assert ra[key] == rb[key], key
    # a finished run: the same command again does nothing more
    rc, again = _train_world(world_stores, b)
    assert rc == 0 and again["state"] == "done" and again["stages"] == status["stages"]


def test_a_run_folder_belongs_to_one_configuration(world_stores, tmp_path, capsys):
    out = tmp_path / "run"
    rc, status = _train_world(world_stores, out, "--stop-after", "tokenizer:1")
    assert rc == 0 and status["state"] == "stopped"
    assert main(["train", "world", "--data", str(world_stores / "toy-train"), "--out", str(out), "--preset", "debug",
                 "--device", "cpu", "--seed", "3"]) == 1
    err = capsys.readouterr().err
    assert "other settings (seed 0 -> 3)" in err and "--force" in err
    # this invocation's settings (device, time limit, stop) are not the run's
    rc, status = _train_world(world_stores, out, "--stop-after", "tokenizer:1", "--max-minutes", "5")
    assert status["stages"]["tokenizer"]["step"] == 2
    rc, status = _train_world(world_stores, out, "--seed", "3", "--force", "--stop-after", "tokenizer:1")
    assert rc == 0 and status["config"]["seed"] == 3 and status["stages"]["tokenizer"]["step"] == 1
    assert len(status["invocations"]) == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        assert main(["train", "world", "--data", str(world_stores / "toy-train"), "--out", str(other),
                     "--preset", "debug", *extra]) == 1
    assert (other / "notes.txt").exists() and "not" in capsys.readouterr().err


def test_a_spent_time_limit_stops_before_the_next_stage(world_stores, tmp_path):
    out = tmp_path / "run"
    _, status = _train_world(world_stores, out, "--max-minutes", "1e-9")
    assert status["state"] == "stopped" and "time limit" in status["invocations"][-1]["ended"]
    assert all(e["state"] == "pending" for e in status["stages"].values())


def test_plan_budget_batches_and_flags():
    small = WorldRunConfig(out="o", game="coinrun", budget=30)
    gpu, cpu = make_plan(small, "cuda"), make_plan(small, "cpu")
    assert [gpu["stages"][s]["batch_size"] for s in TRAINED] == [192, 96, 256]
    assert [cpu["stages"][s]["batch_size"] for s in TRAINED] == [16, 8, 16]
    assert [gpu["stages"][s]["time_budget"] for s in TRAINED] == pytest.approx([10.8, 5.4, 10.8])
    assert gpu["reserve_minutes"] == pytest.approx(3.0)
    assert cpu["eval"]["size"] == "auto" and gpu["data"]["episodes"] == {"train": 700, "val": 44, "test": 175}
    assert gpu["stages"]["lam"]["steps"] > 10**8  # a budget: steps do not bound it
    base = make_plan(WorldRunConfig(out="o", data="d", preset="base"), "cuda")
    assert base["budget"] == 240 and base["stages"]["tokenizer"]["batch_size"] == 48
    debug = make_plan(WorldRunConfig(out="o", data="d", preset="debug", lam_steps=7), "cpu")
    assert debug["budget"] == 0 and debug["stages"]["lam"]["steps"] == 7
    assert debug["stages"]["tokenizer"]["time_budget"] == 0
    # the preset's defaults written out are the same run as left out
    assert identity(WorldRunConfig(out="a", data="d", budget=60)) == identity(WorldRunConfig(out="b", data="d"))
    assert identity(WorldRunConfig(out="a", data="d", device="cuda", max_minutes=3)) == identity(
        WorldRunConfig(out="a", data="d"))
    for bad in ("1,-1,1", "0,0,0", "1,1"):
        with pytest.raises(ValueError, match="shares"):
            make_plan(WorldRunConfig(out="o", data="d", shares=bad), "cpu")
    kept = make_plan(WorldRunConfig(out="o", data="d", shares="0,1,1", budget=10), "cuda")["stages"]
    assert kept["tokenizer"]["steps"] == 0 and kept["tokenizer"]["time_budget"] == 0
    assert kept["lam"]["time_budget"] == pytest.approx(4.5)
    assert stop_rule("lam:5") == ("lam", 5) and stop_rule("world") == ("world", None)
    for bad in ("nope", "latents:3", "lam:x"):
        with pytest.raises(ValueError, match="stop-after"):
            stop_rule(bad)
    assert set(PLANS) == {"debug", "small", "base"}


def test_init_from_a_world_starts_each_stage_from_its_weights(debug_world, tmp_path):
    """A world's LAM has no decoder (dropped at build): it starts fresh; other weights are the
    world's. A world of another size is refused, naming the tensors."""
    from driftless import checkpoint
    from driftless.train.specs import StageArgs
    from driftless.train.trainer import TrainConfig

    world_lam = json.loads((debug_world / "lam" / "config.json").read_text())["config"]
    args = StageArgs(kind="lam", data="d", out="o", preset="debug", train=TrainConfig(),
                     overrides={"num_actions": world_lam["num_actions"]})
    path = init_checkpoint(args, debug_world / "lam", tmp_path / "lam")
    header = checkpoint.read_header(path, "lam")
    fresh = header["meta"]["fresh"]
    assert fresh and all(k.startswith(("dec_embed.", "dec_pos", "action_in.", "decoder.", "head.")) for k in fresh)
    got, src = checkpoint.read_weights(path), checkpoint.read_weights(debug_world / "lam")
    assert all(torch.equal(got[k], src[k].float()) for k in src)
    tok = StageArgs(kind="tokenizer", data="d", out="o", preset="debug", train=TrainConfig())
    _fit_init(tok, debug_world / "tokenizer")
    with pytest.raises(ValueError, match="does not fit this run's tokenizer"):
        _fit_init(StageArgs(kind="tokenizer", data="d", out="o", preset="small", train=TrainConfig()),
                  debug_world / "tokenizer")


def test_init_from_single_checkpoints_per_stage(debug_world, tmp_path, monkeypatch):
    """--init-from tokenizer=CKPT starts only the tokenizer from CKPT; the run's identity keeps
    absolute paths; malformed pairs and missing checkpoints are refused, naming what was expected."""
    from driftless.train.world_plan import WorldRunConfig, identity
    from driftless.train.world_run import _init_sources

    found = _init_sources(f"tokenizer={debug_world / 'tokenizer'}")
    assert found == {"tokenizer": debug_world / "tokenizer"}
    both = _init_sources(f"tokenizer={debug_world / 'tokenizer'},dynamics={debug_world / 'dynamics'}")
    assert set(both) == {"tokenizer", "dynamics"}
    with pytest.raises(ValueError, match="STAGE=CHECKPOINT"):
        _init_sources(f"decoder={debug_world / 'tokenizer'}")
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        _init_sources(f"lam={tmp_path / 'nothing'}")
    monkeypatch.chdir(debug_world.parent)
    ident = identity(WorldRunConfig(out="o", data="d", init_from=f"tokenizer={debug_world.name}/tokenizer"))
    assert ident["init_from"] == f"tokenizer={debug_world / 'tokenizer'}"


@pytest.mark.slow
def test_train_world_on_another_procgen_game(tmp_path):
    pytest.importorskip("procgen")
    out = tmp_path / "ninja"
    assert main(["train", "world", "--game", "ninja", "--out", str(out), "--preset", "debug", "--device", "cpu",
                 "--episodes", "4", "--max-frames-per-episode", "24", "--no-progress"]) == 0
    status = json.loads((out / RUN_FILE).read_text())
    assert status["state"] == "done" and status["stages"]["data"]["state"] == "done"
    from driftless.data.store import EpisodeStore

    train = EpisodeStore(out / "data" / "train")
    assert train.meta["source"] == "procgen:ninja" and train.num_episodes == 4
    assert EpisodeStore(out / "data" / "test").meta["split"] == "test"
    assert json.loads((out / "world" / "world.json").read_text())["name"] == "ninja"
    ev = json.loads((out / "eval.json").read_text())
    assert ev["data"]["path"].endswith("test")
    # the controls evaluation branches the run's own game (the debug plan: 4 states of 4 frames)
    assert ev["controls"]["available"] and ev["controls"]["game"] == "ninja" and ev["controls"]["starts"] == 4


def test_a_share_of_0_keeps_the_init_from_weights_untrained(world_stores, debug_world, tmp_path, capsys):
    """--shares 0,... with --init-from tokenizer=CKPT: the tokenizer stage trains no step (nothing
    to compile on a GPU), its checkpoint holds CKPT's weights and latent statistics; a 0 share
    for a stage --init-from says nothing about is refused before anything runs."""
    from driftless import checkpoint

    src = debug_world / "tokenizer"
    out = tmp_path / "run"
    _, status = _train_world(world_stores, out, "--init-from", f"tokenizer={src}", "--shares", "0,1,1",
                             "--stop-after", "tokenizer")
    entry = status["stages"]["tokenizer"]
    assert entry["state"] == "done" and entry["step"] == 0 and status["plan"]["stages"]["tokenizer"]["steps"] == 0
    got = checkpoint.read_weights(out / "tokenizer" / "checkpoint", ema=True)
    want = checkpoint.read_weights(src)
    assert set(got) == set(want) and all(torch.equal(got[k].float(), want[k].float()) for k in want)
    header = checkpoint.read_header(out / "tokenizer" / "checkpoint", "tokenizer")
    source = checkpoint.read_header(src, "tokenizer")["config"]
    assert source["latent_mean"] is not None  # kept as it came, not measured again
    assert header["config"]["latent_mean"] == source["latent_mean"]
    assert header["config"]["latent_std"] == source["latent_std"]
    capsys.readouterr()
    assert main(["train", "world", "--data", str(world_stores / "toy-train"), "--out", str(tmp_path / "other"),
                 "--preset", "debug", "--device", "cpu", "--shares", "1,0,1"]) != 0
    assert "--shares gives the lam stage" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_continued_world_keeps_the_sampling_tuned_for_its_dynamics(world_stores, debug_world, tmp_path):
    """--init-from a world continues its dynamics: the rebuilt world starts from the sampling
    settings tuned for it (world.json's sampling; stop 29's world came out at the model's 8 steps
    where its parent played at 4), --sampling-steps still wins; single checkpoints carry none."""
    from driftless.train.world_run import init_sampling

    src = shutil.copytree(debug_world, tmp_path / "parent")
    meta = json.loads((src / "world.json").read_text())
    meta["sampling"] = {"context_level": 7, "temperature": 0.6, "steps": 3}
    (src / "world.json").write_text(json.dumps(meta))
    assert init_sampling(str(src)) == (meta["sampling"], src / "world.json")
    assert init_sampling(f"dynamics={src / 'dynamics'}") == ({}, None)
    out = tmp_path / "run"
    rc, status = _train_world(world_stores, out, "--init-from", str(src), "--shares", "0,0,1",
                              "--stop-after", "world", "--sampling-steps", "2")
    assert rc == 0 and status["stages"]["world"]["sampling_from"] == str(src / "world.json")
    got = json.loads((out / "world" / "world.json").read_text())["sampling"]
    assert got == {"context_level": 7, "temperature": 0.6, "steps": 2}
    assert init_sampling(str(out)) == (got, out / "world" / "world.json")  # a run folder: its built world


def test_no_progress_means_no_progress_bars(world_stores, tmp_path, capsys):
    """--no-progress silences the stages' own bars too (a GPU job's log held little else)."""
    capsys.readouterr()
    rc, status = _train_world(world_stores, tmp_path / "quiet", "--stop-after", "tokenizer:2")
    assert rc == 0 and status["stages"]["tokenizer"]["step"] == 2
    captured = capsys.readouterr()
    assert "train tokenizer" not in captured.err + captured.out and "it/s" not in captured.err


def test_init_from_keeps_the_architecture_it_was_trained_with(world_stores, tmp_path, capsys):
    """A tokenizer with twice the debug preset's latent channels, continued with --init-from and
    a share of 0: the run adopts its latent width (and says so) instead of refusing it, so a
    world of a wider tokenizer continues with the same flags it was trained with; --set still
    wins (and then the shapes are refused, naming the tensors)."""
    from driftless import checkpoint
    from driftless.config import override, to_dict
    from driftless.models import registry

    base = registry.preset("tokenizer", "debug")
    wide = override(base, {"latent_dim": 2 * base.latent_dim})
    src = tmp_path / "wide"
    checkpoint.save(src, "tokenizer", to_dict(wide), registry.build("tokenizer", wide).state_dict(),
                    meta={"preset": "debug"})
    out = tmp_path / "run"
    rc, status = _train_world(world_stores, out, "--init-from", f"tokenizer={src}", "--shares", "0,1,1",
                              "--stop-after", "tokenizer", "--progress")
    assert rc == 0 and status["stages"]["tokenizer"]["state"] == "done"
    header = checkpoint.read_header(out / "tokenizer" / "checkpoint", "tokenizer")
    assert header["config"]["latent_dim"] == 2 * base.latent_dim
    assert f"keeps its latent_dim={2 * base.latent_dim}" in capsys.readouterr().out
    assert main(["train", "world", "--data", str(world_stores / "toy-train"), "--out", str(tmp_path / "narrow"),
                 "--preset", "debug", "--device", "cpu", "--no-progress", "--init-from", f"tokenizer={src}",
                 "--shares", "0,1,1", "--set", f"tokenizer.latent_dim={base.latent_dim}"]) != 0
    assert "does not fit this run's tokenizer" in capsys.readouterr().err


@pytest.mark.slow
def test_a_budgeted_run_stops_each_stage_on_time_and_resumes_with_its_clock(world_stores, tmp_path):
    """--budget: each stage trains for its share (the cosine schedule over time) and a stage that
    starts later gets its share of what is left; stopped mid-LAM, the same command resumes it at
    its step with the minutes already spent counted."""
    out = tmp_path / "run"
    rc, status = _train_world(world_stores, out, "--budget", "0.1", "--stop-after", "lam:2")
    assert status["state"] == "stopped" and status["current"] == {"stage": "lam", "step": 2}
    assert status["stages"]["tokenizer"]["stopped"] == "time_budget"
    rc, status = _train_world(world_stores, out, "--budget", "0.1")
    assert rc == 0 and status["state"] == "done" and len(status["invocations"]) == 2
    plan = status["plan"]
    assert plan["budget"] == 0.1 and plan["reserve_minutes"] == pytest.approx(0.01)
    for s in TRAINED:
        entry = status["stages"][s]
        assert entry["stopped"] == "time_budget" and entry["step"] >= (2 if s == "lam" else 1), (s, entry)
        assert 0 < plan["stages"][s]["time_budget"] <= plan["stages"][s]["planned_time_budget"] + 1e-9
    assert sum(plan["stages"][s]["planned_time_budget"] for s in TRAINED) == pytest.approx(0.09)
