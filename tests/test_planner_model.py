"""The low-dimensional Diffusion-Forcing sequence model: causality, per-token levels, checkpoints."""

import copy

import pytest
import torch

from driftless.models.registry import load_model
from driftless.plan import sequence_df as sdf
from driftless.plan.train import FitConfig, fit


def _model(**kw):
    cfg = copy.deepcopy(sdf.PRESETS["debug"])
    cfg.token_dim, cfg.cond_dim = 6, 3
    for k, v in kw.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    m = sdf.SequenceDF(cfg)
    for p in m.parameters():  # leave the zero-initialised state so outputs depend on inputs
        torch.nn.init.normal_(p, std=0.2)
    return m.eval()


def test_causal_and_bidirectional():
    x = torch.randn(2, 5, 6)
    k = torch.randint(0, 1000, (2, 5))
    c = torch.randn(2, 3)
    causal = _model()
    x2 = x.clone()
    x2[:, 3] += 1.0
    out, out2 = causal(x, k, c), causal(x2, k, c)
    torch.testing.assert_close(out[:, :3], out2[:, :3])  # the past never sees the future
    assert not torch.allclose(out[:, 3:], out2[:, 3:])
    full = _model(causal=False)
    assert not torch.allclose(full(x, k, c)[:, :3], full(x2, k, c)[:, :3])
    # every token has its own noise level; the prefix conditions every token
    k2 = k.clone()
    k2[:, 4] = (k2[:, 4] + 500) % 1001
    assert not torch.allclose(causal(x, k, c)[:, 4], causal(x, k2, c)[:, 4])
    assert not torch.allclose(causal(x, k, c)[:, 0], causal(x, k, c + 1)[:, 0])
    with pytest.raises(ValueError, match="cond of shape"):
        causal(x, k, None)
    with pytest.raises(ValueError, match="tokens must have shape"):
        causal(torch.randn(2, 5, 4), k, c)


def test_training_noise_modes():
    g = torch.Generator().manual_seed(0)
    ind = _model().training_levels(64, 6, "cpu", g)
    assert (ind.float().std(1) > 0).all()  # independent levels per token (Diffusion Forcing)
    fs = _model(noise="full_sequence").training_levels(64, 6, "cpu", g)
    assert (fs == fs[:, :1]).all() and (fs > 0).all()
    tf = _model(noise="teacher_forcing").training_levels(64, 6, "cpu", g)
    for row in tf:  # clean prefix, then one shared level
        nz = row[row > 0]
        first = int((row > 0).nonzero()[0]) if len(nz) else 6
        assert (row[:first] == 0).all() and (nz == nz[0]).all()
    with pytest.raises(ValueError, match="noise must be one of"):
        sdf.SequenceDFConfig(noise="weird")


def test_normalisation_and_checkpoint_roundtrip(tmp_path):
    m = _model()
    m.set_stats(torch.arange(6.0), torch.full((6,), 2.0), torch.ones(3), torch.full((3,), 3.0))
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(m.unnormalize(m.normalize(x)), x)
    with pytest.raises(ValueError, match="needs 6 values"):
        m.set_stats(torch.zeros(5), torch.ones(5))
    m.cfg.meta = {"maze": "umaze", "frame_stack": 2}
    sdf.save(m, tmp_path / "ck", meta={"steps": 1})
    back = load_model(tmp_path / "ck", kind="sequence_df")
    assert back.cfg.meta["frame_stack"] == 2 and back.cfg.causal
    k = torch.randint(0, 1000, (2, 4))
    c = torch.randn(2, 3)
    torch.testing.assert_close(back(x, k, c), m(x, k, c))
    sdf.save(m, tmp_path / "half", half=True)
    half = load_model(tmp_path / "half", kind="sequence_df")
    torch.testing.assert_close(half.token_mean, m.token_mean)  # statistics stay exact
    torch.testing.assert_close(half(x, k, c), m(x, k, c), atol=0.05, rtol=0.05)


def test_fit_time_limit_and_trace():
    m = _model()
    x, c = torch.randn(8, 4, 6), torch.randn(8, 3)
    ema, trace = fit(m, lambda b, g: (x, c), FitConfig(steps=10_000, batch=8, max_seconds=0.5), progress=False)
    assert 0 < len(trace) < 10_000 and all(t == t for t in trace)
    assert ema is not m
