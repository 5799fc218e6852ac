"""Keys that do what they say: scene shifts, the one-to-one assignment, the fit by effect and by
motion, the controls evaluation and `driftless world refit-actions`.

The toy world here is a real `World` over hand-written modules (pixels are the latents): latent
action a moves the scene by SHIFTS[a] pixels per frame, so which key should map to which latent
action is known. Its "game" is a large texture seen through a 64x64 camera window that the
controls move (the camera follows the agent: "right" moves the scene left, "jump" moves it down).
"""

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from toys import ToyDynamics, ToyTokenizer

from driftless.world.controls import (
    CONTROL_ACTIONS,
    HEADLINE,
    assign_controls,
    assign_one_to_one,
    key_accuracy,
    keys_of,
    measure_starts,
    nearest_rates,
    scene_shift,
)
from driftless.world.world import World

RES, P = 64, 8
# scene motion (dy, dx) per frame of each toy latent action: 0 still, 1 like left, 2 falls,
# 3 like right, 4 like jump (a CoinRun jump moves the scene down 7+ px a frame), 5 drifts diagonally
SHIFTS = [(0, 0), (0, 1), (-1, 0), (0, -1), (4, 0), (1, 1)]
KNOWN = {"none": 0, "left": 1, "right": 3, "jump": 4}
# how each control moves the camera window over the level (dy, dx per frame)
CAMERA = {"left": (0, -1), "right": (0, 1), "jump": (-4, 0), "none": (0, 0), "left_jump": (-4, -1),
          "right_jump": (-4, 1)}


class ShiftDynamics(ToyDynamics):
    """Latent action a rolls the last frame by SHIFTS[a] per frame."""

    def __init__(self, tok):
        super().__init__(tok, len(SHIFTS))

    def generate_frame(self, state, actions, **kw):
        f = torch.stack([torch.roll(x, SHIFTS[int(a)], dims=(0, 1)) for x, a in zip(state["frame"], actions)])
        state["frame"] = f
        return self.tok.encode(f[:, None])


def toy_world(keys: dict | None = None) -> World:
    tok = ToyTokenizer(RES, P)
    return World(tok, None, ShiftDynamics(tok), meta={"name": "toy", "action_map": {"keys": keys or {}}})


def level(seed: int, size: int = 192) -> np.ndarray:
    """A smooth random colour texture with some sharp blocks: uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((size, size, 3)), sigma=(4, 4, 0))
    img = (img - img.min()) / (img.max() - img.min())
    for _ in range(30):
        y, x = rng.integers(0, size - 8, size=2)
        img[y:y + 6, x:x + 6] = rng.random(3)
    return (img * 255).astype(np.uint8)


def toy_starts(n: int = 6, context: int = 2, frames: int = 6, seed: int = 0) -> dict:
    """Branch points of the texture "game": the real branches of every control, as sample_starts returns."""
    rng = np.random.default_rng(seed)
    controls = list(CONTROL_ACTIONS)
    ctx, real = [], []
    for i in range(n):
        tex = level(seed * 100 + i)
        y, x = rng.integers(60, 80, size=2)
        ctx.append(np.stack([tex[y:y + RES, x:x + RES]] * context))
        branch = []
        for c in controls:
            vy, vx = CAMERA[c]
            branch.append(np.stack([tex[y + vy * t:y + vy * t + RES, x + vx * t:x + vx * t + RES]
                                    for t in range(1, frames + 1)]))
        real.append(np.stack(branch))
    return {"context": np.stack(ctx), "real": np.stack(real), "controls": controls}


def test_scene_shift_reads_known_shifts_sharp_and_blurred():
    tex = level(1)
    ref = tex[50:50 + RES, 50:50 + RES]
    moves = [(0, 0), (2, -3), (0, 5), (-4, 0), (7, 7)]  # content moved by (dy, dx)
    frames = np.stack([tex[50 - dy:50 - dy + RES, 50 - dx:50 - dx + RES] for dy, dx in moves])
    np.testing.assert_allclose(scene_shift(ref, frames), moves, atol=0.25)
    blurred = gaussian_filter(frames, sigma=(0, 2, 2, 0))  # a blurry world is read the same way
    np.testing.assert_allclose(scene_shift(ref, blurred), moves, atol=0.5)
    assert scene_shift(ref[None], frames[None]).shape == (1, len(moves), 2)


def test_one_to_one_assignment():
    # left and jump both like latent action 0 best; the assignment gives each control its own
    scores = np.array([[0.9, 0.1, 0.2, 0.0],
                       [0.1, 0.3, 0.8, 0.0],
                       [0.8, 0.7, 0.1, 0.0]])
    got = assign_one_to_one(scores, ["left", "right", "jump"])
    assert got == {"left": 0, "right": 2, "jump": 1}
    assert len(set(got.values())) == 3
    assert assign_one_to_one(scores, ["left", "right", "jump"], exclude={0}) == {"left": 3, "right": 2, "jump": 1}
    with pytest.raises(ValueError, match="distinct"):
        assign_one_to_one(scores[:, :2], ["left", "right", "jump"])
    # the full map: left/right/jump jointly, then none on a latent action left over, never shared
    rates3 = np.array([[0.2, 0.9, 0.1, 0.3, 0.2, 0.1], [0.3, 0.1, 0.2, 0.9, 0.3, 0.1], [0.2, 0.2, 0.3, 0.1, 0.9, 0.8]])
    rates4 = np.vstack([rates3 * 0.8, [[0.9, 0.95, 0.1, 0.2, 0.3, 0.1]]])  # none likes action 1 best: taken by left
    rates6 = np.vstack([rates4, [[0.1, 0.1, 0.1, 0.1, 0.1, 0.5], [0.1, 0.1, 0.9, 0.1, 0.1, 0.1]]])
    groups = assign_controls(rates3, rates4, rates6)
    assert groups == {"left": 1, "right": 3, "jump": 4, "none": 0, "left_jump": 5, "right_jump": 2}
    keys = keys_of(groups)
    assert keys["ArrowUp"] == keys[" "] == 4 and keys["ArrowDown"] == 0
    assert len({groups[c] for c in ("left", "right", "jump", "none")}) == 4


def test_fit_by_effect_recovers_the_known_codes_of_a_toy_world():
    """Rolled out from the same frames, each toy latent action's branch is nearest the real branch of
    the control it was built to mimic: the fit finds them and the controls accuracy is 1; a map with
    left and right swapped scores 0."""
    world = toy_world()
    starts = toy_starts()
    m = measure_starts(world, starts, batch_size=8)
    assert m["gen"].shape == (6, len(SHIFTS), 6, RES, RES, 3) and m["dist"].shape == (6, len(SHIFTS), 6)
    groups = assign_controls(m["rates3"], m["rates4"], m["rates6"])
    assert {c: groups[c] for c in KNOWN} == KNOWN
    np.testing.assert_allclose(m["motion"][3], (0, -6), atol=0.3)  # "right": the scene moved 6 px left
    good = key_accuracy(m["rates3"], m["codes"], keys_of(groups))
    assert good["mean"] == 1.0 and good["keys"]["ArrowRight"] == 1.0 and good["chance"] == pytest.approx(1 / 3)
    swapped = key_accuracy(m["rates3"], m["codes"], {"ArrowLeft": 3, "ArrowRight": 1, "ArrowUp": 4})
    assert swapped["controls"] == {"left": 0.0, "right": 0.0, "jump": 1.0}
    # the pixel measure agrees on this sharp toy world
    mp = measure_starts(world, starts, measure="pixel", batch_size=8, gen=m["gen"])
    assert {c: assign_controls(mp["rates3"], mp["rates4"])[c] for c in KNOWN} == KNOWN
    # ties (two identical real branches) share the credit
    dist = np.zeros((2, 1, 3))
    np.testing.assert_allclose(nearest_rates(dist, HEADLINE), [[1 / 3], [1 / 3], [1 / 3]])


def test_fit_by_motion_without_a_game():
    """Video-file worlds: keys from the scene motion of each latent action alone."""
    from driftless.world.controls import fit_by_motion

    am, arrays = fit_by_motion(toy_world(), toy_starts(n=4)["context"], frames=5, batch_size=8)
    assert am["method"] == "motion" and {c: am["groups"][c] for c in KNOWN} == KNOWN
    assert am["keys"]["ArrowRight"] == 3 and am["keys"]["ArrowDown"] == 0
    assert len(am["scores"]["ArrowLeft"]) == len(SHIFTS) and arrays["gen"].shape[:3] == (4, len(SHIFTS), 5)


procgen = pytest.importorskip("procgen")


def test_branches_of_the_real_game():
    """Saved Procgen states branch reproducibly: the same seed gives the same starts and branches;
    the controls lead to different frames; no branch crosses an episode's end."""
    from driftless.world.controls import BranchConfig, sample_starts

    cfg = BranchConfig(starts=3, frames=4, context=2, warmup_min=8, warmup_max=20, split="test", seed=3)
    a, b = sample_starts(cfg), sample_starts(cfg)
    assert a["context"].shape == (3, 2, 64, 64, 3) and a["real"].shape == (3, 6, 4, 64, 64, 3)
    np.testing.assert_array_equal(a["real"], b["real"])
    np.testing.assert_array_equal(a["context"], b["context"])
    assert all(10500 <= lv < 11000 for lv in a["levels"]) and a["controls"] == list(CONTROL_ACTIONS)
    right, jump = a["controls"].index("right"), a["controls"].index("jump")
    assert all(not np.array_equal(a["real"][i, right], a["real"][i, jump]) for i in range(3))


def test_controls_evaluation_on_a_world_whose_codes_are_known(tmp_path):
    """The controls part of `driftless eval` on real CoinRun states: the toy world's keys, mapped as
    it was built, move it like the game's controls in most held-out states (chance 1/3), far more
    than the map with left and right swapped; the best one-to-one map found on these states is the
    known one; the shift measure tells the real game's own controls apart."""
    from driftless.eval.controls import controls_protocol, write_strips

    known = {"ArrowLeft": 1, "ArrowRight": 3, "ArrowUp": 4, " ": 4, "ArrowDown": 0}
    res, art = controls_protocol(toy_world(known), game="coinrun", starts=12, frames=6, batch_size=36)
    assert res["available"] and res["game"] == "coinrun" and res["split"] == "test" and res["starts"] == 12
    acc = res["accuracy"]
    assert set(acc["controls"]) == set(HEADLINE) and acc["chance"] == pytest.approx(1 / 3)
    assert min(acc["controls"].values()) >= 0.75 and acc["mean"] >= 0.85
    swapped = (res["rates"]["left"][3] + res["rates"]["right"][1] + res["rates"]["jump"][4]) / 3
    assert swapped < 0.5
    assert {k: res["best_map"][k] for k in ("ArrowLeft", "ArrowRight", "ArrowUp")} == \
        {"ArrowLeft": 1, "ArrowRight": 3, "ArrowUp": 4}
    assert len(res["rates"]["right"]) == len(SHIFTS) and res["real_game_check"]["mean"] >= 0.8
    assert res["other_measures"]["pixel"]["map"] >= 0.6
    paths = write_strips({"controls": res}, art, tmp_path)
    assert len(paths) == 3 and all(p.endswith(".png") for p in paths)
    unavailable, _ = controls_protocol(toy_world(known))  # no game named anywhere
    assert unavailable["available"] is False and "game" in unavailable["reason"]


def test_refit_actions_cli_on_a_debug_world(debug_world, tmp_path):
    """`driftless world refit-actions` rewrites world.json's map (one code per control, the evidence,
    held-out accuracy, previews); old readers still find keys, accuracy and majority_baseline."""
    import shutil

    from driftless.cli import main
    from driftless.world.world import load

    world = tmp_path / "w"
    shutil.copytree(debug_world, world)
    rc = main(["world", "refit-actions", str(world), "--game", "coinrun", "--action-starts", "3",
               "--action-frames", "3", "--eval-starts", "3", "--no-progress"])
    assert rc == 0
    am = json.loads((world / "world.json").read_text())["action_map"]
    n = load(world).num_actions
    assert am["method"] == "effect" and am["fit"]["game"] == "coinrun" and am["fit"]["starts"] == 3
    codes = [am["groups"][c] for c in ("left", "right", "jump", "none")]
    assert len(set(codes)) == 4 and all(0 <= a < n for a in codes)
    assert set(am["scores"]) == {"ArrowLeft", "ArrowRight", "ArrowUp", " ", "ArrowDown"}
    assert all(len(v) == n for v in am["scores"].values())
    assert am["heldout"]["starts"] == 3 and am["majority_baseline"] == pytest.approx(1 / 3)
    assert 0 <= am["accuracy"] <= 1 and am["accuracy"] == am["heldout"]["accuracy"]["mean"]
    assert sorted(am["previews"]["files"]) == [str(a) for a in range(n)]
    assert all((world / "previews" / f).stat().st_size > 0 for f in am["previews"]["files"].values())
    from PIL import Image

    with Image.open(world / "previews" / am["previews"]["files"]["0"]) as im:  # palette PNGs: they ship
        assert im.mode == "P" and im.size == (4 * 64, 2 * 64 + 2)  # 2 starts x (last real frame + 3 frames)
    assert load(world).action_map["keys"] == am["keys"]
    # the play server reads it: per-key accuracy, how it was fitted, the palette's previews
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from driftless.serve.app import create_app

    with TestClient(create_app(load(world), warm=False, allowed_hosts=("testserver",))) as client:  # TestClient's Host
        info = client.get("/api/info").json()["world"]["action_map"]
        assert info["method"] == "effect" and info["keys"] == am["keys"] and info["game"] == "coinrun"
        assert set(info["key_accuracy"]) == set(am["key_accuracy"]) and info["heldout_starts"] == 3
        assert sorted(info["previews"]) == [str(a) for a in range(n)] and len(info["effects"]["jump"]) == n
        png = client.get(info["previews"]["0"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG")
        assert client.get(f"/api/actions/{n}.png").status_code == 404


def test_latent_action_probe_on_held_action_clips(debug_world):
    from driftless.eval.controls import latent_action_probe
    from driftless.world.world import load

    probe = latent_action_probe(load(debug_world), episodes=2, max_frames=40, split="val")
    assert probe["available"] and probe["transitions"] == 2 * 2 * 15  # two 16-frame clips per 40-frame episode
    assert 0 <= probe["accuracy"] <= 1 and 0 <= probe["majority_baseline"] <= 1
    assert set(probe["per_group_recall"]) == {"none", "left", "right", "jump", "left_jump", "right_jump"}


def test_key_accuracy_interval_brackets_the_estimate_and_narrows_with_starts():
    """The bootstrap interval over starts: a map right at every start has no spread; one right at
    about half the starts gets an interval around its estimate that narrows with four times the starts."""
    from driftless.world.controls import key_accuracy_interval

    keys = {"ArrowLeft": 0, "ArrowRight": 1, "ArrowUp": 2}
    perfect = np.ones((10, 3, 3))
    for a in range(3):
        perfect[:, a, a] = 0.0  # code a's branch is nearest control a's real branch at every start
    ci = key_accuracy_interval(perfect, HEADLINE, [0, 1, 2], keys, resamples=200)
    assert ci["mean"] == [1.0, 1.0] and ci["controls"]["jump"] == [1.0, 1.0]

    def coin(n, seed):
        rng = np.random.default_rng(seed)
        d = np.ones((n, 3, 3))
        for a in range(3):
            hit = rng.random(n) < 0.5
            d[hit, a, a] = 0.0
            d[~hit, a, (a + 1) % 3] = 0.0
        return d

    small, large = coin(32, 1), coin(128, 2)
    est = key_accuracy(nearest_rates(small, HEADLINE), [0, 1, 2], keys)["mean"]
    lo, hi = key_accuracy_interval(small, HEADLINE, [0, 1, 2], keys)["mean"]
    assert lo < est < hi and 0.1 < hi - lo < 0.4
    lo4, hi4 = key_accuracy_interval(large, HEADLINE, [0, 1, 2], keys)["mean"]
    assert hi4 - lo4 < 0.7 * (hi - lo)


def test_a_world_on_true_actions_keys_the_games_own_actions(tmp_path):
    """A dynamics conditioned on Procgen's actions gets keys = the game's actions at build time (a
    co-occurrence map of LAM codes would name codes it never saw); a LAM world keeps the map it is given."""
    from driftless.world.action_map import KEY_GROUPS, PROCGEN_GROUPS
    from driftless.world.debug import make_debug_world

    given = {"method": "cooccurrence", "keys": {"ArrowLeft": 0}, "accuracy": 0.5}
    true_world = make_debug_world(tmp_path / "true", num_actions=16, action_map=given,
                                  dynamics_overrides={"action_source": "true"})
    am = json.loads((true_world / "world.json").read_text())["action_map"]
    assert am["method"] == "true"
    for key, action in am["keys"].items():  # each key's action is in its control group
        assert action in PROCGEN_GROUPS[KEY_GROUPS[key]], (key, action)
    assert am["keys"]["ArrowLeft"] != am["keys"]["ArrowRight"]
    lam_world = make_debug_world(tmp_path / "lam", num_actions=16, action_map=given)
    assert json.loads((lam_world / "world.json").read_text())["action_map"] == given
