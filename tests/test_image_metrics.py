"""Image metrics: precision/recall and IS on closed-form cases, FID/IS end to end with random-weight
networks of each documented Inception interface, and the real-frame classifier."""

import warnings

import numpy as np
import pytest
import torch

from driftless.image.classifier import classifier_metrics, precision_recall, save_classifier, train_classifier
from driftless.image.inception import (InceptionV3, convert_state_dict, fid_and_is, inception_score, load_inception,
                                       save_random_inception)
from driftless.models.registry import load_model


def test_precision_recall_cases():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((400, 4))
    same = precision_recall(real, rng.standard_normal((400, 4)))
    assert same["precision"] > 0.8 and same["recall"] > 0.8
    far = precision_recall(real, rng.standard_normal((400, 4)) + 20)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    collapsed = precision_recall(real, 0.1 * rng.standard_normal((400, 4)))  # all near the mode
    assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.3
    with pytest.raises(ValueError, match="precision/recall"):
        precision_recall(real, rng.standard_normal((400, 3)))


def test_inception_score_closed_forms():
    k = 10
    assert abs(inception_score(np.eye(k)[np.arange(200) % k], splits=1)[0] - k) < 1e-6
    assert abs(inception_score(np.full((50, k), 1 / k))[0] - 1.0) < 1e-9


def _images(seed, n=16, noise=False):
    rng = np.random.default_rng(seed)
    if noise:
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    img = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):  # a bright square at a random place on dark blue
        img[i, ..., 2] = 60
        y, x = rng.integers(0, 24, 2)
        img[i, y:y + 8, x:x + 8] = 230
    return img


@pytest.mark.slow
def test_inception_safetensors_and_pth_conversion(tmp_path):
    from driftless.eval.fvd import feature_stats, frechet_distance

    path = save_random_inception(tmp_path / "inc.safetensors", "safetensors")
    ext = load_inception(path, size=75)  # the smallest input Inception-v3 takes
    assert isinstance(ext.model, InceptionV3) and ext.style == "state_dict"
    real, other, noise = _images(0, n=6), _images(1, n=6), _images(2, n=6, noise=True)
    (fr, p), (fo, _), (fn, _) = ext(real, batch_size=6), ext(other, batch_size=6), ext(noise, batch_size=6)
    assert fr.shape == (6, 2048) and p.shape == (6, 1008) and np.isfinite(fr).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    # (on 64 of the 2048 features: eigendecompositions of 2048 x 2048 matrices take seconds)
    fd = lambda a, b: frechet_distance(*feature_stats(a[:, :64]), *feature_stats(b[:, :64]))  # noqa: E731
    assert abs(fd(fr, fr)) < 1e-6 * fd(fr, fn) and fd(fr, fo) < fd(fr, fn)
    # a torchvision / pytorch-fid .pth state dict converts to the same network
    torch.save(ext.model.state_dict(), tmp_path / "inc.pth")
    ext2 = load_inception(convert_state_dict(tmp_path / "inc.pth", tmp_path / "conv.safetensors"), size=75)
    np.testing.assert_allclose(ext2(real[:2])[0], fr[:2], rtol=1e-4, atol=1e-5)


def test_inception_torchscript_interfaces_and_errors(tmp_path):
    ext = load_inception(save_random_inception(tmp_path / "inc.pt", "torchscript"), size=64)
    assert ext.style == "stylegan" and ext.no_bias
    r = fid_and_is(_images(0), _images(1), ext)
    assert r["fid"] >= 0 and 1.0 <= r["is"] <= 10.0

    class Plain(torch.nn.Module):  # forward(x in [-1, 1]) -> (features, logits)
        def forward(self, x):
            f = x.mean(dim=(2, 3))
            return f, torch.cat([f, -f], 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Plain()).save(str(tmp_path / "plain.pt"))
    plain = load_inception(tmp_path / "plain.pt", size=32)
    f, p = plain(_images(0, n=2))
    assert plain.style == "plain" and f.shape == (2, 3) and p.shape == (2, 6) and np.all(np.abs(f) <= 1)
    with pytest.raises(FileNotFoundError):
        load_inception(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="Inception-v3 state dict"):
        load_inception(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="uint8"):
        ext(np.zeros((2, 8, 8, 3), np.float32))


def test_classifier_learns_two_classes_and_scores_generated(tmp_path):
    rng = np.random.default_rng(0)
    n = 64
    imgs = rng.integers(0, 60, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    imgs[labels == 0, :, :, 0] += 150  # class "red"
    imgs[labels == 1, :, :, 2] += 150  # class "blue"
    clf = train_classifier(imgs, labels, ["red", "blue"], epochs=4, batch_size=16, width=8, progress=False)
    save_classifier(tmp_path / "clf", clf)
    clf = load_model(tmp_path / "clf", kind="image_classifier")
    good = classifier_metrics(clf, imgs, imgs[::-1].copy(), labels[::-1], k=3)
    assert good["accuracy"] == 1.0 and good["per_class_accuracy"] == {"red": 1.0, "blue": 1.0}
    wrong = classifier_metrics(clf, imgs, imgs, 1 - labels, k=3)  # every image asked for the other class
    assert wrong["accuracy"] == 0.0
    only_red = classifier_metrics(clf, imgs, imgs[labels == 0], np.zeros(n // 2, int), k=3)
    assert only_red["recall"] < good["recall"] and only_red["fd_classifier"] > good["fd_classifier"]
