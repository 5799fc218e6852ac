import os
import shutil

import numpy as np
import pytest
import torch

# Every model in the suite is tiny: one intra-op thread is fastest (no hand-offs) and stays fast
# when the two cores of a CI machine are shared. Subprocesses inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_store(root, episodes=6, length=20, seed=0, resolution=(64, 64)):
    """A synthetic episode store: moving squares, true actions and rewards."""
    from driftless.data.store import EpisodeStore

    g = np.random.default_rng(seed)
    store = EpisodeStore.create(root, resolution)
    h, w = resolution
    with store.writer("synthetic") as wr:
        for e in range(episodes):
            frames = np.zeros((length, h, w, 3), dtype=np.uint8)
            frames[..., e % 3] = (40 + 20 * e) % 256
            x = int(g.integers(0, w - 8))
            actions = g.integers(0, 15, size=length)
            for t in range(length):
                frames[t, 20:28, x:x + 8] = 255
                x = (x + (2 if actions[t] in (6, 7, 8) else -2 if actions[t] in (0, 1, 2) else 0)) % (w - 8)
            wr.add_episode(frames, actions=actions, rewards=np.zeros(length, dtype=np.float32))
    return EpisodeStore(root)


@pytest.fixture(scope="module")
def world_stores(tmp_path_factory):
    """A training store with its -val and -test siblings (found by `driftless train world`)."""
    root = tmp_path_factory.mktemp("stores")
    make_store(root / "toy-train", episodes=6, length=20, seed=0)
    make_store(root / "toy-val", episodes=3, length=20, seed=1)
    make_store(root / "toy-test", episodes=3, length=20, seed=2)
    return root


def world_weights(out) -> dict:
    """The weights of the world a `train world` run folder built, per component."""
    from safetensors.torch import load_file

    from driftless.train.world_plan import TRAINED

    return {c: load_file(str(out / "world" / c / "model.safetensors")) for c in TRAINED}


@pytest.fixture
def small_store(tmp_path):
    return make_store(tmp_path / "store")


@pytest.fixture(scope="session")
def debug_world(tmp_path_factory):
    from driftless.world.debug import make_debug_world

    return make_debug_world(tmp_path_factory.mktemp("world") / "debug")


# a debug world with an action map, exported to ONNX once per test session (tests/test_export.py and
# tests/test_web_export.py): 2 DDIM steps with eta = 1 (so the graph takes per-step noise, as the
# shipped world's does), checked against PyTorch for 14 frames, past the ring buffers' wrap-around.
# As in the shipped world (decoder 8 frames, dynamics 16), the decoder's temporal window is shorter
# than the dynamics' context (6): its ring buffer holds 4 slots and wraps three times in the check
EXPORT_DECODER_WINDOW = 4
EXPORT_ACTION_MAP = {"keys": {"ArrowLeft": 1, "ArrowRight": 2, "ArrowUp": 3, " ": 3, "ArrowDown": 0},
                     "groups": {"none": 0, "left": 1, "right": 2, "jump": 3}, "accuracy": 0.58,
                     "majority_baseline": 0.41}


@pytest.fixture(scope="session")
def debug_export(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from driftless.export.onnx import export_onnx
    from driftless.world.debug import make_debug_world

    root = tmp_path_factory.mktemp("export")
    world = make_debug_world(root / "world", action_map=EXPORT_ACTION_MAP,
                             tokenizer_overrides={"decoder.temporal_window": EXPORT_DECODER_WINDOW})
    manifest = export_onnx(world, root / "onnx", steps=2, eta=1.0, check_frames=14, seed=0, log=lambda *a: None)
    return {"world": world, "onnx": root / "onnx", "manifest": manifest}


# the headless Chromium of the browser tests (tests/test_browser.py, tests/test_web_export.py)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def need_browser():
    """Skip the calling test unless Playwright and Chromium are installed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright's Python package is not installed (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")


def wait_last_action(page, shown, timeout: int) -> None:
    """Wait (Playwright, up to `timeout` ms) until a play page's "last action" reads `shown` (1-based)."""
    page.wait_for_function(f"() => document.getElementById('last-action').textContent === '{shown}'",
                           timeout=timeout)


class Tab:
    """A play-server connection whose replies are collected; `ask` returns the replies to one message
    (tests/test_protocol.py, tests/test_faults.py)."""

    def __init__(self, server, **kw):
        self.replies = []
        self.conn = server.open(self._send, **kw)

    async def _send(self, reply):
        self.replies.append(reply)

    async def ask(self, message):
        await self.conn.receive(message)
        out, self.replies = self.replies, []
        return out
