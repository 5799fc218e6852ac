"""The play page in real headless Chromium (Playwright driving Debian's /usr/bin/chromium).

A real uvicorn server runs in a background thread on a free localhost port with a debug
world. Set DRIFTLESS_PLAY_WORLD=path to play another world, and DRIFTLESS_DOCS_IMG=folder to
also save the screenshot (play.png) and the recorded GIF (play.gif) there for the docs.
"""

import base64
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, need_browser, wait_last_action
from PIL import Image

ACTION_MAP = {"keys": {"ArrowLeft": 1, "ArrowRight": 2, "ArrowUp": 3, " ": 3, "ArrowDown": 0},
              "groups": {"none": 0, "left": 1, "right": 2, "jump": 3}, "accuracy": 0.58, "majority_baseline": 0.41}

pytestmark = pytest.mark.browser


def _need_browser():
    need_browser()
    pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    import uvicorn

    from driftless.serve.app import create_app
    from driftless.world.debug import make_debug_world
    from driftless.world.world import load

    path = os.environ.get("DRIFTLESS_PLAY_WORLD") or make_debug_world(
        tmp_path_factory.mktemp("browser") / "world", action_map=ACTION_MAP)
    world = load(path)
    app = create_app(world, max_sessions=2, max_record_frames=300, record_scale=2, seed=0)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_ping_interval=None))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield {"url": f"http://127.0.0.1:{port}/", "app": app, "world": world}
    srv.should_exit = True
    thread.join(timeout=10)


def canvas_pixels(page) -> np.ndarray:
    """The canvas as uint8 (H, W, 3), read back as a PNG data URL (compact, unlike a pixel array)."""
    url = page.evaluate("() => document.getElementById('screen').toDataURL('image/png')")
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def stats(page) -> dict:
    return page.evaluate("() => window.driftless.stats()")


def wait_stats(page, expr: str, timeout: float = 30000):
    page.wait_for_function(f"() => {{ const s = window.driftless.stats(); return {expr}; }}", timeout=timeout)
    return stats(page)


def test_play_page_end_to_end(server, tmp_path):
    from playwright.sync_api import sync_playwright

    from driftless.serve.session import noop_action

    world = server["world"]
    keys = world.action_map.get("keys", {})
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            ctx = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 760})
            page = ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server["url"])
            # the page starts by itself (a random test level when procgen is here) or asks for an image
            page.wait_for_function("() => window.driftless.state.ready !== null", timeout=20000)
            ready = page.evaluate("() => window.driftless.state.ready")
            assert ready["world"]["num_actions"] == world.num_actions
            assert page.locator("#actions button").count() == world.num_actions
            legend = page.locator("#legend").inner_text()
            assert "→" in legend and "action" in legend
            acc = ready["world"]["action_map"]["accuracy"]
            if acc is not None:
                assert f"{100 * acc:.1f}%" in page.locator("#accuracy").inner_text()
            if not ready["sources"]["level"]:  # no procgen: start from an upload
                img = tmp_path / "first.png"
                Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(img)
                page.set_input_files("#file", str(img))
            s = wait_stats(page, "s.started && s.frames >= 3")
            before = canvas_pixels(page)
            assert before.std() > 1  # something is drawn

            # number keys choose latent actions; holding keeps acting every tick
            page.keyboard.down("2")
            wait_last_action(page, "2", timeout=10000)
            n0 = stats(page)["frames"]
            wait_stats(page, f"s.frames >= {n0 + 3}")
            # (checked while held: after the key is up the next tick marks the no-op action, and a
            # tick between the release and the check failed CI once)
            assert page.locator("#action-1").get_attribute("class") in ("active",)
            page.keyboard.up("2")
            # arrow keys follow the action map
            if "ArrowRight" in keys:
                page.keyboard.down("ArrowRight")
                want = str(keys["ArrowRight"] + 1)
                wait_last_action(page, want, timeout=10000)
                page.keyboard.up("ArrowRight")
            # with no key held the world goes on with the no-op action
            want = str(noop_action(world.action_map) + 1)
            wait_last_action(page, want, timeout=10000)
            after = canvas_pixels(page)
            assert np.abs(after.astype(int) - before.astype(int)).mean() > 0.5  # the picture changed
            s = stats(page)
            assert s["index"] > 0 and s["latency"] is not None and s["latency"] > 0
            assert float(page.locator("#fps").inner_text()) > 0

            # pause: nothing moves; Step and keys act once each
            page.click("#btn-pause")
            time.sleep(0.3)
            frozen = stats(page)["frames"]
            time.sleep(0.5)
            assert stats(page)["frames"] == frozen and page.locator("#paused-badge").is_visible()
            page.click("#btn-step")
            wait_stats(page, f"s.frames === {frozen + 1} && !s.inFlight")
            page.keyboard.press("1")
            wait_stats(page, f"s.frames === {frozen + 2} && !s.inFlight")
            assert page.locator("#last-action").inner_text() == "1"

            # upload an image: the canvas shows it (red left half, blue right half), scaled up crisply
            img = np.zeros((100, 100, 3), dtype=np.uint8)
            img[:, :50] = (230, 30, 30)
            img[:, 50:] = (30, 30, 230)
            path = tmp_path / "prompt.png"
            Image.fromarray(img).save(path)
            page.set_input_files("#file", str(path))
            page.wait_for_function("() => document.getElementById('source').textContent.includes('your image')",
                                   timeout=10000)
            wait_stats(page, f"s.frames === {frozen + 3} && !s.inFlight")
            shown = canvas_pixels(page)
            h, w = shown.shape[:2]
            assert shown[h // 2, w // 4, 0] > 200 and shown[h // 2, w // 4, 2] < 60
            assert shown[h // 2, 3 * w // 4, 2] > 200 and shown[h // 2, 3 * w // 4, 0] < 60
            assert stats(page)["index"] == 0

            # record a few frames, then download GIF and MP4
            page.click("#btn-pause")  # resume
            page.click("#btn-record")
            wait_stats(page, "s.recording && s.recorded >= 6", timeout=20000)
            page.keyboard.down("ArrowRight")
            wait_stats(page, "s.recorded >= 10", timeout=20000)
            page.keyboard.up("ArrowRight")
            page.click("#btn-record")
            s = wait_stats(page, "!s.recording")
            assert s["recorded"] >= 10
            page.wait_for_function("() => !document.getElementById('btn-gif').disabled")
            with page.expect_download() as dl:
                page.click("#btn-gif")
            gif = tmp_path / "session.gif"
            dl.value.save_as(gif)
            with page.expect_download() as dl:
                page.click("#btn-mp4")
            mp4 = tmp_path / "session.mp4"
            dl.value.save_as(mp4)
            im = Image.open(gif)
            assert im.format == "GIF" and im.n_frames >= 2 and im.size == (128, 128)
            import av

            with av.open(str(mp4)) as c:
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            assert len(frames) == s["recorded"] and frames[0].shape == (128, 128, 3)

            # a second tab is its own session; a third is told the server is full
            page2 = ctx.new_page()
            page2.goto(server["url"])
            page2.wait_for_function("() => window.driftless.state.ready !== null", timeout=20000)
            page3 = ctx.new_page()
            page3.goto(server["url"])
            page3.wait_for_function("() => document.getElementById('overlay-text').textContent.includes('full')",
                                    timeout=10000)
            assert "2 of 2" in page3.locator("#overlay-text").inner_text()
            assert page.evaluate("() => window.driftless.state.ready.session") != \
                page2.evaluate("() => window.driftless.state.ready.session")
            page3.close()
            page2.close()

            docs = os.environ.get("DRIFTLESS_DOCS_IMG")
            if docs and ready["sources"]["level"]:  # for the docs: a played session from a real test level
                gif = tmp_path / "level.gif"
                page.click("#btn-level")
                n0 = wait_stats(page, "s.started && !s.inFlight")["frames"]
                page.click("#btn-record")
                for key, frames in (("ArrowRight", 14), ("ArrowUp", 6), ("ArrowRight", 14), ("ArrowLeft", 8)):
                    page.keyboard.down(key)
                    n0 += frames
                    wait_stats(page, f"s.frames >= {n0}", timeout=30000)
                    page.keyboard.up(key)
                page.click("#btn-record")
                page.wait_for_function("() => !document.getElementById('btn-gif').disabled")
                with page.expect_download() as dl:
                    page.click("#btn-gif")
                dl.value.save_as(gif)

            page.evaluate("() => { window.scrollTo(0, 0); document.activeElement.blur(); }")
            page.mouse.move(2, 2)
            shot = tmp_path / "play.png"
            page.screenshot(path=str(shot))
            assert Image.open(shot).size == (1000, 760)
            if docs:
                Path(docs).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(docs) / "play.png")
                shutil.copy(gif, Path(docs) / "play.gif")
            ctx.close()
        finally:
            browser.close()
    # closed tabs end their sessions on the server
    manager = server["app"].state.manager
    for _ in range(100):
        if len(manager) == 0:
            break
        time.sleep(0.05)
    assert len(manager) == 0
    assert not [e for e in errors if "favicon" not in e], errors
