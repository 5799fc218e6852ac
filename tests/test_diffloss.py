"""The per-token diffusion head (MAR's DiffLoss) and its MLP denoiser.

Three groups: the sampler against a Gaussian whose exact denoiser is known (no training), a
small head trained on a 2-D mixture of four Gaussians (loss, mode masses, temperature, CFG,
bf16 autocast), and shapes / masks / bad inputs on the debug preset.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from driftless.checkpoint import read_header, read_weights, save
from driftless.config import from_dict, to_dict
from driftless.diffusion.diffloss import (
    PRESETS,
    DiffLoss,
    DiffLossConfig,
    ddpm_sample,
    diffloss_config,
    linear_cfg_schedule,
)
from driftless.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from driftless.nn.mlp_denoiser import MLPDenoiser, MLPDenoiserConfig


# ---- the sampler against an exact denoiser ---------------------------------------------------

def exact_gaussian_denoiser(diffusion: GaussianDiffusion, mu: torch.Tensor, sd: float):
    """The Bayes-optimal network output for data N(mu, sd^2 I), in the diffusion's parametrisation."""

    def denoise(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        a, s = diffusion.schedule.alpha_sigma(k)
        a, s = a[:, None], s[:, None]
        x0 = mu + a * sd**2 / (a**2 * sd**2 + s**2) * (x - a * mu)  # E[x0 | x_k]
        eps = (x - a * x0) / s
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[diffusion.cfg.prediction]

    return denoise


def test_sampler_reproduces_a_gaussian_with_its_exact_denoiser():
    mu, sd = torch.tensor([0.5, -1.0]), 0.3
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))

    def run(prediction: str, **kw) -> torch.Tensor:
        diffusion = GaussianDiffusion(DiffusionConfig(schedule="cosine", prediction=prediction, context_level=0))
        kw.setdefault("steps", 100)
        return ddpm_sample(exact_gaussian_denoiser(diffusion, mu, sd), diffusion, noise,
                           generator=torch.Generator().manual_seed(1), **kw)

    x = run("eps")
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    # one sampler for every parametrisation: the same exact denoiser gives the same samples
    for prediction in ("v", "x0"):
        assert torch.allclose(run(prediction), x, atol=1e-4)
    assert torch.allclose(x.mean(0), mu, atol=0.02)
    ratio = {steps: run("eps", steps=steps).std(0).mean().item() / sd for steps in (25, 50, 100)}
    # DDPM with the fixed posterior variance loses a little spread, less with more steps
    # (measured: 0.84 / 0.91 / 0.95 of the true std; MAR learns the variance instead)
    assert 0.92 < ratio[100] < 1.0 and ratio[25] < ratio[50] < ratio[100], ratio
    # the temperature scales the injected noise, and so the spread
    std = {t: run("eps", temperature=t).std(0).mean().item() for t in (0.5, 1.0, 1.5)}
    assert std[0.5] < 0.9 * std[1.0] < 0.9**2 * std[1.5], std
    # eta = 0 is deterministic DDIM: the right spread with no injected noise at all
    x = run("eps", eta=0.0)
    assert abs(x.std(0).mean().item() / sd - 1) < 0.04
    assert torch.equal(x, run("eps", eta=0.0, temperature=3.0))


# ---- a head trained on a 2-D mixture of four Gaussians ----------------------------------------

CENTRES = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
SD = 0.25  # per-axis std of each mode
P_LABEL = 0.6  # the label names the sample's own mode with this probability, else another mode
P_NULL = 0.2  # the label is dropped (z = 0, the unconditional vector) with this probability
TRAIN_STEPS, BATCH, N_SAMPLES, SAMPLING_STEPS = 400, 256, 2000, 50


def toy_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mode = torch.randint(0, 4, (n,), generator=g)
    x = CENTRES[mode] + SD * torch.randn(n, 2, generator=g)
    keep = torch.rand(n, generator=g) < P_LABEL
    label = torch.where(keep, mode, (mode + torch.randint(1, 4, (n,), generator=g)) % 4)
    z = F.one_hot(label, 4).float()
    z[torch.rand(n, generator=g) < P_NULL] = 0.0
    return x, z


def nearest_mode(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, CENTRES).argmin(1)


def spread(x: torch.Tensor) -> float:
    """RMS distance of samples to their nearest mode centre."""
    return (x - CENTRES[nearest_mode(x)]).norm(dim=1).pow(2).mean().sqrt().item()


def mode_mass(x: torch.Tensor) -> torch.Tensor:
    return torch.bincount(nearest_mode(x), minlength=4).float() / x.shape[0]


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    cfg = DiffLossConfig(token_dim=2, cond_dim=4, width=64, depth=3, freq_dim=64,
                         sampling_steps=SAMPLING_STEPS)
    head = DiffLoss(cfg)
    g = torch.Generator().manual_seed(0)
    held_out = toy_batch(2048, torch.Generator().manual_seed(123))

    def eval_loss() -> float:
        with torch.no_grad():
            return head.loss(*held_out, generator=torch.Generator().manual_seed(7)).item()

    before = eval_loss()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / TRAIN_STEPS, 1.0))))
    trace = []
    for _ in range(TRAIN_STEPS):
        loss = head.loss(*toy_batch(BATCH, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        trace.append(loss.item())
    return {"head": head, "before": before, "after": eval_loss(), "trace": trace}


def sample(head: DiffLoss, z: torch.Tensor, seed: int, **kw) -> torch.Tensor:
    return head.sample(z, generator=torch.Generator().manual_seed(seed), **kw)


def one_hot_z(mode: int, n: int = N_SAMPLES) -> torch.Tensor:
    return F.one_hot(torch.full((n,), mode), 4).float()


def test_toy_loss_decreases(toy):
    # zero-initialised output: the eps loss starts at the noise's variance
    assert abs(toy["before"] - 1.0) < 0.05
    assert toy["after"] < 0.6 * toy["before"], (toy["before"], toy["after"])
    trace = toy["trace"]
    assert sum(trace[-50:]) / 50 < 0.7 * sum(trace[:20]) / 20


def test_toy_samples_match_the_mixture(toy):
    head = toy["head"]
    x = sample(head, torch.zeros(N_SAMPLES, 4), seed=1)  # the unconditional vector
    mass = mode_mass(x)
    print(f"\nunconditional mode mass {mass.tolist()}, spread {spread(x):.3f} (data {SD * math.sqrt(2):.3f})")
    assert torch.all((mass - 0.25).abs() < 0.07), mass
    assert 0.7 < spread(x) / (SD * math.sqrt(2)) < 1.5
    far = (x - CENTRES[nearest_mode(x)]).norm(dim=1)
    assert far.quantile(0.99) < 1.2 and far.max() < 2.0  # no sample thrown far from every mode
    low, high = head.data_range()  # x0 clamp: the targets' range (about +-2.1) widened by 25 %
    assert torch.all((-3.6 < low) & (low < -2.5)) and torch.all((2.5 < high) & (high < 3.6))
    # conditional: the label is right 60% of the time, and the head learned that
    xc = sample(head, one_hot_z(2), seed=2)
    print(f"conditional (mode 2) mass {mode_mass(xc).tolist()}")
    assert abs(mode_mass(xc)[2].item() - P_LABEL) < 0.1


def test_temperature_scales_the_spread(toy):
    head = toy["head"]
    z = torch.zeros(N_SAMPLES, 4)
    s = {t: spread(sample(head, z, seed=3, temperature=t)) for t in (0.5, 1.0, 1.5)}
    print(f"\nspread by temperature {s}")
    assert s[0.5] < 0.9 * s[1.0] and s[1.0] < 0.9 * s[1.5], s
    # temperature 0 injects no noise: the result depends on the starting noise alone
    noise = torch.randn(64, 2)
    a = head.sample(z[:64], temperature=0.0, noise=noise, generator=torch.Generator().manual_seed(4))
    b = head.sample(z[:64], temperature=0.0, noise=noise, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_cfg_moves_samples_towards_the_conditioned_mode(toy):
    head = toy["head"]
    null = torch.zeros(4)
    hit = {}
    for scale in (1.0, 3.0):
        x = sample(head, one_hot_z(0), seed=6, cfg_scale=scale, z_uncond=null)
        hit[scale] = mode_mass(x)[0].item()
    print(f"\nfraction in the conditioned mode by CFG scale {hit}")
    assert hit[3.0] > hit[1.0] + 0.15, hit
    # a per-token guidance scale: tokens guided at 3 land in their mode more often than at 1
    scale = torch.cat([torch.ones(N_SAMPLES // 2), torch.full((N_SAMPLES // 2,), 3.0)])
    x = sample(head, one_hot_z(0), seed=7, cfg_scale=scale, z_uncond=null)
    ok = nearest_mode(x) == 0
    assert ok[N_SAMPLES // 2:].float().mean() > ok[: N_SAMPLES // 2].float().mean() + 0.1


def test_sampling_under_bf16_autocast_stays_close_to_float32(toy):
    head = toy["head"]
    z = torch.cat([torch.zeros(N_SAMPLES // 2, 4), one_hot_z(1, N_SAMPLES // 2)])
    ref = sample(head, z, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sample(head, z, seed=8)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert torch.all((mode_mass(low) - mode_mass(ref)).abs() < 0.05)
    assert (low - ref).norm(dim=1).median() < 0.15


# ---- the denoiser ---------------------------------------------------------------------------

def test_denoiser_starts_at_zero_and_depends_on_level_and_z():
    cfg = MLPDenoiserConfig(token_dim=3, cond_dim=5, width=16, depth=2, freq_dim=16)
    net = MLPDenoiser(cfg)
    x, t, z = torch.randn(2, 7, 3), torch.rand(2, 7), torch.randn(2, 7, 5)
    out = net(x, t, z)
    assert out.shape == (2, 7, 3) and torch.count_nonzero(out) == 0  # adaLN-Zero, zero output layer
    out.sum().backward()
    assert net.final.linear.weight.grad.abs().sum() > 0  # but it learns
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    base = net(x, t, z)
    assert not torch.allclose(base, net(x, t.flip(-1), z))
    assert not torch.allclose(base, net(x, t, z.flip(-1)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        net(torch.randn(4, 2), torch.rand(4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="conditioning z"):
        net(torch.randn(4, 3), torch.rand(4), torch.randn(4, 6))
    with pytest.raises(ValueError, match="one noise level per token"):
        net(torch.randn(4, 3), torch.rand(3), torch.randn(4, 5))


# ---- shapes, masks, bad inputs on the debug preset --------------------------------------------

def debug_head(perturb: bool = False) -> DiffLoss:
    torch.manual_seed(0)
    head = DiffLoss(diffloss_config("debug", token_dim=4, cond_dim=6))
    if perturb:  # leave the zero initialisation so that z receives gradients
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return head


def test_shapes_leading_axes_and_noise_draws():
    head = debug_head()
    target, z = torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    rows = []
    hook = head.net.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    loss = head.loss(target, z)
    hook.remove()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert rows == [head.cfg.noise_draws * 6]  # each z reused for noise_draws draws, one batched call
    assert head.token_loss(target, z).shape == (2, 3)
    x = head.sample(z, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 4) and x.dtype == torch.float32
    assert torch.equal(x, head.sample(z, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(x, head.sample(z, generator=torch.Generator().manual_seed(1)))
    assert head.sample(z[0, :1], steps=3).shape == (1, 4)


def test_the_x0_clamp_follows_the_training_targets():
    head = debug_head()
    target, z = torch.randn(10, 4), torch.randn(10, 6)
    assert head.data_range() is None  # nothing seen yet: no clamp
    head.eval()
    head.loss(target, z)
    assert head.data_range() is None  # evaluation does not widen the range
    head.train()
    head.loss(target, z)
    low, high = head.data_range()
    lo, hi = target.min(0).values, target.max(0).values
    assert torch.allclose(low, lo - 0.25 * (hi - lo)) and torch.allclose(high, hi + 0.25 * (hi - lo))
    head.loss(3 * target, z)  # the range only grows
    assert torch.all(head.data_range()[1] >= high)
    # a clamp that binds everywhere pins the samples; None switches it off
    x = head.sample(z, clip_x0=(torch.full((4,), 0.5), torch.full((4,), 0.5)))
    assert torch.allclose(x, torch.full_like(x, 0.5))
    assert head.sample(z, clip_x0=None).shape == (10, 4)
    assert DiffLoss(diffloss_config("debug", token_dim=4, cond_dim=6, clip_margin=None)).data_range() is None


def test_mask_selects_the_tokens_that_count():
    head = debug_head(perturb=True)
    target = torch.randn(8, 4)
    z = torch.randn(8, 6, requires_grad=True)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    loss = head.loss(target, z, mask, generator=torch.Generator().manual_seed(0))
    per = head.token_loss(target, z, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loss, per[mask].mean())
    loss.backward()
    grad_norm = z.grad.norm(dim=1)
    assert torch.all(grad_norm[~mask] == 0) and torch.all(grad_norm[mask] > 0)
    # float masks weigh tokens; an all-zero mask gives 0 (not NaN) and still backpropagates
    zero = head.loss(target, z, torch.zeros(8))
    assert zero.item() == 0.0
    zero.backward()
    with pytest.raises(ValueError, match=r"mask must be a tensor of shape \(8,\)"):
        head.loss(target, z, torch.ones(8, 1))


def test_guidance_plumbing():
    head = debug_head(perturb=True)
    z, zu, noise = torch.randn(5, 6), torch.randn(5, 6), torch.randn(5, 4)
    plain = head.sample(z, temperature=0.0, noise=noise)
    # scale 1 is the conditional model; scale 0 the unconditional one (same noise, no injected noise)
    assert torch.equal(head.sample(z, temperature=0.0, noise=noise, cfg_scale=1.0, z_uncond=zu), plain)
    uncond = head.sample(zu, temperature=0.0, noise=noise)
    assert torch.allclose(head.sample(z, temperature=0.0, noise=noise, cfg_scale=0.0, z_uncond=zu), uncond,
                          atol=1e-5)
    one_null = head.sample(z, temperature=0.0, noise=noise, cfg_scale=2.0, z_uncond=zu[0])
    assert torch.allclose(one_null, head.sample(z, temperature=0.0, noise=noise, cfg_scale=2.0,
                                                z_uncond=zu[:1].expand(5, 6)), atol=1e-6)
    assert not torch.allclose(one_null, plain, atol=1e-3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda h: h.loss(torch.randn(3, 5), torch.randn(3, 6)), r"target must be .*\(\.\.\., 4\)"),
        (lambda h: h.loss(torch.randn(3, 4), torch.randn(3, 7)), r"z must be .*\(\.\.\., 6\)"),
        (lambda h: h.loss(torch.randn(3, 4), torch.randn(2, 6)), "share their leading shape"),
        (lambda h: h.loss(torch.zeros(3, 4, dtype=torch.long), torch.randn(3, 6)), "float tensor"),
        (lambda h: h.loss(torch.randn(4), torch.randn(6)), "at least one leading axis"),
        (lambda h: h.sample(torch.randn(3, 6), cfg_scale=2.0), "needs z_uncond"),
        (lambda h: h.sample(torch.randn(3, 6), cfg_scale=2.0, z_uncond=torch.randn(2, 6)), "z_uncond must"),
        (lambda h: h.sample(torch.randn(3, 6), cfg_scale=torch.ones(4), z_uncond=torch.randn(3, 6)),
         "leading shape"),
        (lambda h: h.sample(torch.randn(3, 6), steps=0), r"steps must lie in \[1, 1000\]"),
        (lambda h: h.sample(torch.randn(3, 6), steps=1001), r"steps must lie in \[1, 1000\]"),
        (lambda h: h.sample(torch.randn(3, 6), temperature=-1.0), "temperature must be >= 0"),
        (lambda h: h.sample(torch.randn(3, 6), noise=torch.randn(3, 5)), r"noise must have shape \(3, 4\)"),
        (lambda h: h.sample(torch.randn(3, 6), clip_x0=0.0), "clip_x0"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(debug_head())


def test_config_presets_and_checkpoint_roundtrip(tmp_path):
    assert (PRESETS["base"].width, PRESETS["base"].depth) == (1024, 3)  # MAR's default head
    assert PRESETS["small"].width == 256
    cfg = diffloss_config("base", token_dim=16, cond_dim=512)
    assert (cfg.levels, cfg.schedule, cfg.prediction, cfg.noise_draws, cfg.sampling_steps) == \
        (1000, "cosine", "eps", 4, 100)
    bads = [({"prediction": "score"}, "prediction"), ({"sampling_steps": 2000}, "sampling_steps"),
            ({"eta": 1.5}, "eta"), ({"noise_draws": 0}, "noise_draws"), ({"clip_margin": -1.0}, "clip_margin"),
            ({"schedule": "zigzag"}, "schedule"), ({"freq_dim": 33}, "freq_dim")]
    for bad, match in bads:
        with pytest.raises(ValueError, match=match):
            diffloss_config("debug", **bad)
    with pytest.raises(ValueError, match="unknown DiffLoss preset"):
        diffloss_config("gigantic")
    # the head is a plain module: safetensors weights + a JSON config rebuild it exactly
    head = debug_head(perturb=True)
    save(tmp_path / "head", "diffloss", to_dict(head.cfg), head.state_dict())
    again = DiffLoss(from_dict(DiffLossConfig, read_header(tmp_path / "head", "diffloss")["config"]))
    again.load_state_dict(read_weights(tmp_path / "head"))
    z = torch.randn(4, 6)
    assert torch.equal(head.sample(z, generator=torch.Generator().manual_seed(0), steps=5),
                       again.sample(z, generator=torch.Generator().manual_seed(0), steps=5))


def test_linear_cfg_schedule():
    vals = [linear_cfg_schedule(i, 4, 3.0) for i in range(4)]
    assert vals == pytest.approx([1.5, 2.0, 2.5, 3.0])
    assert linear_cfg_schedule(0, 8, 1.0) == 1.0
    assert linear_cfg_schedule(2, 8, 4.0, revealed=0.25) == pytest.approx(1.75)
    with pytest.raises(ValueError, match="0 <= step < total"):
        linear_cfg_schedule(4, 4, 3.0)
    with pytest.raises(ValueError, match="total >= 1"):
        linear_cfg_schedule(0, 0, 3.0)
    with pytest.raises(ValueError, match="revealed"):
        linear_cfg_schedule(0, 4, 3.0, revealed=1.5)
