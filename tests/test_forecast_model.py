"""Diffusion-Forcing forecaster: causality, exact cached sampling, schedules, checkpoints,
baselines, and calibration on a process with a known forecast distribution."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from driftless import checkpoint
from driftless.forecast.data import SyntheticVAR, synthetic
from driftless.forecast.evaluate import VARBaseline, evaluate, oracle_forecaster, seasonal_naive
from driftless.forecast.metrics import crps_sum
from driftless.forecast.model import Forecaster, preset
from driftless.forecast.train import ForecastTrainConfig, save_forecaster, train_forecaster
from driftless.models.registry import load_model


def _random_model(backbone, **kw):
    torch.manual_seed(0)
    cfg = preset("debug", target_dim=3, backbone=backbone, context_length=6, prediction_length=5,
                 seasons=(4,), scaling="standard", **kw)
    model = Forecaster(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("backbone", ["gru", "transformer"])
def test_outputs_are_causal(backbone):
    model = _random_model(backbone)
    x = torch.randn(2, 11, 3)
    k = torch.randint(0, 101, (2, 11))
    feats = torch.randn(2, 6)
    base = model(x, k, feats, torch.tensor([0, 3]))
    x2, k2 = x.clone(), k.clone()
    x2[:, 7:] += 5.0
    k2[:, 7:] = 100
    moved = model(x2, k2, feats, torch.tensor([0, 3]))
    torch.testing.assert_close(base[:, :7], moved[:, :7])
    assert not torch.allclose(base[:, 7:], moved[:, 7:])


@pytest.mark.parametrize("backbone", ["gru", "transformer"])
@pytest.mark.parametrize("schedule", ["autoregressive", "pyramid", "full_sequence"])
def test_cached_sampling_is_exact(backbone, schedule):
    model = _random_model(backbone)
    ctx = np.random.default_rng(0).normal(5, 2, size=(2, 9, 3)).astype(np.float32)
    a = model.sample(ctx, np.array([0, 7]), num_samples=4, schedule=schedule, steps=3, seed=3)
    b = model.sample(ctx, np.array([0, 7]), num_samples=4, schedule=schedule, steps=3, seed=3, cached=False)
    assert a.shape == (2, 4, 5, 3) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    assert a.std(1).mean() > 0  # paths differ


def test_scheduling_matrices():
    model = _random_model("gru")
    for kind, rows in [("autoregressive", 5 * 7), ("full_sequence", 7)]:
        m = model.matrix(kind, steps=7)
        assert m.shape[1] == 6 + 5
        assert (m[:, :6] == model.cfg.diffusion.context_level).all()  # context held at its level
        assert (m[-1, 6:] == 0).all() and (m[0, 6:] == 100).all()
        assert (m[1:] <= m[:-1]).all()  # levels never increase
        assert m.shape[0] <= rows + 1
    ar = model.matrix("autoregressive", steps=7)
    # autoregressive: a column starts only after the previous one is clean
    for j in range(7, 11):
        started = torch.nonzero(ar[:, j] < 100)[0, 0]
        assert (ar[started:, j - 1] == 0).all()
    tf = _random_model("gru", teacher_forcing=True)
    assert (tf.matrix(steps=4)[:, :6] == 0).all()  # teacher forcing: clean history


def test_training_levels():
    df = _random_model("gru", train_levels="independent")
    levels, mask = df._levels(64, 11, "cpu", torch.Generator().manual_seed(0))
    assert levels.min() >= 1 and levels.max() <= 100 and mask.sum() == 64 * 11
    tf = _random_model("gru", teacher_forcing=True)
    levels, mask = tf._levels(64, 11, "cpu", torch.Generator().manual_seed(0))
    assert (mask.sum(1) == 1).all()
    p = mask.argmax(1)
    for i in range(64):
        assert (levels[i, : p[i]] == 0).all() and levels[i, p[i]] >= 1 and (levels[i, p[i] + 1:] == 100).all()
    mixed = _random_model("gru", prefix_prob=1.0)
    levels, _ = mixed._levels(64, 11, "cpu", torch.Generator().manual_seed(0))
    assert (levels[:, 0] <= mixed.cfg.diffusion.context_level).all()


def test_checkpoint_roundtrip_and_bad_input(tmp_path):
    ds = synthetic(dim=3, length=200, prediction_length=5, test_windows=2, period=4)
    model = Forecaster(preset("debug", target_dim=3, context_length=6, prediction_length=5, seasons=(4,)))
    trained, hist = train_forecaster(model, ds, ForecastTrainConfig(steps=5, batch_size=8, warmup=2), progress=False)
    assert trained.cfg.global_mean is not None and len(hist["loss"]) == 1
    save_forecaster(tmp_path / "ck", trained, meta={"dataset": "x"})
    loaded, header = load_model(tmp_path / "ck", kind="forecaster"), checkpoint.read_header(tmp_path / "ck")
    assert header["kind"] == "forecaster" and loaded.cfg.seasons == (4,)
    ctx, _, t0 = ds.windows(6)
    np.testing.assert_array_equal(trained.sample(ctx, t0, 3, seed=1), loaded.sample(ctx, t0, 3, seed=1))
    with pytest.raises(ValueError, match="context must be"):
        loaded.sample(ctx[:, :, :2], t0, 3)
    with pytest.raises(ValueError, match="backbone"):
        preset("debug", backbone="lstm")
    with pytest.raises(ValueError, match="target_dim"):
        Forecaster(preset("debug"))


def test_seasonal_naive_and_var_baselines():
    ctx = np.arange(10, dtype=np.float32).reshape(1, 10, 1)
    np.testing.assert_array_equal(seasonal_naive(ctx, 5, season=3)[0, 0, :, 0], [7, 8, 9, 7, 8])
    np.testing.assert_array_equal(seasonal_naive(ctx, 2, season=20)[0, 0, :, 0], [9, 9])  # falls back to naive
    proc = SyntheticVAR(dim=2, period=1000000, amp=0.0, seed=2)  # a plain VAR(1) around a constant mean
    x = proc.generate(4000, seed=3)
    var = VARBaseline(maxlags=1, ic=None).fit(x)
    paths = var.sample(x[None, -5:], horizon=3, num_samples=20000, seed=0)
    mean, cov = proc.forecast_law(x[None, -1], np.array([3999]), 3)
    np.testing.assert_allclose(paths[0].mean(0), mean[0], atol=0.08)
    np.testing.assert_allclose(np.cov(paths[0, :, 0].T), cov[0], atol=0.12)


@pytest.mark.slow
def test_calibrated_on_known_process_and_beats_seasonal_naive():
    """Train a tiny model for a few seconds on a 2-D seasonal VAR(1) whose h-step law is known;
    its predictive intervals must cover the true distribution at the nominal rate."""
    torch.manual_seed(0)
    ds = synthetic(dim=2, length=2000, prediction_length=4, test_windows=30, period=12)
    cfg = preset("debug", target_dim=2, context_length=8, prediction_length=4, seasons=(12,))
    model, _ = train_forecaster(Forecaster(cfg), ds, ForecastTrainConfig(steps=600, batch_size=64), progress=False)
    ctx, tgt, t0 = ds.windows(8)
    samples = model.sample(ctx, t0, num_samples=100, seed=0)
    mean, cov = ds.process.forecast_law(ctx[:, -1], t0 + 7, 4)
    std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))  # (H, D)
    for level in (0.5, 0.8, 0.9):
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
        # probability that the true law puts in the model's interval (no sampling noise from targets)
        expected = (norm.cdf((hi - mean) / std) - norm.cdf((lo - mean) / std)).mean()
        assert abs(expected - level) < 0.08, (level, expected)
    assert np.abs(samples.mean(1) - mean).mean() / std.mean() < 0.3  # conditional mean learnt
    results = evaluate(ds, {
        "df": lambda c, t: model.sample(c, t, num_samples=100, seed=1),
        "naive": lambda c, t: seasonal_naive(c, 4, ds.season),
        "oracle": oracle_forecaster(ds, 100),
    }, context_length=8)
    assert results["df"]["crps_sum"] < 0.7 * results["naive"]["crps_sum"]
    assert results["df"]["crps_sum"] < 1.15 * results["oracle"]["crps_sum"]
    assert crps_sum(samples, tgt) < 0.7 * crps_sum(seasonal_naive(ctx, 4, 12), tgt)
