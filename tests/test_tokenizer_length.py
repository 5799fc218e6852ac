"""A tokenizer reconstructs a frame equally well wherever it sits in a long clip.

The shipped tokenizer was trained on 8-frame clips. Attending over longer spans than it ever
saw (frame 256 of a 256-frame clip attending to all 255 before it) cost it about 6 dB by the end
of the clip; with its temporal attention limited to the 8 frames it was trained on
(`STConfig.temporal_window`), frames 241-256 of a 256-frame clip are reconstructed as well as
the same frames on their own. Real CoinRun frames of a test level, from Procgen.
"""

import numpy as np
import pytest
import torch

import driftless
from driftless.eval.metrics import psnr

T = 256


@pytest.fixture(scope="module")
def long_episode(tmp_path_factory):
    pytest.importorskip("procgen")
    from driftless.data.coinrun import generate
    from driftless.data.store import EpisodeStore

    root = tmp_path_factory.mktemp("coinrun-test")
    generate(root, episodes=4, split="test", workers=1, envs_per_worker=4, seed=0, verbose=False)
    store = EpisodeStore(root)
    long = [e for e, n in enumerate(store.episode_lengths) if n >= T]
    assert long, f"no test episode of {T} frames among {store.episode_lengths.tolist()}"
    return np.array(store.frames(long[0], 0, T))  # (T, 64, 64, 3)


def _tail_gap(world, clip: np.ndarray) -> float:
    """PSNR of frames T-16..T reconstructed inside the whole clip minus on their own (dB)."""
    inside = world.decode(world.encode(clip))[-16:]
    alone = world.decode(world.encode(clip[-16:]))
    real = torch.from_numpy(clip[-16:])
    return float(psnr(torch.from_numpy(inside), real) - psnr(torch.from_numpy(alone), real))


def test_reconstruction_does_not_depend_on_the_position_in_a_long_clip(long_episode):
    world = driftless.load("coinrun")
    assert world.tokenizer.cfg.encoder.temporal_window == 8 == world.tokenizer.cfg.decoder.temporal_window
    assert abs(_tail_gap(world, long_episode)) < 0.3

    # without the window (every earlier frame attended, as before) the tail falls apart
    for stack in (world.tokenizer.encoder, world.tokenizer.decoder):
        stack.cfg.temporal_window = 0
        for blk in stack.blocks:
            blk.temporal_window = 0
    assert _tail_gap(world, long_episode) < -2.0
