"""Issue 16's drift measures on real CoinRun frames: the same-level distance to a rollout's own
context with its band from real long episodes of one level, and the calibrated collapse flag."""

import numpy as np
import pytest

pytest.importorskip("procgen")

from driftless.data.coinrun import generate
from driftless.data.store import EpisodeStore
from driftless.eval.drift import (DriftConfig, quality_from_store, same_level_measures, same_level_reference,
                                  same_level_summary)

HORIZON = 200


@pytest.fixture(scope="module")
def long_levels(tmp_path_factory):
    """Real same-level CoinRun episodes of test levels: 6 for the band, 4 others held out."""
    root = tmp_path_factory.mktemp("long")
    generate(root / "ref", 6, split="test", seed=1, workers=1, same_level_frames=HORIZON + 50, verbose=False)
    generate(root / "held", 4, split="test", seed=2, workers=1, same_level_frames=HORIZON + 50, verbose=False)
    return EpisodeStore(root / "ref"), EpisodeStore(root / "held")


def _shift(real: np.ndarray) -> np.ndarray:
    """real (R, T, H, W, 3) -> the same frames whose colours slide towards a channel rotation
    (the sky, walls and ground change colour while the layout stays): a level morphing."""
    a = np.linspace(0, 1, real.shape[1])[None, :, None, None, None]
    return np.clip((1 - a) * real + a * real[..., [2, 0, 1]], 0, 255).astype(np.uint8)


def test_same_level_flags_a_colour_shift_and_keeps_real_play_inside_its_band(long_levels):
    ref_store, held = long_levels
    ref = same_level_reference(ref_store, HORIZON, context=1)
    assert ref["same_level_episodes"] == 6 and ref["values"]["palette_tv"].shape == (6, HORIZON)
    frames = np.stack([np.array(held.frames(i)) for i in range(held.num_episodes)])  # (4, 250, H, W, 3)
    ctx, real = frames[:, :1], frames[:, 1:HORIZON + 1]
    cfg = DriftConfig()
    own = same_level_summary(same_level_measures(real, ctx, cfg), ref, cfg, bin_size=10, window=50)
    morph = same_level_summary(same_level_measures(_shift(real), ctx, cfg), ref, cfg, bin_size=10, window=50)
    o, m = own["summary"], morph["summary"]
    # unseen real play of other test levels stays inside the band of the reference episodes
    assert o["same_level_score"] >= 0.7 and o["morphed_rate"] <= 0.25 and o["inside_real_band"]
    # the shifted rollout is the same layout in other colours: caught, frame by frame and per rollout
    assert m["same_level_score"] <= 0.1 and m["morphed_rate"] == 1.0 and not m["inside_real_band"]
    assert m["palette_tv_last"] > 2 * o["palette_tv_last"]
    curve = morph["curves"]["palette_tv"]["mean"]
    assert curve[-1] > curve[0] + 0.2  # it grows with the shift
    band = own["band"]["palette_tv"]
    assert all(lo <= hi for lo, hi in zip(band["p50"], band["p90"])) and band["episodes"][-1] == 6
    # the same rollout measured against the context of ANOTHER level is a morph too
    other = same_level_summary(same_level_measures(real, np.roll(ctx, 1, axis=0), cfg), ref, cfg, 10, 50)
    assert other["summary"]["palette_tv_last"] > o["palette_tv_last"]


def test_same_level_band_needs_long_enough_real_episodes(long_levels):
    ref_store, held = long_levels
    ref = same_level_reference(ref_store, 60, context=1)
    frames = np.stack([np.array(held.frames(0, 0, 81))])
    s = same_level_summary(same_level_measures(frames[:, 1:81], frames[:, :1]), ref, bin_size=10, window=20)
    assert s["summary"]["same_level_score"] is None and "--same-level-frames" in s["summary"]["reason"]
    assert s["band"]["palette_tv"]["p90"][-1] is None and s["band"]["palette_tv"]["p90"][0] is not None
    with pytest.raises(ValueError, match="frames"):
        same_level_measures(frames[:, 1:], frames[0, :1])


def test_collapse_flag_calibrated_to_about_zero_real_frames(tmp_path):
    """The calibrated limits flag at most 0.5 % of the real calibration frames (the quantile rule
    of before flagged about 4 %), and still flag noise and blur."""
    generate(tmp_path / "test", 12, split="test", seed=4, workers=1, envs_per_worker=4, max_frames_per_episode=120,
             episodes_per_shard=12, verbose=False)
    store = EpisodeStore(tmp_path / "test")
    calibrated, ref_eps = quality_from_store(store, DriftConfig(), bank_size=512, reference_size=600, seed=0)
    old, _ = quality_from_store(store, DriftConfig(collapse_rule="quantile"), bank_size=512, reference_size=600,
                                seed=0)
    assert calibrated.reference["collapse_rate"] <= 0.005
    assert old.reference["collapse_rate"] >= 0.02
    assert calibrated.reference["collapse_rule"] == "calibrated"
    # the rate on unseen episodes is reported, and the new limits lower it too
    assert calibrated.reference["collapse_rate_holdout"] < old.reference["collapse_rate_holdout"]
    real = np.stack([np.array(store.frames(int(e), 0, 40)) for e in ref_eps[:3]])  # (3, 40, H, W, 3)
    noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)
    blurred = real.astype(np.float64)
    for _ in range(6):  # repeated 3x3 box blur
        pad = np.pad(blurred, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)], mode="edge")
        blurred = sum(pad[:, :, i:i + 64, j:j + 64] for i in range(3) for j in range(3)) / 9
    flat = np.broadcast_to(real.mean((2, 3), keepdims=True), real.shape).astype(np.uint8)
    assert calibrated.measure(real)["collapsed"].mean() <= 0.05
    assert calibrated.measure(noise)["collapsed"].all()
    assert calibrated.measure(flat)["collapsed"].all()
    assert calibrated.measure(blurred.astype(np.uint8))["collapsed"].mean() >= 0.9
    with pytest.raises(ValueError, match="collapse_rule"):
        DriftConfig(collapse_rule="nope")
