"""FVD: the Fréchet distance against closed forms, and both weight formats end to end with
random-weight networks of the documented interface."""

import numpy as np
import pytest
import torch

from driftless.eval.fvd import (I3DFeatures, InceptionI3D, convert_state_dict, feature_stats, frechet_distance, fvd,
                                load_i3d, save_random_i3d)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    s = a @ a.T + np.eye(6)
    mu = rng.standard_normal(6)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8
    # diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2 + |mu1 - mu2|^2
    s1, s2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    m1, m2 = rng.standard_normal(5), rng.standard_normal(5)
    expected = ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum() + ((m1 - m2) ** 2).sum()
    assert abs(frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) - expected) < 1e-9
    # scaling one covariance by c^2: Tr(S) (1 - c)^2 for commuting matrices
    assert abs(frechet_distance(mu, s, mu, 4 * s) - np.trace(s) * (1 - 2) ** 2) < 1e-8
    b = rng.standard_normal((6, 6))
    s2 = b @ b.T + 0.5 * np.eye(6)
    assert abs(frechet_distance(mu, s, m1[:1].repeat(6), s2) - frechet_distance(m1[:1].repeat(6), s2, mu, s)) < 1e-8
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu, s, mu[:5], s[:5, :5])


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
    s1, s2 = a @ a.T, b @ b.T + 0.1 * np.eye(8)
    m1, m2 = rng.standard_normal(8), rng.standard_normal(8)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert abs(frechet_distance(m1, s1, m2, s2) - expected) < 1e-6 * max(1.0, abs(expected))


def test_feature_stats_needs_two_samples():
    mu, sigma = feature_stats(np.array([[1.0, 2.0], [3.0, 6.0]]))
    np.testing.assert_allclose(mu, [2, 4])
    np.testing.assert_allclose(sigma, [[2, 4], [4, 8]])
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 3)))


def _videos(seed, n=8, t=8, size=32, noise=False):
    rng = np.random.default_rng(seed)
    base = np.zeros((n, t, size, size, 3), np.uint8)
    for i in range(n):  # a bright square moving right on a dark background
        for j in range(t):
            x = (2 * j + int(rng.integers(0, 8))) % (size - 6)
            base[i, j, 10:16, x:x + 6] = 230
    if noise:
        base = rng.integers(0, 256, size=base.shape, dtype=np.uint8)
    return base


@pytest.mark.slow
def test_safetensors_i3d_end_to_end(tmp_path):
    path = save_random_i3d(tmp_path / "i3d.safetensors", kind="safetensors", seed=0)
    extractor = load_i3d(path, size=32)
    assert isinstance(extractor.model, InceptionI3D) and not extractor.stylegan_kwargs
    real, other, noise = _videos(0), _videos(1), _videos(2, noise=True)
    feats = extractor(real, batch_size=4)
    assert feats.shape == (8, 400) and np.isfinite(feats).all()
    same = fvd(real, real, extractor)["fvd"]
    near, far = fvd(real, other, extractor)["fvd"], fvd(real, noise, extractor)["fvd"]
    assert same < 1e-6 and near < far
    # the .pt state dict of a PyTorch port converts to the same network
    torch.save(extractor.model.state_dict(), tmp_path / "port.pt")
    converted = load_i3d(convert_state_dict(tmp_path / "port.pt", tmp_path / "port.safetensors"), size=32)
    np.testing.assert_allclose(converted(real[:2]), feats[:2], rtol=1e-5, atol=1e-6)


def test_torchscript_i3d_with_stylegan_interface(tmp_path):
    path = save_random_i3d(tmp_path / "i3d.pt", kind="torchscript", seed=0)
    extractor = load_i3d(path, size=32)
    assert extractor.stylegan_kwargs
    real, noise = _videos(0), _videos(2, noise=True)
    r = fvd(real, noise, extractor)
    assert r["fvd"] > 0 and r["features"] == 32 and r["frames"] == 8 and r["input_size"] == 32
    assert fvd(real, real, extractor)["fvd"] < 1e-6


def test_preparation_and_errors(tmp_path):
    ex = I3DFeatures(torch.nn.Identity(), size=16)
    v = torch.zeros(1, 2, 8, 8, 3, dtype=torch.uint8)
    v[..., 0] = 255
    x = ex.prepare(v)
    assert x.shape == (1, 3, 2, 16, 16)
    assert torch.allclose(x[:, 0], torch.ones(1, 2, 16, 16)) and torch.allclose(x[:, 1], -torch.ones(1, 2, 16, 16))
    with pytest.raises(ValueError, match="uint8"):
        ex(np.zeros((1, 2, 8, 8, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="no I3D weights"):
        load_i3d(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError, match="not a TorchScript"):
        load_i3d(tmp_path / "junk.pt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an InceptionI3D"):
        load_i3d(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="share"):
        fvd(_videos(0, t=8), _videos(0, t=6), ex)
