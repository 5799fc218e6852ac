import pytest
import torch

from driftless.nn.attention import Attention, KVCache
from driftless.nn.quantize import DiagonalGaussian, ProductQuantizer, VectorQuantizer
from driftless.nn.st_transformer import STConfig, STTransformer


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return module


@pytest.mark.parametrize("adaln", ["per_block", "shared"])
def test_st_transformer_shapes_and_temporal_causality(adaln):
    torch.manual_seed(0)
    model = _randomise(STTransformer(STConfig(dim=32, depth=2, heads=4, cond_dim=16, adaln=adaln))).eval()
    x = torch.randn(2, 6, 5, 32)
    cond = torch.randn(2, 6, 16)
    out = model(x, cond)
    assert out.shape == x.shape
    x2, c2 = x.clone(), cond.clone()
    x2[:, 4] += torch.randn(5, 32)
    c2[:, 4] += torch.randn(16)
    out2 = model(x2, c2)
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-6), "frames before t must not see frame t"
    assert not torch.allclose(out[:, 4:], out2[:, 4:], atol=1e-4)


def test_spatial_attention_mixes_tokens_within_a_frame():
    torch.manual_seed(0)
    model = STTransformer(STConfig(dim=32, depth=1, heads=4)).eval()
    x = torch.randn(1, 3, 5, 32)
    x2 = x.clone()
    x2[:, 1, 0] += torch.randn(32)  # (a constant shift would vanish in LayerNorm)
    out, out2 = model(x), model(x2)
    assert not torch.allclose(out[:, 1, 3], out2[:, 1, 3], atol=1e-5)
    assert torch.allclose(out[:, 0], out2[:, 0], atol=1e-6)


def test_kv_cache_matches_full_forward_and_window_slides():
    torch.manual_seed(0)
    model = _randomise(STTransformer(STConfig(dim=32, depth=2, heads=4, cond_dim=8))).eval()
    x, cond = torch.randn(2, 7, 4, 32), torch.randn(2, 7, 8)
    full = model(x, cond)
    caches = model.new_cache()
    steps = [model(x[:, i:i + 1], cond[:, i:i + 1], start=i, caches=caches, commit=True) for i in range(7)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    # a window of 2 cached frames keeps the cache bounded
    caches = model.new_cache()
    for i in range(7):
        model(x[:, i:i + 1], cond[:, i:i + 1], start=i, caches=caches, commit=True, window=2)
    assert all(c.length == 2 for c in caches)


def test_rotary_temporal_attention_is_translation_invariant():
    torch.manual_seed(0)
    attn = Attention(16, 2, rotary=True).eval()
    x = torch.randn(3, 5, 16)
    a = attn(x, causal=True, positions=torch.arange(5))
    b = attn(x, causal=True, positions=torch.arange(100, 105))
    assert torch.allclose(a, b, atol=1e-5), "only relative positions may matter"


def test_commit_without_cache_is_an_error():
    attn = Attention(16, 2)
    with pytest.raises(ValueError, match="cache"):
        attn(torch.randn(1, 2, 16), commit=True)
    assert KVCache().length == 0


def test_product_quantizer_codes_are_tuples_of_its_parts():
    torch.manual_seed(0)
    pq = ProductQuantizer((3, 4), 8, dead_fraction=0.5, usage_decay=0.0).train()
    assert pq.num_codes == 12
    z = torch.randn(2, 50, 8, requires_grad=True)
    zq, idx, loss, stats = pq(z)
    assert zq.shape == z.shape and idx.shape == (2, 50) and 0 <= int(idx.min()) and int(idx.max()) < 12
    # the index is (part 0's code, part 1's code) in mixed radix, and each part is its own nearest code
    d0, d1 = pq.digits(idx)
    assert torch.equal(d0, pq.parts[0].quantize(z[..., :4])) and torch.equal(d1, pq.parts[1].quantize(z[..., 4:]))
    assert torch.equal(idx, d0 * 4 + d1) and torch.equal(pq.combine([d0, d1]), idx)
    assert torch.equal(pq.quantize(z), idx)
    assert torch.allclose(pq.lookup(idx), zq.detach(), atol=1e-6)  # the straight-through output is the code
    assert torch.allclose(pq.project(z).reshape(-1, 2, 4).norm(dim=-1), torch.ones(100, 2), atol=1e-5)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert 1.0 <= float(stats["vq_perplexity"]) <= 12.0 and {"vq_perplexity_0", "vq_perplexity_1"} <= set(stats)
    # k-means and dead-code resets reach every part's codebook
    before = [vq.codebook.detach().clone() for vq in pq.parts]
    pq.init_kmeans(pq.project(torch.randn(64, 8)))
    assert all(not torch.equal(b, vq.codebook) for b, vq in zip(before, pq.parts))
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        pq.lookup(torch.tensor([12]))
    with pytest.raises(ValueError, match="at least two parts"):
        ProductQuantizer((1, 4), 8)
    with pytest.raises(ValueError, match="equal parts"):
        ProductQuantizer((3, 4), 7)


def test_vq_straight_through_usage_and_dead_code_reset():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, dead_fraction=0.5, usage_decay=0.0).train()
    z = torch.randn(64, 4, requires_grad=True)
    zq, idx, loss, stats = vq(z)
    assert zq.shape == z.shape and idx.shape == (64,)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert 1.0 <= float(stats["vq_perplexity"]) <= 16.0
    # with usage_decay=0 every code unused in this batch is reset to one of its vectors - by the
    # owner between steps, never inside the forward pass
    z2 = torch.randn(8, 4)
    before = vq.codebook.detach().clone()
    _, idx2, _, _ = vq(z2)
    assert torch.equal(before, vq.codebook.detach())
    vq.apply_dead_code_reset()
    after = vq.codebook.detach()
    unused = torch.ones(16, dtype=torch.bool)
    unused[idx2.unique()] = False
    assert torch.equal(after[~unused], before[~unused]) and not torch.equal(after[unused], before[unused])
    batch = torch.nn.functional.normalize(z2, dim=-1)
    assert all(torch.isclose(batch, row).all(dim=1).any() for row in after[unused])
    vq.apply_dead_code_reset()  # nothing pending: nothing changes
    assert torch.equal(vq.codebook.detach(), after)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        vq.lookup(torch.tensor([16]))


def test_kl_bottleneck_penalises_distance_from_prior():
    g = DiagonalGaussian()
    zero = torch.zeros(10, 8)  # mean 0, logvar 0: exactly the prior
    _, kl0, _ = g(zero)
    far = torch.cat([torch.full((10, 4), 3.0), torch.zeros(10, 4)], -1)
    _, kl1, _ = g(far)
    assert float(kl0) == pytest.approx(0.0, abs=1e-7)
    assert float(kl1) == pytest.approx(0.5 * 9.0, rel=1e-5)


def test_ring_buffer_cache_matches_a_sliding_full_forward():
    """Stepping past the window with the ring buffer equals a full pass over the last frames."""
    torch.manual_seed(0)
    model = _randomise(STTransformer(STConfig(dim=32, depth=2, heads=4, cond_dim=8))).eval()
    x, cond = torch.randn(1, 11, 4, 32), torch.randn(1, 11, 8)
    window = 3
    caches = model.new_cache()
    for i in range(11):
        step = model(x[:, i:i + 1], cond[:, i:i + 1], start=i, caches=caches, commit=True, window=window)
        lo = max(0, i - window)  # the frame attends to itself and `window` earlier frames
        ref = model(x[:, lo:i + 1], cond[:, lo:i + 1], start=lo)[:, -1:]
        if i <= window:  # before the window slides both see the whole prefix
            assert torch.allclose(step, ref, atol=1e-5), i
    # past() returns the committed entries oldest first, also after wrapping
    k, v = caches[0].past()
    assert k.shape[2] == window
    # several frames at once through the fallback path equal the same frames one at a time
    # (with a window covering them all: otherwise stepping sees less history, by design)
    c2 = model.new_cache()
    model(x[:, :5], cond[:, :5], start=0, caches=c2, commit=True, window=8)
    a = model(x[:, 5:6], cond[:, 5:6], start=5, caches=c2)
    c3 = model.new_cache()
    for i in range(5):
        model(x[:, i:i + 1], cond[:, i:i + 1], start=i, caches=c3, commit=True, window=8)
    b = model(x[:, 5:6], cond[:, 5:6], start=5, caches=c3)
    assert torch.allclose(a, b, atol=1e-5)


def test_masking_helpers():
    from driftless.nn import masking

    g = torch.Generator().manual_seed(0)
    order = masking.random_order((3, 2), 10, generator=g)
    assert order.shape == (3, 2, 10) and torch.equal(order.sort(-1).values, torch.arange(10).expand(3, 2, 10))
    ratios = masking.uniform_ratios((20_000,), 0.5, 1.0, generator=g)
    assert float(ratios.min()) >= 0.5 and float(ratios.max()) < 1.0 and abs(float(ratios.mean()) - 0.75) < 0.01
    kept = masking.keep_some_unmasked(ratios, 0.2, generator=g)
    assert abs(float((kept == 0).float().mean()) - 0.2) < 0.01 and torch.equal(kept[kept > 0], ratios[kept > 0])
    assert masking.keep_some_unmasked(ratios, 0.0) is ratios
    masks = masking.random_masks(torch.tensor([[0.0, 0.25, 1.0]]), 8, generator=g)
    assert masks.shape == (1, 3, 8) and masks.sum(-1).tolist() == [[0, 2, 8]]
    # MAR's mask ratio, N(1, 0.25^2) on [0.7, 1]: the same draws as an image model's inline sampler
    r = masking.truncated_normal((50_000,), 1.0, 0.25, 0.7, 1.0, generator=torch.Generator().manual_seed(1))
    a = torch.special.ndtr(torch.tensor((0.7 - 1.0) / 0.25, dtype=torch.float64))
    u = a + (0.5 - a) * torch.rand(50_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(r, (1.0 + 0.25 * torch.special.ndtri(u)).clamp(0.7, 1.0).float())
    assert abs(float(r.mean()) - masking.truncated_normal_mean(1.0, 0.25, 0.7, 1.0)) < 2e-3
    noise = masking.gumbel((100_000,), generator=g)
    assert abs(float(noise.mean()) - 0.5772) < 0.02  # the Euler-Mascheroni constant


def test_short_causal_attention_matches_sdpa():
    from driftless.nn.attention import short_causal_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 3, 12, 16, generator=g) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = short_causal_attention(q, k, v)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    # causal: changing the last position leaves the earlier outputs as they were
    k2 = k.clone()
    k2[:, :, -1] += 1
    assert torch.equal(short_causal_attention(q, k2, v)[:, :, :-1], out[:, :, :-1])


def test_static_cache_attend_without_writing_matches_write_then_attend():
    """A static cache's non-committing pass (`attend`: committed slots and the new position under
    one softmax, nothing written) gives the output of writing the position into its slot and
    attending with the mask, from an empty cache through the ring buffer's wrap-around; the
    buffers are left as they were."""
    from driftless.nn.attention import StaticKVCache

    torch.manual_seed(0)
    n, h, d, window = 3, 2, 8, 4
    cache, twin = StaticKVCache(window), StaticKVCache(window)
    for t in range(2 * window + 3):  # wraps twice
        q, k, v = (torch.randn(n, h, 1, d) for _ in range(3))
        out = cache.attend(q, k, v, window)
        before = cache.k.clone()
        k_all, v_all = twin.with_current(k, v, window)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all, attn_mask=twin.attn_mask())
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(cache.k, before)  # nothing written
        for c in (cache, twin):  # both commit the same position
            c.with_current(k, v, window)
            c.commit_current(window)
        # an empty cache: the position attends to itself alone; afterwards the past takes part
        assert torch.allclose(out, v, atol=1e-6) == (t == 0)
