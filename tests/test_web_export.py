"""`driftless export web`: the static page plays the world in real headless Chromium (Playwright
driving Debian's /usr/bin/chromium), served by a plain static file server on loopback.

The page's frames are checked against ONNX Runtime in Python fed the page's own noise (its
seeded PRNG, ported below), keys and buttons must change what is played, and the page must keep
making frames without a console error. The frames/s it reaches is printed and written to a JSON
file. By default the debug world plays for 15 s; the benchmark of docs/benchmarks.md is

    DRIFTLESS_WEB_WORLD=coinrun DRIFTLESS_WEB_SECONDS=60 DRIFTLESS_WEB_OUT=web-bench.json \\
        DRIFTLESS_DOCS_IMG=docs/img pytest tests/test_web_export.py -s

(DRIFTLESS_WEB_WORLD: a world folder or shipped name, exported with the world's defaults;
DRIFTLESS_WEB_DIR: instead, a folder `driftless export web` wrote before, served as it is;
DRIFTLESS_WEB_THREADS=N: serve it cross-origin isolated (COOP/COEP headers) and play with N threads;
DRIFTLESS_DOCS_IMG: also save the screenshot web-play.png there.)
"""

import base64
import functools
import http.server
import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, need_browser, wait_last_action
from PIL import Image

SECONDS = float(os.environ.get("DRIFTLESS_WEB_SECONDS", "15"))
THREADS = int(os.environ.get("DRIFTLESS_WEB_THREADS", "1"))
PAUSE_AT = 6

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory, request):
    need_browser()
    from driftless.export.web import export_web, ort_runtime

    try:
        ort_runtime(log=lambda *a: None)  # npm pack once into the cache, or say why not
    except FileNotFoundError as e:
        pytest.skip(f"onnxruntime-web is not available: {e}")
    out = tmp_path_factory.mktemp("web") / "site"
    shipped = os.environ.get("DRIFTLESS_WEB_WORLD")
    t0 = time.time()
    if os.environ.get("DRIFTLESS_WEB_DIR"):  # an export made before
        out = Path(os.environ["DRIFTLESS_WEB_DIR"])
        shipped = json.loads((out / "manifest.json").read_text())["world"]["name"]
    elif shipped:  # the benchmark: the whole export, with the world's own settings
        export_web(shipped, out, log=print)
    else:
        export = request.getfixturevalue("debug_export")
        from driftless.world.world import load

        world = load(export["world"])
        from driftless.serve.session import LevelSource

        images = ()
        if not LevelSource().available:  # no Procgen: a start image of our own
            images = (tmp_path_factory.mktemp("img") / "start.png",)
            Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images[0])
        export_web(world, out, onnx=export["onnx"], starts=2, start_images=images, log=lambda *a: None)
    export_s = time.time() - t0

    class Static(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                          ".wasm": "application/wasm"}

        def end_headers(self):
            if THREADS > 1:  # what a host sets to let the page use WebAssembly threads
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            super().end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Static, directory=str(out)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{srv.server_address[1]}/", "dir": out, "export_s": export_s,
           "world": shipped or "debug"}
    srv.shutdown()
    thread.join(timeout=10)


# ---------------------------------------------------------------------------------- the page's noise
class PageNoise:
    """play.js's noise: mulberry32 uniforms -> Box-Muller normals, as float32."""

    M = 0xFFFFFFFF

    def __init__(self, seed: int):
        self.a = seed & self.M

    def rand(self) -> float:
        M = self.M
        self.a = (self.a + 0x6D2B79F5) & M
        a = self.a
        t = ((a ^ (a >> 15)) * (1 | a)) & M
        t = ((t + (((t ^ (t >> 7)) * (61 | t)) & M)) & M) ^ t
        return ((t ^ (t >> 14)) & M) / 4294967296

    def normals(self, shape) -> np.ndarray:
        n = int(np.prod(shape))
        out = np.empty(n, np.float64)
        for i in range(0, n, 2):
            u, v = max(self.rand(), 1e-12), self.rand()
            r = np.sqrt(-2 * np.log(u))
            out[i] = r * np.cos(2 * np.pi * v)
            if i + 1 < n:
                out[i + 1] = r * np.sin(2 * np.pi * v)
        return out.astype(np.float32).reshape(shape)


def canvas_frame(page, resolution) -> np.ndarray:
    """The canvas, read back as PNG and sampled at the centre of each world pixel: uint8 (H, W, 3)."""
    url = page.evaluate("() => document.getElementById('screen').toDataURL('image/png')")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    h, w = resolution
    sy, sx = img.shape[0] // h, img.shape[1] // w
    return img[sy // 2::sy, sx // 2::sx][:h, :w]


def chromium_cpu_seconds() -> float | None:
    """CPU seconds used so far by this process's descendants (Playwright's driver, Chromium and its
    renderer), from /proc; None where there is no /proc. Frames per CPU-second of the page is what
    it would reach with a core to itself (the page computes on one thread), however busy the
    machine is while it is measured."""
    if not os.path.isdir("/proc"):
        return None
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2:].split()
            procs[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))  # ppid, utime + stime
    children = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            total += procs[child][1]
            todo.append(child)
    return total / os.sysconf("SC_CLK_TCK")


def stats(page) -> dict:
    return page.evaluate("() => window.driftless.stats()")


def test_page_plays_the_world_in_chromium(site, tmp_path):
    from playwright.sync_api import sync_playwright

    from driftless.export.onnx import OnnxPlayer

    manifest = json.loads((site["dir"] / "manifest.json").read_text())
    w = manifest["world"]
    res = tuple(w["resolution"])
    keys = w["action_map"].get("keys", {})
    errors, outside = [], []
    seed = 1234
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            # nothing may come from anywhere but the static server
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(site["url"])
                       else (outside.append(route.request.url), route.abort()))
            t0 = time.time()
            page.goto(f"{site['url']}?seed={seed}&pause={PAUSE_AT}&fps=0" + (f"&threads={THREADS}" if THREADS > 1 else ""))
            page.wait_for_function("() => window.driftless.stats().started || window.driftless.stats().errors",
                                   timeout=120000)
            first_frame_s = time.time() - t0
            s = stats(page)
            assert s["errors"] == 0 and s["ep"] == "wasm" and s["threads"] == THREADS, (s, errors)
            assert page.locator("#actions button").count() == w["num_actions"]

            # paused after PAUSE_AT frames: the page's frame is ONNX Runtime's in Python on the page's noise
            page.wait_for_function(f"() => {{ const s = window.driftless.stats(); "
                                   f"return s.paused && s.index === {PAUSE_AT}; }}", timeout=60000)
            shown = canvas_frame(page, res)
            player = OnnxPlayer(site["dir"])
            noise = PageNoise(seed)
            shape = player.noise_shape
            start = np.asarray(Image.open(site["dir"] / manifest["start_frames"][0]["file"]).convert("RGB"))
            player.reset(start, noise.normals(shape))
            for _ in range(PAUSE_AT):
                want = player.step(w["noop"], noise.normals(shape))[0][0]
            diff = np.abs(shown.astype(int) - want.astype(int))
            assert shown.std() > 1 and diff.mean() < 0.5 and diff.max() <= 16, (diff.mean(), diff.max())

            # paused: the Step button makes exactly one frame
            page.click("#btn-step")
            page.wait_for_function(f"() => window.driftless.stats().index === {PAUSE_AT + 1}", timeout=30000)
            time.sleep(0.3)
            assert stats(page)["index"] == PAUSE_AT + 1
            before = canvas_frame(page, res)

            # playing: a held number key plays that latent action on every frame, arrows follow the map
            page.click("#btn-pause")
            page.keyboard.down("2")
            wait_last_action(page, "2", timeout=30000)
            page.keyboard.up("2")
            if "ArrowRight" in keys:
                page.keyboard.down("ArrowRight")
                want_a = str(keys["ArrowRight"] + 1)
                wait_last_action(page, want_a, timeout=30000)
                page.keyboard.up("ArrowRight")
            wait_last_action(page, w["noop"] + 1, timeout=30000)  # no key held: the no-op action
            after = canvas_frame(page, res)
            assert np.abs(after.astype(int) - before.astype(int)).mean() > 0.5  # the picture moved on
            # an on-screen button, held, plays its action
            page.locator("#action-3").dispatch_event("pointerdown")
            wait_last_action(page, "4", timeout=30000)
            page.locator("#action-3").dispatch_event("pointerup")
            if os.environ.get("DRIFTLESS_DOCS_IMG"):  # a few dozen frames in: still the level's scene
                page.screenshot(path=str(Path(os.environ["DRIFTLESS_DOCS_IMG"]) / "web-play.png"))

            # frames keep coming: every window of 5 s (at most) adds frames; frames/s over the run
            s0, t_start, cpu0 = stats(page), time.time(), chromium_cpu_seconds()
            last = s0
            while time.time() - t_start < SECONDS:
                time.sleep(min(5.0, SECONDS))
                now = stats(page)
                assert now["frames"] > last["frames"], (last, now)
                last = now
            elapsed = time.time() - t_start
            cpu = chromium_cpu_seconds()
            fps = (last["frames"] - s0["frames"]) / elapsed
            assert float(page.locator("#fps").inner_text()) > 0
            version = browser.version
        finally:
            browser.close()
    assert not outside, outside
    assert not errors, errors
    frames = last["frames"] - s0["frames"]
    per_cpu_s = round(frames / (cpu - cpu0), 2) if cpu is not None and cpu > cpu0 else None
    result = {"world": site["world"], "seconds": round(elapsed, 1), "frames": frames,
              "frames_per_s": round(fps, 2), "chromium_cpu_s": None if cpu is None else round(cpu - cpu0, 1),
              "frames_per_cpu_s": per_cpu_s, "model_ms": round(last["ms"], 1), "backend": last["ep"],
              "threads": last["threads"], "first_frame_s": round(first_frame_s, 1),
              "page_load_ms": round(last["loadMs"]), "export_s": round(site["export_s"], 1),
              "chromium": version, "cores": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
              "pixels_vs_python": {"mean_abs": round(float(diff.mean()), 4), "max_abs": int(diff.max())}}
    print("web export benchmark:", json.dumps(result))
    (tmp_path / "web-bench.json").write_text(json.dumps(result, indent=2))
    if os.environ.get("DRIFTLESS_WEB_OUT"):
        Path(os.environ["DRIFTLESS_WEB_OUT"]).write_text(json.dumps(result, indent=2) + "\n")
    assert fps > 0.5


@pytest.mark.skipif(not os.environ.get("DRIFTLESS_WEB_WEBGPU"),
                    reason="opt-in (DRIFTLESS_WEB_WEBGPU=1): WebGPU on Chromium's software Vulkan, about a minute")
def test_webgpu_backend_on_swiftshader(site):
    """The WebGPU path, on SwiftShader (no GPU needed): same frames as ONNX Runtime in Python."""
    from playwright.sync_api import sync_playwright

    from driftless.export.onnx import OnnxPlayer

    manifest = json.loads((site["dir"] / "manifest.json").read_text())
    flags = ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
             "--use-webgpu-adapter=swiftshader", "--use-angle=swiftshader"]
    errors, seed, k = [], 99, 2
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.goto(f"{site['url']}?seed={seed}&pause={k}&fps=0")
            page.wait_for_function(f"() => {{ const s = window.driftless.stats(); "
                                   f"return s.errors || (s.paused && s.index === {k}); }}", timeout=300000)
            s = stats(page)
            shown = canvas_frame(page, tuple(manifest["world"]["resolution"]))
        finally:
            browser.close()
    assert s["ep"] == "webgpu" and s["errors"] == 0, (s, errors)
    assert not [e for e in errors if "adapter" not in e], errors
    player, noise = OnnxPlayer(site["dir"]), PageNoise(seed)
    start = np.asarray(Image.open(site["dir"] / manifest["start_frames"][0]["file"]).convert("RGB"))
    player.reset(start, noise.normals(player.noise_shape))
    for _ in range(k):
        want = player.step(manifest["world"]["noop"], noise.normals(player.noise_shape))[0][0]
    diff = np.abs(shown.astype(int) - want.astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 16, (diff.mean(), diff.max())
