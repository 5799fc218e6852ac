"""`driftless rollout` (the files it writes, its errors) and `driftless play` (starts, prints its URL)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from driftless.cli import main

ACTION_MAP = {"keys": {"ArrowLeft": 1, "ArrowRight": 2, "ArrowUp": 3, " ": 3, "ArrowDown": 0}, "accuracy": 0.5}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from driftless.world.debug import make_debug_world

    return make_debug_world(tmp_path_factory.mktemp("rollout") / "world", action_map=ACTION_MAP)


@pytest.fixture(scope="module")
def prompt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompt") / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def run(args, capsys):
    args = [str(a) for a in args]
    if args[0] == "rollout" and "--threads" not in args:
        args += ["--threads", "1"]  # the CLI sets torch's thread count for the whole process
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def mp4_frames(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_rollout_given_actions_to_mp4_gif_png(world_dir, prompt, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc, stdout, err = run(["rollout", world_dir, "--prompt", prompt, "--actions", "0,3,3,1", "--out", out,
                           "--scale", 2, "--threads", 1], capsys)
    assert rc == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["frames"] == 5 and summary["batch"] == 1 and summary["frames_per_s"] > 0
    frames = mp4_frames(out)
    assert len(frames) == 5 and frames[0].shape == (128, 128, 3)
    assert "rollout" in err  # the progress bar

    # the same rollout as a GIF and as a PNG strip: same seed, same frames
    gif, png = tmp_path / "out.gif", tmp_path / "strip.png"
    for path in (gif, png):
        rc, _, err = run(["rollout", world_dir, "--prompt", prompt, "--actions", "0 3 3 1", "--out", path,
                          "--scale", 2, "--quiet", "--threads", 1], capsys)
        assert rc == 0, err
    im = Image.open(gif)
    assert im.size == (128, 128) and 2 <= im.n_frames <= 5
    strip = np.asarray(Image.open(png).convert("RGB"))
    # --scale 2 -> strip scale 1: five 64x64 frames side by side with 2-pixel gaps
    assert strip.shape == (64, 5 * 64 + 4 * 2, 3)
    gen = strip[:, 4 * 66: 4 * 66 + 64]  # the last generated frame
    first = strip[:, :64]
    assert not np.array_equal(gen, first)
    # the first frame is the prompt, center-cropped 48x48 and resized to 64x64
    src = np.asarray(Image.open(prompt).convert("RGB"))[:, 16:64]
    expect = np.asarray(Image.fromarray(src).resize((64, 64), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(first, expect)


def test_rollout_random_policy_batched(world_dir, prompt, tmp_path, capsys):
    out = tmp_path / "grid.mp4"
    rc, stdout, err = run(["rollout", world_dir, "--prompt", prompt, "--steps", 6, "--policy", "random",
                           "--batch", 4, "--out", out, "--scale", 1, "--quiet", "--threads", 1], capsys)
    assert rc == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["batch"] == 4 and summary["frames"] == 7
    assert summary["frames_per_s"] == pytest.approx(4 * summary["steps_per_s"], rel=0.02)
    frames = mp4_frames(out)
    assert len(frames) == 7 and frames[0].shape == (130, 130, 3)  # a 2x2 grid with a 2-pixel gap
    last = frames[-1].astype(int)
    tiles = [last[:64, :64], last[:64, 66:], last[66:, :64], last[66:, 66:]]
    # different random actions per rollout -> different frames (yuv420p keeps them apart)
    assert max(np.abs(tiles[0] - t).mean() for t in tiles[1:]) > 1


@pytest.mark.parametrize("args, message", [
    (["--actions", "0,9"], "out of range"),
    (["--actions", "0,x"], "integers"),
    (["--actions", ""], "integers"),
    (["--policy", "random"], "--steps"),
    (["--policy", "random", "--steps", "3", "--actions", "1"], "drop --actions"),
    ([], "--actions"),
    (["--actions", "1", "--out-ext", ".avi"], ".mp4, .gif or .png"),
    (["--actions", "1", "--no-prompt"], "exactly one of --prompt"),
    (["--actions", "1", "--level", "10600"], "exactly one of --prompt"),
    (["--actions", "1", "--batch", "0"], "--batch"),
])
def test_rollout_errors(world_dir, prompt, tmp_path, capsys, args, message):
    out = tmp_path / ("x.avi" if "--out-ext" in args else "x.gif")
    args = [a for a in args if a not in ("--out-ext", ".avi")]
    base = ["rollout", world_dir, "--out", out, "--quiet"]
    if "--no-prompt" in args:
        args.remove("--no-prompt")
    else:
        base += ["--prompt", prompt]
    rc, _, err = run(base + args, capsys)
    assert rc == 1 and message in err and not out.exists()


def test_rollout_bad_prompt_file(world_dir, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    rc, _, err = run(["rollout", world_dir, "--prompt", bad, "--actions", "1", "--out", tmp_path / "o.gif"], capsys)
    assert rc == 1 and "PNG or JPEG" in err
    rc, _, err = run(["rollout", world_dir, "--prompt", tmp_path / "missing.png", "--actions", "1",
                      "--out", tmp_path / "o.gif"], capsys)
    assert rc == 1 and "no image file" in err


@pytest.mark.slow
def test_rollout_from_test_level(world_dir, tmp_path, capsys):
    pytest.importorskip("procgen")
    out = tmp_path / "level.png"
    rc, _, err = run(["rollout", world_dir, "--level", 10600, "--actions", "2", "--out", out, "--quiet",
                      "--scale", 2], capsys)
    assert rc == 0, err
    strip = np.asarray(Image.open(out).convert("RGB"))
    assert strip.shape == (64, 130, 3) and strip[:, :64].std() > 5  # a CoinRun frame, then a generated one
    rc, _, err = run(["rollout", world_dir, "--level", 3, "--actions", "2", "--out", out, "--quiet"], capsys)
    assert rc == 1 and "test level" in err


def test_play_without_a_world_is_a_clear_error(tmp_path, capsys, world_dir):
    from driftless.world.world import ASSETS

    if not (ASSETS / "coinrun").exists():
        rc, _, err = run(["play"], capsys)
        assert rc == 1 and "coinrun" in err and "world folder" in err
    rc, _, err = run(["play", tmp_path / "nowhere"], capsys)
    assert rc == 1 and "no world" in err
    rc, _, err = run(["play", world_dir / "tokenizer"], capsys)  # a tokenizer alone cannot be played
    assert rc == 1 and "dynamics" in err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_play_cli_serves_and_prints_url(world_dir):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "driftless", "play", str(world_dir), "--port", str(port),
                             "--threads", "1", "--max-sessions", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=Path(__file__).parent)
    try:
        lines = []
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "open http://" in line:
                break
        assert any(f"http://localhost:{port}/" in ln for ln in lines), "".join(lines)
        info = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as r:
                    info = json.load(r)
                break
            except OSError:
                time.sleep(0.2)
        assert info is not None and info["sessions"] == {"used": 0, "max": 3}
        assert info["world"]["num_actions"] == 4 and info["world"]["action_map"]["accuracy"] == 0.5
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"<canvas" in r.read()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_threads_auto_picks_a_measured_candidate(world_dir, prompt, tmp_path, capsys):
    from driftless.world.threads import tune_threads
    from driftless.world.world import load

    world = load(world_dir)
    choice, timings = tune_threads(world, candidates=[1, 2], steps=1)
    assert set(timings) == {1, 2} and all(t > 0 for t in timings.values())
    assert choice == min(timings, key=timings.get) and torch.get_num_threads() == choice
    rc, stdout, err = run(["rollout", world_dir, "--prompt", prompt, "--actions", "1", "--out", tmp_path / "a.gif",
                           "--quiet", "--threads", "auto"], capsys)
    assert rc == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["threads"] in (1, os.cpu_count())
    rc, _, err = run(["rollout", world_dir, "--prompt", prompt, "--actions", "1", "--out", tmp_path / "b.gif",
                      "--threads", "many"], capsys)
    assert rc == 1 and "--threads" in err
    torch.set_num_threads(1)
