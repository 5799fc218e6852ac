"""Maze2D evaluation: D4RL normalisation, reference policies, and the CLI end to end."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium_robotics")

from driftless.cli import build_parser  # noqa: E402
from driftless.plan.evaluate import D4RL_REF, evaluate, mean_se, normalized_score  # noqa: E402


def test_normalized_score_uses_d4rl_references():
    assert D4RL_REF["umaze"] == (23.85, 161.86)
    assert D4RL_REF["medium"] == (13.13, 277.39)
    assert D4RL_REF["large"] == (6.7, 273.99)
    np.testing.assert_allclose(normalized_score([23.85, 161.86], "umaze"), [0.0, 100.0])
    np.testing.assert_allclose(normalized_score([277.39], "medium"), [100.0])
    with pytest.raises(ValueError, match="no D4RL reference"):
        normalized_score([1.0], "tiny")


def test_mean_se():
    m, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5
    assert se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert mean_se([7.0]) == (7.0, 0.0)
    with pytest.raises(ValueError):
        mean_se([])


def test_controller_beats_random():
    ctrl = evaluate("umaze", "controller", 4, batch=4, seed=1, progress=False)
    rand = evaluate("umaze", "random", 4, batch=4, seed=1, progress=False)
    assert ctrl.returns.shape == (4,)
    assert ctrl.normalized.mean() > 60 and ctrl.normalized.mean() > rand.normalized.mean() + 40
    s = ctrl.summary()
    assert s["episodes"] == 4 and s["method"] == "controller"
    with pytest.raises(ValueError, match="needs a trained sequence model"):
        evaluate("umaze", "df", 1, progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        evaluate("umaze", "teleport", 1, progress=False)


def _tiny_checkpoint(parser, tmp_path, steps: int):
    """`driftless data maze` (the open maze, 400 steps) -> `plan train` (debug preset) into tmp_path/ck."""
    a = parser.parse_args(["data", "maze", "--maze", "open", "--steps", "400", "--out", str(tmp_path), "--quiet"])
    assert a.func(a) == 0
    ck = tmp_path / "ck"
    a = parser.parse_args(["plan", "train", "--data", str(tmp_path / "open.npz"), "--out", str(ck), "--preset",
                           "debug", "--steps", str(steps), "--batch", "4", "--frame-stack", "5", "--tokens", "3",
                           "--device", "cpu"])
    assert a.func(a) == 0
    return ck


def test_cli_train_and_plan(tmp_path):
    """`driftless data maze` -> `plan train` -> `plan maze`, tiny sizes."""
    parser = build_parser()
    ck = _tiny_checkpoint(parser, tmp_path, steps=3)
    out = tmp_path / "res.json"
    args = parser.parse_args(["plan", "maze", "--maze", "open", "--checkpoint", str(ck), "--method", "df",
                              "diffuser-pd", "--episodes", "1", "--batch", "1", "--mctg", "2", "--sampling-steps",
                              "2", "--device", "cpu", "--json", str(out), "--plot", str(tmp_path / "p.png")])
    assert args.func(args) == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["df", "diffuser-pd"] and rows[0]["mctg"] == 2
    assert (tmp_path / "p-df.png").stat().st_size > 1000
    args = parser.parse_args(["plan", "maze", "--maze", "umaze", "--checkpoint", str(ck), "--episodes", "1",
                              "--device", "cpu"])
    with pytest.raises(ValueError, match="trained on maze"):
        args.func(args)
    # a second session continues the first one's weights; another configuration is refused
    from driftless import checkpoint
    from driftless.models.registry import load_model
    from driftless.plan.train import _continue_from

    common = ["--data", str(tmp_path / "open.npz"), "--preset", "debug", "--batch", "4", "--frame-stack", "5",
              "--tokens", "3", "--device", "cpu", "--init-from", str(ck)]
    args = parser.parse_args(["plan", "train", "--out", str(tmp_path / "ck2"), "--steps", "1", *common])
    assert args.func(args) == 0
    first, model = checkpoint.read_weights(ck), load_model(ck, "cpu", kind="sequence_df")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    _continue_from(model, str(ck), "cpu")
    assert all(torch.equal(v.float(), first[k].float()) for k, v in model.state_dict().items())
    other = parser.parse_args(["plan", "train", "--out", str(tmp_path / "ck3"), "--steps", "1", *common[:-6],
                               "--frame-stack", "4", "--tokens", "3", "--device", "cpu", "--init-from", str(ck)])
    with pytest.raises(ValueError, match="another configuration.*frame_stack"):
        other.func(other)


def test_guidance_rule():
    from driftless.plan.evaluate import choose_guidance

    def s(g, m):
        return {"guidance": g, "normalized_mean": m}

    assert choose_guidance([s(1.5, 40.0), s(3.0, 80.0), s(6.0, 60.0)])["guidance"] == 3.0
    # within 1 % of the best, the smallest scale wins; 2 % below does not
    assert choose_guidance([s(12.0, 100.0), s(6.0, 99.5), s(3.0, 98.0)])["guidance"] == 6.0
    with pytest.raises(ValueError, match="at least one"):
        choose_guidance([])


def test_cli_tune_stores_the_scale_plan_maze_uses(tmp_path):
    """`plan tune` scores scales on validation episodes, writes planner.json; `plan maze` takes it."""
    parser = build_parser()
    ck = _tiny_checkpoint(parser, tmp_path, steps=2)
    # --set reaches the model's config; a continuation may change how it is trained (the loss
    # weighting), not what it is (the width)
    common = ["plan", "train", "--data", str(tmp_path / "open.npz"), "--preset", "debug", "--steps", "1",
              "--batch", "4", "--frame-stack", "5", "--tokens", "3", "--device", "cpu", "--init-from", str(ck)]
    a = parser.parse_args([*common, "--out", str(tmp_path / "u"), "--set", "diffusion.weighting=uniform",
                           "--precision", "fp32"])
    assert a.func(a) == 0
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    assert "uniform" in json.dumps(cfg) and '"precision": "fp32"' in json.dumps(cfg)
    a = parser.parse_args([*common, "--out", str(tmp_path / "w"), "--set", "width=48"])
    with pytest.raises(ValueError, match="another configuration"):
        a.func(a)
    flags = ["--maze", "open", "--checkpoint", str(ck), "--episodes", "2", "--batch", "2", "--mctg", "2",
             "--sampling-steps", "2", "--device", "cpu"]
    a = parser.parse_args(["plan", "tune", *flags, "--guidance", "0.5", "2", "--seed", "0"])
    with pytest.raises(ValueError, match="evaluation seed"):
        a.func(a)
    a = parser.parse_args(["plan", "tune", *flags, "--guidance", "0.5", "2", "--json", str(tmp_path / "t.json")])
    assert a.func(a) == 0
    settings = json.loads((ck / "planner.json").read_text())
    rec = settings["single_task"]
    assert [s["guidance"] for s in rec["scores"]] == [0.5, 2.0]
    best = max(s["normalized_mean"] for s in rec["scores"])
    assert rec["guidance"] in (0.5, 2.0) and rec["chosen_by"]["seed"] == 1 and rec["mctg"] == 2
    assert rec["precision"] == "fp32"  # the planner's default (bf16 only when asked)
    chosen = next(s for s in rec["scores"] if s["guidance"] == rec["guidance"])
    assert chosen["normalized_mean"] >= best - 0.01 * abs(best)
    assert json.loads((tmp_path / "t.json").read_text())["guidance"] == rec["guidance"]
    # plan maze without --guidance plays the tuned scale; --guidance wins; another task keeps the default
    out = tmp_path / "res.json"
    a = parser.parse_args(["plan", "maze", *flags, "--episodes", "1", "--batch", "1", "--json", str(out)])
    assert a.func(a) == 0
    row = json.loads(out.read_text())[0]
    assert row["guidance"] == rec["guidance"] and row["guidance_from"].startswith("tuned")
    assert row["precision"] == "fp32"
    a = parser.parse_args(["plan", "maze", *flags, "--episodes", "1", "--batch", "1", "--guidance", "7",
                           "--json", str(out)])
    assert a.func(a) == 0 and json.loads(out.read_text())[0]["guidance"] == 7.0
    a = parser.parse_args(["plan", "maze", *flags, "--episodes", "1", "--batch", "1", "--multi-task",
                           "--json", str(out)])
    assert a.func(a) == 0 and json.loads(out.read_text())[0]["guidance_from"] == "default"
    # plan show: one panel per scale, from every open cell; the tuned scale when none is given
    a = parser.parse_args(["plan", "show", "--maze", "open", "--checkpoint", str(ck), "--out", str(tmp_path / "s.png"),
                           "--mctg", "1", "--sampling-steps", "2", "--device", "cpu"])
    assert a.func(a) == 0 and (tmp_path / "s.png").stat().st_size > 1000
    from driftless.models.registry import load_model
    from driftless.plan.evaluate import show_plans
    from driftless.plan.planner import PlannerConfig

    rows = show_plans("open", load_model(ck, "cpu", kind="sequence_df"), [0.0, 2.0],
                      PlannerConfig(horizon=3, sampling_steps=2), tmp_path / "t.png")
    assert [r["guidance"] for r in rows] == [0.0, 2.0] and rows[0]["plans"] == 14  # the open cells but G
    assert all(0 <= r[k] <= 1 for r in rows for k in ("through_walls", "impossible_steps", "impossible_on_seams"))
    a = parser.parse_args(["plan", "show", "--maze", "open", "--checkpoint", str(ck), "--out", str(tmp_path / "s.png"),
                           "--starts=-1:0,-3:2", "--device", "cpu"])
    with pytest.raises(ValueError, match="inside walls"):
        a.func(a)
    (ck / "planner.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable planner settings"):
        a.func(a)


def test_plans_in_walls():
    from driftless.plan.evaluate import plans_in_walls
    from driftless.plan.maze import get_maze

    spec = get_maze("umaze")
    lower, upper = spec.cell_to_xy((3, 1)), spec.cell_to_xy((1, 1))  # the two arms' left ends
    wall = spec.cell_to_xy((2, 1))  # the U's inner wall between them
    assert spec.walls[2, 1] and not spec.walls[3, 1] and not spec.walls[1, 1]
    straight = np.linspace(lower, upper, 30)  # straight up through the inner wall
    around = np.concatenate([np.linspace(lower, spec.cell_to_xy((3, 3)), 10), np.linspace(spec.cell_to_xy((3, 3)),
                             spec.cell_to_xy((1, 3)), 10), np.linspace(spec.cell_to_xy((1, 3)), upper, 10)])
    assert plans_in_walls("umaze", np.stack([straight, around])).tolist() == [True, False]
    assert spec.walls[spec.xy_to_cell(wall)]


def test_impossible_steps():
    from driftless.plan.evaluate import MAX_STEP, impossible_steps

    walk = np.cumsum(np.full((1, 30, 2), 0.03), axis=1)  # 0.042 per step: allowed
    assert not impossible_steps(walk).any()
    walk[0, 10:] += 0.2  # a seam: one step of 0.24
    got = impossible_steps(walk)
    assert got.shape == (1, 29) and got.sum() == 1 and got[0, 9]
    assert 0.07 < MAX_STEP < 0.072
