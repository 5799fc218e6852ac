import dataclasses

import pytest
import torch

from driftless.config import override
from driftless.models import registry
from driftless.models.dynamics import Dynamics
from driftless.models.lam import LatentActionModel
from driftless.models.tokenizer import Tokenizer
from driftless.train.world_stages import lam_validation


def _frames(b=2, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 64, 64, 3), dtype=torch.uint8, generator=g)


def _randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("bottleneck,head_conv", [("kl", 0), ("vq", 0), ("kl", 4)])
def test_tokenizer_shapes_losses_and_temporal_causality(bottleneck, head_conv):
    torch.manual_seed(0)
    cfg = override(registry.preset("tokenizer", "debug"),
                   {"bottleneck": bottleneck, "codebook_size": 32, "head_conv": head_conv})
    tok = Tokenizer(cfg).train()
    frames = _frames()
    loss, metrics = tok.training_loss({"frames": frames})
    loss.backward()
    assert torch.isfinite(loss) and metrics["reg"] >= 0
    if bottleneck == "vq":
        assert 1 <= float(metrics["vq_perplexity"]) <= 32
    tok = _randomise(tok)
    z = tok.encode(frames)
    assert z.shape == (2, 5, cfg.tokens_per_frame, cfg.latent_dim)
    assert tok.decode(z).shape == frames.shape and tok.decode(z).dtype == torch.uint8
    changed = frames.clone()
    changed[:, 3] = 255 - changed[:, 3]
    z2 = tok.encode(changed)
    assert torch.equal(z[:, :3], z2[:, :3]), "a frame's latent must not depend on later frames"
    assert not torch.equal(z[:, 3:], z2[:, 3:])
    d1, d2 = tok.decode(z), tok.decode(torch.cat([z[:, :3], z2[:, 3:]], 1))
    assert torch.equal(d1[:, :3], d2[:, :3]), "decoding frame t must not use later latents"
    if head_conv:  # the refinement block is trained from zero: randomised, it must change the pixels
        assert tok.refine[2].weight.abs().sum() > 0


def test_tokenizer_conv_head_decodes_step_by_step_as_a_whole_clip():
    from driftless.nn.attention import KVCache

    torch.manual_seed(0)
    cfg = override(registry.preset("tokenizer", "debug"), {"head_conv": 4})
    tok = _randomise(Tokenizer(cfg))
    z = tok.encode(_frames(b=2, t=4))
    whole = tok._decode_raw(tok.denormalize(z))
    caches = [KVCache() for _ in tok.decoder.blocks]
    steps = [tok._decode_raw(tok.denormalize(z[:, i:i + 1]), caches, i, 8) for i in range(4)]
    assert torch.allclose(torch.cat(steps, 1), whole, atol=1e-5)
    with pytest.raises(ValueError, match="head_conv"):
        override(registry.preset("tokenizer", "debug"), {"head_conv": -1})


def test_tokenizer_latent_statistics_normalise():
    torch.manual_seed(0)
    tok = Tokenizer(registry.preset("tokenizer", "debug")).eval()
    mean, std = tok.fit_latent_stats([_frames(seed=s) for s in range(3)])
    z = torch.cat([tok.encode(_frames(seed=s)) for s in range(3)]).reshape(-1, len(mean))
    assert torch.allclose(z.mean(0), torch.zeros(len(mean)), atol=1e-3)
    assert torch.allclose(z.std(0), torch.ones(len(mean)), atol=1e-2)
    assert tok.cfg.latent_mean == mean


def test_lam_causality_and_inference_only_config():
    torch.manual_seed(0)
    lam = _randomise(LatentActionModel(registry.preset("lam", "debug")))
    frames = _frames(t=6)
    a = lam._action_vectors(frames.float() / 127.5 - 1)
    changed = frames.clone()
    changed[:, 4] = 0
    a2 = lam._action_vectors(changed.float() / 127.5 - 1)
    # action t (transition t -> t+1) sees frames <= t+1: actions 0..2 ignore frame 4
    assert torch.allclose(a[:, :3], a2[:, :3], atol=1e-6) and not torch.allclose(a[:, 3:], a2[:, 3:])
    x = frames.float() / 127.5 - 1
    acts = torch.randn(2, 5, lam.cfg.action_dim)
    p1 = lam.decode(x[:, :5], acts)
    x_changed = x.clone()
    x_changed[:, 3] = -1
    p2 = lam.decode(x_changed[:, :5], acts)
    assert torch.allclose(p1[:, :3], p2[:, :3], atol=1e-5), "the decoder must see only frames <= t"
    idx = lam.infer_actions(frames)
    assert idx.shape == (2, 5) and idx.dtype == torch.int64 and idx.max() < lam.cfg.num_actions
    slim = LatentActionModel(dataclasses.replace(lam.cfg, inference_only=True))
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in lam.parameters())
    with pytest.raises(ValueError, match="encoder-only"):
        slim.decode(x[:, :2], acts[:, :2])


def test_lam_chunks_share_one_action_and_see_their_whole_chunk():
    torch.manual_seed(0)
    cfg = dataclasses.replace(registry.preset("lam", "debug"), chunk=3)
    lam = _randomise(LatentActionModel(cfg))
    frames = _frames(t=9)  # 8 transitions: chunks [0, 1, 2], [3, 4, 5], [6, 7]
    x = frames.float() / 127.5 - 1
    a = lam._action_vectors(x)
    for lo, hi in ((0, 3), (3, 6), (6, 8)):
        assert torch.allclose(a[:, lo:hi], a[:, lo:lo + 1].expand(-1, hi - lo, -1), atol=1e-6)
    assert not torch.allclose(a[:, 0], a[:, 3])
    # the mean of the chunk-1 vectors of the same weights
    plain = LatentActionModel(dataclasses.replace(cfg, chunk=1))
    plain.load_state_dict(lam.state_dict())
    v = plain._action_vectors(x)
    assert torch.allclose(a[:, 0], v[:, 0:3].mean(1), atol=1e-5) and torch.allclose(a[:, 7], v[:, 6:8].mean(1), atol=1e-5)
    # a chunk's action sees the chunk's last frame (frame 3 ends chunk 0); the chunks before a change don't
    changed = frames.clone()
    changed[:, 6] = 0  # frame 6 ends chunk 1's last transition (5 -> 6)
    a2 = lam._action_vectors(changed.float() / 127.5 - 1)
    assert torch.allclose(a[:, :3], a2[:, :3], atol=1e-6) and not torch.allclose(a[:, 3:6], a2[:, 3:6])
    idx = lam.infer_actions(frames)
    assert (idx[:, 0:3] == idx[:, :1]).all() and (idx[:, 6:8] == idx[:, 6:7]).all()
    loss, stats = lam.training_loss({"frames": frames})
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="chunk"):
        dataclasses.replace(cfg, chunk=0)


@pytest.mark.parametrize("conditioning", ["token", "additive"])
def test_dynamics_causality_and_action_effect(conditioning):
    torch.manual_seed(0)
    cfg = override(registry.preset("dynamics", "debug"), {"action_conditioning": conditioning})
    dyn = _randomise(Dynamics(cfg))
    b, t, s, c = 2, 6, cfg.tokens_per_frame, cfg.latent_dim
    x, levels = torch.randn(b, t, s, c), torch.randint(0, 1000, (b, t))
    acts = torch.randint(0, cfg.num_actions, (b, t))
    out = dyn(x, levels, acts)
    x2, lv2, a2 = x.clone(), levels.clone(), acts.clone()
    x2[:, 4] += 1
    lv2[:, 4] = 3
    a2[:, 4] = (a2[:, 4] + 1) % cfg.num_actions
    out2 = dyn(x2, lv2, a2)
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-6), "frames < t must not see frame t, its level or action"
    a3 = acts.clone()
    a3[:, 2] = (a3[:, 2] + 1) % cfg.num_actions
    assert not torch.allclose(dyn(x, levels, a3)[:, 2], out[:, 2]), "the action must change the prediction"


def test_dynamics_training_levels_forcing_vs_teacher_forcing(monkeypatch):
    torch.manual_seed(0)
    cfg = registry.preset("dynamics", "debug")
    seen = {}
    for tf in (False, True):
        dyn = Dynamics(dataclasses.replace(cfg, teacher_forcing=tf))
        orig = dyn.frame.forward  # the forcing frame model's denoiser

        def spy(run, x, levels, actions, **kw):
            seen[tf] = levels.clone()
            return orig(run, x, levels, actions, **kw)

        monkeypatch.setattr(dyn.frame, "forward", spy)
        batch = {"latents": torch.randn(64, 6, cfg.tokens_per_frame, cfg.latent_dim),
                 "actions": torch.randint(0, cfg.num_actions, (64, 5))}
        loss, _ = dyn.training_loss(batch)
        loss.backward()
    df, tf = seen[False], seen[True]
    assert (df[:, 0] != df[:, 1]).float().mean() > 0.9, "Diffusion Forcing: independent level per frame"
    assert torch.all(tf[:, :-1] == 0) and torch.all(tf[:, -1] > 0), "teacher forcing: clean history, noisy last"


def test_dynamics_generate_frame_is_seeded_and_cache_grows_to_window():
    torch.manual_seed(0)
    cfg = registry.preset("dynamics", "debug")
    dyn = _randomise(Dynamics(cfg))
    outs = []
    for _ in range(2):
        st = dyn.new_state()
        g = torch.Generator().manual_seed(5)
        dyn.observe(st, torch.randn(1, 2, cfg.tokens_per_frame, cfg.latent_dim, generator=torch.Generator().manual_seed(1)),
                    None, generator=g)
        frames = [dyn.generate_frame(st, torch.tensor([1]), generator=g) for _ in range(10)]
        outs.append(torch.cat(frames, 1))
        assert st.position == 12 and st.caches[0].length == cfg.context_window - 1
    assert torch.equal(outs[0], outs[1])


def _shifting_clips(n, t, seed, res=32, shift=4):
    """Smooth textures panned left, not at all, or right by `shift` pixels per step (the action)."""
    import numpy as np

    g = np.random.default_rng(seed)
    base = torch.from_numpy(g.integers(0, 256, size=(n, 3, 6, 12)).astype(np.float32))
    tex = torch.nn.functional.interpolate(base, size=(res, 2 * res), mode="bilinear", align_corners=False)
    tex = tex.permute(0, 2, 3, 1).numpy()
    acts = g.integers(0, 3, size=(n, t - 1))
    x = g.integers(0, res, size=n)
    frames = np.zeros((n, t, res, res, 3), np.uint8)
    for i in range(t):
        for j in range(n):
            frames[j, i] = np.roll(tex[j], -x[j], axis=1)[:, :res].astype(np.uint8)
        if i < t - 1:
            x = x + (acts[:, i] - 1) * shift
    return torch.from_numpy(frames), acts


@pytest.mark.slow
def test_lam_with_a_product_code_trains_through_its_phases():
    """`factors` makes the LAM's code a tuple (nn.quantize.ProductQuantizer): it warms up, is set by
    k-means and quantises like the flat codebook, and its indices name num_actions = prod(factors) codes."""
    torch.manual_seed(0)
    cfg = override(registry.preset("lam", "debug"), {"num_actions": 6, "factors": [3, 2], "vq_warmup": 2})
    assert cfg.factors == (3, 2)
    lam = LatentActionModel(cfg)
    opt = torch.optim.AdamW(lam.parameters(), lr=1e-3)
    frames = _frames(t=5)
    for _ in range(4):  # warm-up, warm-up, k-means, quantised
        lam.before_train_step()
        loss, stats = lam.training_loss({"frames": frames})
        opt.zero_grad()
        loss.backward()
        opt.step()
        lam.after_train_step()
        assert torch.isfinite(loss)
    assert "vq_perplexity_1" in stats  # the last step quantised through both parts
    idx = lam.infer_actions(frames)
    assert idx.shape == (2, 4) and 0 <= int(idx.min()) and int(idx.max()) < 6
    pred = lam.decode_indices(frames[:, :4].float() / 127.5 - 1, idx)
    assert pred.shape == (2, 4, 64, 64, 3)
    with pytest.raises(ValueError, match="num_actions=6"):
        override(registry.preset("lam", "debug"), {"factors": [3, 2]})
    with pytest.raises(ValueError, match="split action_dim"):
        override(registry.preset("lam", "debug"), {"num_actions": 27, "factors": [3, 3, 3]})


def test_lam_discovers_the_actions_that_move_the_view():
    """The VQ warm-up lets the encoder learn motion before it must pick a code; afterwards the
    codes line up with the true pan direction and predictions depend on them."""
    import numpy as np

    torch.manual_seed(0)
    cfg = override(registry.preset("lam", "debug"), {
        "num_actions": 4, "resolution": [32, 32], "vq_warmup": 100, "encoder.depth": 2, "decoder.depth": 2,
        "encoder.dim": 64, "decoder.dim": 64})
    lam = LatentActionModel(cfg)
    opt = torch.optim.AdamW(lam.parameters(), lr=3e-4)
    for step in range(220):
        frames, _ = _shifting_clips(32, 3, step)
        loss, _ = lam.training_loss({"frames": frames})
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lam.parameters(), 1.0)
        opt.step()
    lam.eval()
    frames, acts = _shifting_clips(64, 3, 999)
    metrics, _ = lam_validation(lam, {"frames": frames})  # the LAM stage's validation
    idx = lam.infer_actions(frames).numpy()
    table = np.zeros((3, cfg.num_actions))
    np.add.at(table, (acts.ravel(), idx.ravel()), 1)
    purity = table.max(0).sum() / table.sum()
    assert purity > 0.9, f"latent actions should follow the pan direction (purity {purity:.2f})"
    assert metrics["delta_psnr"] > 2.0, metrics
