"""The three frame models of the dynamics (forcing, mar, maskgit): schedules, causality,
training on a fixed batch, rollouts through World, and the VQ latent cache for MaskGIT."""

import dataclasses
import math

import numpy as np
import pytest
import torch

import driftless
from driftless.config import from_dict, override, to_dict
from driftless.models import registry
from driftless.models.dynamics import Dynamics, DynamicsConfig
from driftless.models.frame_mar import MARConfig
from driftless.models.frame_maskgit import MaskGITConfig
from driftless.nn.masking import cosine_mask_counts, random_masks, truncated_normal, truncated_normal_mean


def _dyn(frame_model: str, **over) -> Dynamics:
    torch.manual_seed(0)
    cfg = override(registry.preset("dynamics", "debug"), {"frame_model": frame_model, **over})
    dyn = Dynamics(cfg)
    with torch.no_grad():  # open the zero-initialised gates so every input matters
        for p in dyn.parameters():
            if p.abs().sum() == 0 and p.dim() >= 1:
                p.normal_(0, 0.02)
    return dyn


def _batch(cfg, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    t, s, c = cfg.clip_len, cfg.tokens_per_frame, cfg.latent_dim
    out = {"latents": torch.randn(b, t, s, c, generator=g),
           "actions": torch.randint(0, cfg.num_actions, (b, t - 1), generator=g)}
    if cfg.frame_model == "maskgit":  # a still scene: codes repeat over time (learnable from history)
        out["indices"] = torch.randint(0, cfg.maskgit.codebook_size, (b, 1, s), generator=g).expand(b, t, s)
    return out


# ---- schedules ---------------------------------------------------------------------------------
def test_mar_mask_ratio_is_the_truncated_normal_on_07_1():
    mar = MARConfig()
    g = torch.Generator().manual_seed(0)
    r = truncated_normal((200_000,), mar.mask_mean, mar.mask_std, mar.mask_min, mar.mask_max, generator=g)
    assert float(r.min()) >= 0.7 and float(r.max()) <= 1.0
    expected = truncated_normal_mean(1.0, 0.25, 0.7, 1.0)  # ~0.857, not the uniform's 0.85
    assert abs(float(r.mean()) - expected) < 2e-3
    # the density rises towards the mode at 1.0
    low, high = float(((r >= 0.7) & (r < 0.75)).float().mean()), float((r >= 0.95).float().mean())
    assert high > 1.3 * low
    # the MAR frame model: masked frames draw from it, clean frames (clean_frame_prob) are fully visible
    from driftless.models.frame_mar import MARFrame

    frame = MARFrame(registry.preset("dynamics", "debug"))
    ratios = frame.sample_ratios((100_000,), "cpu", torch.Generator().manual_seed(1))
    clean = ratios == 0
    assert abs(float(clean.float().mean()) - frame.mar.clean_frame_prob) < 0.01
    assert float(ratios[~clean].min()) >= 0.7 and abs(float(ratios[~clean].mean()) - expected) < 3e-3
    masks = random_masks(ratios[:50].reshape(5, 10), 64, torch.Generator().manual_seed(2))
    assert torch.equal(masks.sum(-1), torch.ceil(ratios[:50].reshape(5, 10) * 64 - 1e-6).long())


@pytest.mark.parametrize("n,steps", [(64, 16), (64, 25), (64, 64), (256, 64), (10, 3), (5, 9), (1, 1)])
def test_cosine_unmasking_schedule(n, steps):
    counts = cosine_mask_counts(n, steps)
    assert len(counts) == min(n, steps) and counts[-1] == 0
    prev = n
    for i, c in enumerate(counts):
        assert c < prev, "every step reveals at least one token"
        if i < len(counts) - 1:
            assert c >= 1
            want = math.floor(n * math.cos(math.pi / 2 * (i + 1) / len(counts)))
            assert c == max(1, min(prev - 1, want)), "MAR / MaskGIT cosine count"
        prev = c


def test_mar_sampling_reveals_every_token_exactly_once_on_the_schedule(monkeypatch):
    dyn = _dyn("mar").eval()
    s, steps = dyn.cfg.tokens_per_frame, 6
    calls = []

    def marker(z, **kw):  # the head "samples" the number of its call in every channel
        calls.append(z.shape[1])
        return torch.full(z.shape[:-1] + (dyn.cfg.latent_dim,), float(len(calls)))

    monkeypatch.setattr(dyn.frame.head, "sample", marker)
    st = dyn.new_state()
    dyn.observe(st, torch.randn(2, 1, s, dyn.cfg.latent_dim), None)
    x = dyn.generate_frame(st, torch.tensor([1, 2]), steps=steps, generator=torch.Generator().manual_seed(0))
    counts = cosine_mask_counts(s, steps)
    revealed = [prev - c for prev, c in zip([s] + counts[:-1], counts)]
    assert calls == revealed and sum(calls) == s
    for j in range(2):  # each token was written by exactly one step, in that step's number
        step_of = x[j, 0, :, 0]
        assert torch.all(x[j, 0] == step_of[:, None])
        assert [int((step_of == k + 1).sum()) for k in range(len(counts))] == revealed
    assert st.position == 2


def test_maskgit_mask_rate_and_step_schedule():
    dyn = _dyn("maskgit").eval()
    r = dyn.frame.sample_rates((100_000,), "cpu", torch.Generator().manual_seed(0))
    masked = r[r > 0]
    assert float(masked.min()) >= 0.5 and float(masked.max()) <= 1.0 and abs(float(masked.mean()) - 0.75) < 3e-3
    s = dyn.cfg.tokens_per_frame
    for steps in (4, 25):
        st = dyn.new_state()
        dyn.observe(st, torch.randint(0, 64, (3, 2, s)), None)
        trace = []
        out = dyn.frame.generate_frame(dyn.run, st, torch.tensor([0, 1, 2]), 3, "cpu", steps=steps,
                                       generator=torch.Generator().manual_seed(1), trace=trace)
        assert trace == [[c] * 3 for c in cosine_mask_counts(s, steps)] and trace[-1] == [0, 0, 0]
        assert out.shape == (3, 1, s) and out.dtype == torch.long and int(out.max()) < 64
        assert st.position == 3


# ---- causality -----------------------------------------------------------------------------------
def test_mar_and_maskgit_are_causal_across_frames():
    b, t = 2, 6
    dyn = _dyn("mar").eval()
    s, c = dyn.cfg.tokens_per_frame, dyn.cfg.latent_dim
    x, lv = torch.randn(b, t, s, c), torch.randint(0, 1000, (b, t))
    mask = torch.rand(b, t, s) < 0.7
    acts = torch.randint(0, dyn.cfg.num_actions, (b, t))
    z = dyn.frame.features(dyn.run, x, mask, lv, acts)
    x2, lv2, m2, a2 = x.clone(), lv.clone(), mask.clone(), acts.clone()
    x2[:, 4:] += 1
    lv2[:, 4] = 3
    m2[:, 4] = ~m2[:, 4]
    a2[:, 4] = (a2[:, 4] + 1) % dyn.cfg.num_actions
    z2 = dyn.frame.features(dyn.run, x2, m2, lv2, a2)
    assert torch.allclose(z[:, :4], z2[:, :4], atol=1e-6) and not torch.allclose(z[:, 4], z2[:, 4])

    dyn = _dyn("maskgit").eval()
    idx = torch.randint(0, 65, (b, t, s))  # 64 = the mask token
    logits = dyn.frame.logits(dyn.run, idx, acts)
    i2 = idx.clone()
    i2[:, 4:] = (i2[:, 4:] + 7) % 65
    logits2 = dyn.frame.logits(dyn.run, i2, acts)
    assert logits.shape == (b, t, s, 64)
    assert torch.allclose(logits[:, :4], logits2[:, :4], atol=1e-6) and not torch.allclose(logits[:, 4], logits2[:, 4])
    a3 = acts.clone()
    a3[:, 2] = (a3[:, 2] + 1) % dyn.cfg.num_actions
    assert not torch.allclose(dyn.frame.logits(dyn.run, idx, a3)[:, 2], logits[:, 2]), "the action matters"


# ---- training -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("frame_model", ["forcing", "mar", "maskgit"])
def test_frame_models_train_on_a_fixed_batch(frame_model):
    dyn = _dyn(frame_model).train()
    batch = _batch(dyn.cfg)
    opt = torch.optim.Adam(dyn.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same levels, masks and noise every step: a fixed objective
        loss, metrics = dyn.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    if frame_model == "maskgit":
        assert 0.3 < float(metrics["mask_ratio"]) < 1.0


def test_maskgit_needs_indices_and_a_vq_tokenizer():
    dyn = _dyn("maskgit")
    batch = _batch(dyn.cfg)
    del batch["indices"]
    with pytest.raises(ValueError, match="VQ code indices"):
        dyn.training_loss(batch)
    with pytest.raises(ValueError, match="VQ code indices"):
        dyn.observe(dyn.new_state(), torch.randn(1, 1, dyn.cfg.tokens_per_frame, 4), None)
    with pytest.raises(ValueError, match="teacher_forcing"):
        override(registry.preset("dynamics", "debug"), {"frame_model": "mar", "teacher_forcing": True})
    with pytest.raises(ValueError, match="frame_model"):
        override(registry.preset("dynamics", "debug"), {"frame_model": "raster"})


def test_old_forcing_configs_and_weights_keep_loading():
    cfg = registry.preset("dynamics", "debug")
    old = to_dict(cfg)
    del old["mar"], old["maskgit"]  # a config written before the frame models existed
    back = from_dict(DynamicsConfig, old)
    assert back.frame_model == "forcing" and back.mar == MARConfig() and back.maskgit == MaskGITConfig()
    keys = set(Dynamics(back).state_dict())
    # the forcing model's layers live in its frame model now; weights saved with them top-level
    # (`latent_in.*`, `latent_out.*`, as in the shipped world) load through a rename
    assert {"frame.latent_in.weight", "frame.latent_out.weight", "level_emb.mlp.0.weight", "action_emb.weight",
            "action_token_bias"} <= keys and not any(k.startswith("latent_") for k in keys)
    torch.manual_seed(3)
    a = Dynamics(back)
    torch.manual_seed(3)
    b = Dynamics(dataclasses.replace(back))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in keys)
    old_layout = {k.removeprefix("frame."): v + 1 for k, v in a.state_dict().items()}
    assert "latent_in.weight" in old_layout and "latent_out.bias" in old_layout
    b.load_state_dict(old_layout)  # strict
    assert all(torch.equal(b.state_dict()[k], a.state_dict()[k] + 1) for k in keys)
    mar_keys = set(Dynamics(dataclasses.replace(back, frame_model="mar")).state_dict())
    assert "frame.mask_token" in mar_keys and "frame.latent_out.weight" not in mar_keys


# ---- worlds -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("frame_model", ["mar", "maskgit"])
def test_mar_and_maskgit_worlds_roll_out(tmp_path, frame_model):
    from driftless.world.debug import make_debug_world

    world = driftless.load(make_debug_world(tmp_path / frame_model, dynamics_overrides={"frame_model": frame_model}))
    assert world.dynamics.cfg.frame_model == frame_model
    ctx = np.random.default_rng(0).integers(0, 256, size=(2, 3, 64, 64, 3), dtype=np.uint8)
    acts = np.array([[0, 1, 2, 3, 1, 0, 2, 2], [3, 3, 1, 0, 0, 1, 2, 3]])  # past the 6-frame window
    a = world.rollout(ctx, acts, seed=4)
    assert a.shape == (2, 11, 64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a[:, :3], ctx)
    assert np.array_equal(a, world.rollout(ctx, acts, seed=4)), "same seed, same frames"
    assert not np.array_equal(a, world.rollout(ctx, acts, seed=5))
    assert not np.array_equal(a, world.rollout(ctx, acts, seed=4, steps=2)), "steps is a sampling option"
    single = world.rollout(ctx[0], acts[0], seed=4)
    assert single.shape == (11, 64, 64, 3)
    assert world.infer_actions(ctx[0]).shape == (2,)
    world.reset(ctx, seed=0, cfg_scale=2.0)
    assert world.step([1, 2]).shape == (2, 64, 64, 3)
    if frame_model == "maskgit":  # generated codes decode through the VQ codebook
        assert world.tokenizer.cfg.bottleneck == "vq"
        z = world.encode(ctx[0])
        assert np.allclose(world.decode(z), world.decode(z)) and z.shape == (3, 64, world.tokenizer.cfg.latent_dim)


# ---- the VQ latent cache and the CLI --------------------------------------------------------------
@pytest.mark.slow
def test_vq_latent_cache_feeds_maskgit_training(tmp_path, small_store):
    from driftless.cli import main
    from driftless.data.latents import LatentCache, LatentClips, build_latent_cache

    torch.manual_seed(0)
    tok_cfg = override(registry.preset("tokenizer", "debug"), {"bottleneck": "vq", "codebook_size": 64})
    tok = registry.build("tokenizer", tok_cfg).eval()
    cache = LatentCache(build_latent_cache(small_store, tok, tmp_path / "lat", chunk=8, batch_size=4))
    assert cache.meta["codebook_size"] == 64 and cache.indices.shape == (small_store.num_frames, 64)
    frames = torch.from_numpy(np.array(small_store.frames(0, 0, 8)))[None]
    assert np.array_equal(cache.indices[:8], tok.encode_indices(frames)[0].numpy())
    lat = tok.normalize(tok.vq.lookup(torch.from_numpy(cache.indices[:8].astype(np.int64))))
    assert torch.allclose(torch.from_numpy(cache.latents[:8].astype(np.float32)), lat, atol=2e-3)
    batch = LatentClips(cache, 6, 3, action_source="none").batch(0)
    assert batch["indices"].shape == (3, 6, 64) and batch["indices"].dtype == torch.long
    kl = registry.build("tokenizer", registry.preset("tokenizer", "debug")).eval()
    kl_cache = LatentCache(build_latent_cache(small_store, kl, tmp_path / "lat-kl", chunk=8, batch_size=4))
    assert kl_cache.indices is None and "indices" not in LatentClips(kl_cache, 6, 3, "none").batch(0)
    # batches are read ahead on another thread: any batching writes every frame to its own row
    one = LatentCache(build_latent_cache(small_store, kl, tmp_path / "lat-kl-1", chunk=8, batch_size=1))
    assert np.allclose(one.latents.astype(np.float32), kl_cache.latents.astype(np.float32), atol=2e-3)

    common = ["--preset", "debug", "--steps", "2", "--batch-size", "2", "--actions", "true", "--device", "cpu",
              "--log-every", "1", "--val-every", "0", "--save-every", "0", "--warmup", "1"]
    out = tmp_path / "run"
    assert main(["train", "dynamics", "--data", str(tmp_path / "lat"), "--out", str(out), "--frame-model",
                 "maskgit", *common]) == 0
    cfg = driftless.checkpoint.read_header(out / "checkpoint", "dynamics")["config"]
    assert cfg["frame_model"] == "maskgit" and cfg["maskgit"]["codebook_size"] == 64
    assert main(["train", "dynamics", "--data", str(tmp_path / "lat-kl"), "--out", str(tmp_path / "bad"),
                 "--frame-model", "maskgit", *common]) == 1  # a KL cache has no codes
    assert main(["train", "dynamics", "--data", str(tmp_path / "lat-kl"), "--out", str(tmp_path / "mar"),
                 "--set", "frame_model=mar", *common]) == 0
    cfg = driftless.checkpoint.read_header(tmp_path / "mar" / "checkpoint", "dynamics")["config"]
    assert cfg["frame_model"] == "mar"


# ---- motion-weighted loss (forcing) ------------------------------------------------------------------
def test_motion_weights_favour_the_tokens_that_change():
    from driftless.models.frame_forcing import motion_weights

    x0 = torch.zeros(2, 3, 4, 5)  # (b, t, s, c)
    x0[0, 2, 1] = 1.0  # clip 0: one token of frame 2 changes; clip 1 stands still
    w = motion_weights(x0, 3.0)
    assert w.shape == (2, 3, 4)
    assert torch.equal(w[1], torch.ones(3, 4)) and torch.equal(w[0, :2], torch.ones(2, 4))
    # the one changed token carries all of its frame's change: 1 + 3 * 4 (4 tokens), the rest 1
    assert torch.allclose(w[0, 2], torch.tensor([1.0, 13.0, 1.0, 1.0]))


def test_token_weighted_diffusion_loss_is_a_weighted_mean_over_tokens():
    dyn = Dynamics(registry.preset("dynamics", "debug"))
    diff = dyn.frame.diffusion
    g = torch.Generator().manual_seed(0)
    out, x0, noise = (torch.randn(2, 3, 4, 5, generator=g) for _ in range(3))
    k = torch.randint(1, diff.cfg.levels, (2, 3), generator=g)
    plain = diff.loss(out, x0, noise, k)
    assert torch.allclose(diff.loss(out, x0, noise, k, torch.full((2, 3, 4), 7.0)), plain)
    only = torch.zeros(2, 3, 4)
    only[..., 2] = 1.0  # all weight on token 2: that token's error alone
    err2 = ((out - diff.target(x0, noise, k)) ** 2)[..., 2, :].mean(-1) * diff.loss_weight(k)
    assert torch.allclose(diff.loss(out, x0, noise, k, only), err2)


def test_motion_weight_reaches_the_training_loss_and_is_checked():
    base = registry.preset("dynamics", "debug")
    g = torch.Generator().manual_seed(1)
    batch = {"latents": torch.randn(8, base.clip_len, base.tokens_per_frame, base.latent_dim, generator=g),
             "actions": torch.randint(0, base.num_actions, (8, base.clip_len - 1), generator=g)}
    losses = {}
    for mw in (0.0, 4.0):
        torch.manual_seed(0)
        dyn = Dynamics(base)  # the same weights for both (same seed)
        dyn.cfg.motion_weight = mw
        torch.manual_seed(1)
        losses[mw] = dyn.training_loss(batch)[0]
    assert torch.isfinite(losses[4.0]) and not torch.allclose(losses[0.0], losses[4.0])
    for bad, msg in (({"motion_weight": -1.0}, ">= 0"), ({"motion_weight": 1.0, "frame_model": "mar"}, "forcing")):
        with pytest.raises(ValueError, match=msg):
            override(base, bad)
