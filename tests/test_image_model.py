"""MAR image model: masking, attention structure, sampling schedules, conditioning, temperature
and guidance, checkpoints."""

import pytest
import torch

from driftless.config import from_dict, override, to_dict
from driftless.image.model import ImageConfig, ImageMAR, PRESETS
from driftless.nn.masking import truncated_normal


def _model(order="random", **kw):
    torch.manual_seed(0)
    return ImageMAR(override(PRESETS["debug"], {"order": order, **kw}))


def test_config_checks_and_head_follows_the_model():
    cfg = override(PRESETS["debug"], {"dim": 48, "latent_dim": 6})
    assert (cfg.diffloss.cond_dim, cfg.diffloss.token_dim) == (48, 6)
    assert from_dict(ImageConfig, to_dict(cfg)) == cfg
    for bad in ({"order": "spiral"}, {"ar_steps": 5}, {"mask_ratio_min": 0.0}, {"label_drop": 1.0},
                {"class_names": ["a"]}):
        with pytest.raises(ValueError):
            override(PRESETS["debug"], bad)


def test_truncated_normal_mask_ratio():
    r = truncated_normal((20000,), 1.0, 0.25, 0.7, 1.0, "cpu", torch.Generator().manual_seed(0))
    assert r.min() >= 0.7 and r.max() <= 1.0
    # mean of N(1, 0.25) truncated to [0.7, 1]: 1 - 0.25 (phi(0) - phi(-1.2)) / (Phi(0) - Phi(-1.2)) = 0.8666
    assert abs(r.mean().item() - 0.8666) < 0.01
    m = _model()
    _, stats = m.training_loss({"latents": torch.randn(64, 4, 4), "labels": torch.randint(0, 2, (64,))})
    assert 0.7 <= stats["mask_ratio"] <= 1.0


def test_attention_structure_random_vs_raster():
    x, cls = torch.randn(2, 4, 4), torch.zeros(2, 32)
    raster = _model("raster").eval()
    z = raster.backbone(x, None, cls)
    x2 = x.clone()
    x2[:, 1] += 1.0  # token 1 changes: z of tokens 0, 1 (which see only tokens < i) must not
    z2 = raster.backbone(x2, None, cls)
    assert torch.allclose(z[:, :2], z2[:, :2], atol=1e-6) and not torch.allclose(z[:, 2:], z2[:, 2:])
    mar = _model("random").eval()
    known = torch.tensor([[True, True, False, False]] * 2)
    z = mar.backbone(x, known, cls)
    x3 = x.clone()
    x3[:, 3] += 5.0  # a masked position's value is never seen
    assert torch.allclose(z, mar.backbone(x3, known, cls), atol=1e-6)
    x3 = x.clone()
    x3[:, 1] += 1.0  # a known token is seen by every position (bidirectional)
    assert not torch.allclose(z[:, 0], mar.backbone(x3, known, cls)[:, 0])


def _spy(model):
    calls = []
    real = model.head.sample

    def sample(z, **kw):
        calls.append((z.clone(), kw))
        return real(z, **kw)

    model.head.sample = sample
    return calls


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_masked_generation_reveals_every_token_once(steps):
    m = _model().eval()
    calls = _spy(m)
    out = m.generate([0, 1, 1], ar_steps=steps, diffusion_steps=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 4, 4) and torch.isfinite(out).all()
    assert len(calls) == steps
    assert sum(c[0].shape[0] for c in calls) == 3 * 4  # every token of every image sampled exactly once
    assert (out != 0).all()
    with pytest.raises(ValueError, match="ar_steps"):
        m.generate([0], ar_steps=5)


def test_linear_cfg_schedule_in_generation():
    m = _model().eval()
    calls = _spy(m)
    m.generate([0, 1], ar_steps=4, cfg_scale=3.0, diffusion_steps=3)
    scales = [c[1]["cfg_scale"] for c in calls]
    assert scales == sorted(scales) and abs(scales[-1] - 3.0) < 1e-9 and scales[0] < 3.0
    assert all(c[1]["z_uncond"] is not None or c[1]["cfg_scale"] == 1.0 for c in calls)
    calls.clear()
    m.generate([0, 1], ar_steps=4, cfg_scale=3.0, cfg_schedule="constant", diffusion_steps=3)
    assert [c[1]["cfg_scale"] for c in calls] == [3.0] * 4


def test_raster_generation_kv_cache_matches_full_forward():
    m = _model("raster").eval()
    calls = _spy(m)
    out = m.generate([0, 1], diffusion_steps=4, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4  # one token per step
    z_cached = torch.stack([c[0] for c in calls], 1)  # (b, s, d)
    z_full = m.backbone(out, None, m.class_vectors(torch.tensor([0, 1]), 2, "cpu"))
    assert torch.allclose(z_cached, z_full, atol=1e-5)
    with pytest.raises(ValueError, match="one token per step"):
        m.generate([0], ar_steps=2)


def test_batches_of_images_need_a_tokenizer_and_labels():
    m = _model()
    with pytest.raises(ValueError, match="tokenizer"):
        m.training_loss({"images": torch.zeros(2, 64, 64, 3, dtype=torch.uint8), "labels": torch.zeros(2)})
    with pytest.raises(ValueError, match="labels"):
        m.training_loss({"latents": torch.randn(2, 4, 4)})
    with pytest.raises(ValueError, match="latents"):
        m.training_loss({"latents": torch.randn(2, 5, 4), "labels": torch.zeros(2)})


def _two_classes(n, g, flip=0.2):
    """Class 0: all tokens near -1, class 1 near +1; a `flip` fraction of each class has the other sign."""
    y = torch.randint(0, 2, (n,), generator=g)
    sign = torch.where(y == 0, -1.0, 1.0) * torch.where(torch.rand(n, generator=g) < flip, -1.0, 1.0)
    return sign[:, None, None] + 0.3 * torch.randn(n, 4, 4, generator=g), y


@pytest.fixture(scope="module")
def trained():
    m = _model(label_drop=0.2)
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        x, y = _two_classes(64, g)
        loss, _ = m.training_loss({"latents": x, "labels": y})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _stats(m, cfg=1.0, temperature=1.0, n=300):
    labels = torch.tensor([0] * n + [1] * n)
    s = m.generate(labels, cfg_scale=cfg, temperature=temperature, diffusion_steps=25,
                   generator=torch.Generator().manual_seed(1))
    mean = s.mean((1, 2))
    right = torch.where(labels == 0, mean < 0, mean > 0).float()
    spread = (s - s.mean((1, 2), keepdim=True)).std()  # within-image spread around its mode
    return right[:n].mean().item(), right[n:].mean().item(), spread.item()


@pytest.mark.slow
def test_conditioning_temperature_and_guidance(trained):
    r0, r1, spread = _stats(trained)
    # each class is produced on request, in about its data proportion (80 % in its own mode)
    assert 0.65 < r0 < 0.95 and 0.65 < r1 < 0.95
    g0, g1, _ = _stats(trained, cfg=4.0)
    assert (g0 + g1) / 2 > (r0 + r1) / 2 + 0.04  # guidance concentrates mass on the class's mode
    _, _, cold = _stats(trained, temperature=0.5)
    assert cold < 0.75 * spread and 0.15 < spread < 0.8  # data: 0.3 within an image


def test_checkpoint_roundtrip(tmp_path):
    from driftless import checkpoint
    from driftless.models.registry import load_model

    m = _model("raster")
    checkpoint.save(tmp_path / "ck", "image", to_dict(m.cfg), m.state_dict())
    back = load_model(tmp_path / "ck", kind="image")
    assert back.cfg == m.cfg
    x = torch.randn(2, 4, 4)
    cls = m.class_vectors(torch.tensor([0, 1]), 2, "cpu")
    assert torch.allclose(back.backbone(x, None, cls), m.eval().backbone(x, None, cls))


def test_uint8_images_through_an_attached_tokenizer():
    from driftless.models.tokenizer import PRESETS as TOK, Tokenizer

    tok = Tokenizer(TOK["debug"]).eval()  # 64x64 frames -> 8x8 tokens of 4 channels
    m = ImageMAR(override(PRESETS["debug"], {"grid": [8, 8], "ar_steps": 2}))
    with pytest.raises(ValueError, match="tokenizer gives"):
        _model().attach_tokenizer(tok)
    m.attach_tokenizer(tok)
    assert "_tokenizer" not in dict(m.named_children()) and not any(k.startswith("_tok") for k in m.state_dict())
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    loss, _ = m.training_loss({"images": images, "labels": torch.tensor([0, 1, 1])})
    assert torch.isfinite(loss)
    out = m.decode(m.eval().generate([0, 1], diffusion_steps=3))
    assert out.shape == (2, 64, 64, 3) and out.dtype == torch.uint8
