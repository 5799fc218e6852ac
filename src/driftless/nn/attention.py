"""Multi-head self-attention on top of scaled_dot_product_attention.

Two uses in the ST-transformer:

* spatial attention: bidirectional among the tokens of one frame;
* temporal attention: causal across frames, one sequence per spatial position, with rotary
  position embeddings over time (relative positions, so rollouts may run past the training
  clip length) and an optional key/value cache for frame-by-frame inference.

`scaled_dot_product_attention` dispatches to flash / memory-efficient kernels on GPU and to a
fused CPU kernel otherwise.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) over one axis, computed on the fly for any position."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: (L,) float or int -> cos, sin: (L, head_dim)
        freqs = torch.outer(positions.float(), self.inv_freq)  # (L, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (L, hd)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (..., L, hd); cos/sin: (L, hd)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class KVCache:
    """Keys and values of past positions for one attention layer, in a preallocated ring buffer.

    Buffers k, v: (N, heads, capacity, head_dim), N = batch x spatial positions. With a window
    of W past positions the capacity is W + 1: W committed entries plus one free slot that the
    position being generated writes its keys into. Attention for a single new position reads a
    view of the valid slots, so a denoising pass copies nothing; the order of slots does not
    matter because keys carry their own rotary positions and one query position needs no mask.

    `window` fixed at creation (None: whatever each call passes) is the most past positions the
    cache ever keeps: the ST-transformer caps a call's window by it (`STTransformer.forward`), so a
    session can attend to fewer frames than the model's own window.
    """

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 0:
            raise ValueError(f"a KV cache window is a number of past positions >= 0, got {window}")
        self.window = window
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.size = 0  # committed entries
        self.next = 0  # the free slot

    @property
    def length(self) -> int:
        return self.size

    def _ensure(self, k: torch.Tensor, window: int | None, extra: int) -> None:
        need = (window + 1) if window is not None else self.size + extra + 1
        if self.k is not None and self.k.shape[2] >= need and self.k.shape[0] == k.shape[0]:
            return
        cap = need if window is not None else max(need, 2 * (self.k.shape[2] if self.k is not None else 8))
        shape = (k.shape[0], k.shape[1], cap, k.shape[3])
        new_k, new_v = k.new_empty(shape), k.new_empty(shape)
        if self.k is not None and self.size:  # keep the committed entries (no wrap has happened yet)
            old_k, old_v = self.past()
            new_k[:, :, : self.size], new_v[:, :, : self.size] = old_k, old_v
            self.next = self.size
        self.k, self.v = new_k, new_v

    def past(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Committed keys and values (N, heads, size, hd), oldest first (a copy when wrapped)."""
        cap = self.k.shape[2]
        if self.size < cap and self.next == self.size:
            return self.k[:, :, : self.size], self.v[:, :, : self.size]
        order = [(self.next - self.size + i) % cap for i in range(self.size)]  # slots next-size .. next-1
        idx = torch.tensor(order, device=self.k.device)
        return self.k.index_select(2, idx), self.v.index_select(2, idx)

    def with_current(self, k: torch.Tensor, v: torch.Tensor, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new position's k, v (N, heads, 1, hd) into the free slot; return views of
        every valid entry (committed + this one) for attention."""
        self._ensure(k, window, 1)
        self.k[:, :, self.next: self.next + 1] = k
        self.v[:, :, self.next: self.next + 1] = v
        valid = min(self.size + 1, self.k.shape[2])
        return self.k[:, :, :valid], self.v[:, :, :valid]

    def commit_current(self, window: int | None) -> None:
        """Keep the position last written by `with_current`."""
        cap = self.k.shape[2]
        self.next = (self.next + 1) % cap
        self.size = min(self.size + 1, window if window is not None else cap)

    def append(self, k: torch.Tensor, v: torch.Tensor, window: int | None) -> None:
        """Commit several positions (N, heads, L, hd), keeping at most `window`."""
        if window is not None and k.shape[2] > window:
            k, v = k[:, :, k.shape[2] - window:], v[:, :, v.shape[2] - window:]  # (not -window: window may be 0)
        for i in range(k.shape[2]):
            self.with_current(k[:, :, i: i + 1], v[:, :, i: i + 1], window)
            self.commit_current(window)


class StaticKVCache:
    """A KV ring buffer whose bookkeeping lives on the device, for CUDA-graph capture.

    Same window semantics as `KVCache` (capacity = window + 1: the committed positions plus the
    one being generated), but the slot being written (`slot`, a 0-d long tensor) and which slots
    hold a position (`valid`, (capacity,) bool) are tensors updated in place, and attention always
    reads all `capacity` slots with a mask. The operations of one new position are therefore the
    same at every frame - same shapes, no host-side indices - and a whole frame can be recorded
    once as a CUDA graph and replayed. Positions go in one at a time.
    """

    static = True

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 0:
            raise ValueError(f"a KV cache window is a number of past positions >= 0, got {window}")
        self.window = window  # as KVCache's: the most past positions kept (fixes the capacity, window + 1)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.slot: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.committed = 0  # host-side count (capped at the window): only "empty or not" is read
        # the exported step graph (export/onnx.py): a committing pass leaves the buffers as they are and
        # keeps its keys and values in new_k / new_v (N, heads, 1, hd), which the graph outputs for its
        # caller to write at `slot`: a graph cannot update an input in place, so writing inside it
        # copies every buffer every frame (the costliest non-arithmetic part of a CPU frame)
        self.host_write = False
        self.new_k: torch.Tensor | None = None
        self.new_v: torch.Tensor | None = None

    @classmethod
    def of(cls, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor, valid: torch.Tensor,
           host_write: bool = False) -> "StaticKVCache":
        """A cache over given buffers - k, v (N, heads, capacity, hd), slot () long, valid (capacity,)
        bool - updated in place as usual (an exported graph's cache inputs, export/onnx.py); with
        `host_write` k and v are only read and a commit leaves its keys in new_k / new_v."""
        cache = cls(window=valid.shape[0] - 1)  # the buffers' capacity fixes the window
        cache.host_write = host_write
        cache.k, cache.v, cache.slot, cache.valid = k, v, slot, valid
        cache._index = torch.arange(valid.shape[0], device=k.device)
        cache.committed = 1  # only "empty or not" is read: treated as holding positions
        return cache

    @property
    def length(self) -> int:
        return self.committed

    def _ensure(self, k: torch.Tensor, window: int | None) -> None:
        if window is None:
            raise ValueError("a static KV cache needs a window (its fixed capacity is window + 1)")
        if self.k is not None:
            if self.k.shape[2] != window + 1 or self.k.shape[0] != k.shape[0]:
                raise ValueError(f"this static KV cache holds {self.k.shape[2] - 1} positions of batch "
                                 f"{self.k.shape[0]}; got window {window}, batch {k.shape[0]}")
            return
        shape = (k.shape[0], k.shape[1], window + 1, k.shape[3])
        self.k, self.v = k.new_zeros(shape), k.new_zeros(shape)
        self.slot = torch.zeros((), dtype=torch.long, device=k.device)
        self.valid = torch.zeros(window + 1, dtype=torch.bool, device=k.device)
        self._index = torch.arange(window + 1, device=k.device)

    def with_current(self, k: torch.Tensor, v: torch.Tensor, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one position's k, v (N, heads, 1, hd) into the current slot; return all slots."""
        self._ensure(k, window)
        self.k.index_copy_(2, self.slot.view(1), k)
        self.v.index_copy_(2, self.slot.view(1), v)
        return self.k, self.v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> torch.Tensor:
        """Attention of one new position - q, k, v (N, heads, 1, hd) -> (N, heads, 1, hd) - to the
        committed slots and itself, without writing it into the buffers: the softmax over both parts
        is taken jointly (scores in fp32). The same result as `with_current` + masked attention; for
        the passes that do not commit (every denoising step but the last), where a write is wasted,
        and for a committing pass of a `host_write` cache, whose caller writes. In an exported graph
        a write copies the whole buffer; here the keys are read as (capacity, hd) @ (hd, 1), so these
        passes neither copy nor transpose the buffer."""
        self._ensure(k, window)
        dtype = v.dtype
        qs = q.float() * q.shape[-1] ** -0.5
        past = torch.matmul(self.k.float(), qs.transpose(-1, -2)).squeeze(-1)  # (N, heads, capacity)
        keep = self.valid & (self._index != self.slot)  # committed, and not the slot this position takes
        past = past.masked_fill(~keep, float("-inf"))
        cur = (qs * k.float()).sum(-1)  # (N, heads, 1)
        top = torch.maximum(past.amax(-1, keepdim=True), cur)  # finite: cur is
        p_past, p_cur = torch.exp(past - top), torch.exp(cur - top)
        out = torch.matmul(p_past.unsqueeze(-2), self.v.float()) + p_cur.unsqueeze(-1) * v.float()  # (N, h, 1, hd)
        return (out / (p_past.sum(-1, keepdim=True) + p_cur).unsqueeze(-1)).to(dtype)

    def attn_mask(self) -> torch.Tensor:
        """(1, 1, 1, capacity) bool: the committed slots and the current one."""
        return (self.valid | (self._index == self.slot)).view(1, 1, 1, -1)

    def commit_current(self, window: int | None) -> None:
        self.valid.index_fill_(0, self.slot.view(1), True)
        self.slot.add_(1).remainder_(self.valid.shape[0])
        self.committed = min(self.committed + 1, window if window is not None else self.committed + 1)


def causal_mask(queries: int, keys: int, span: int = 0, device=None) -> torch.Tensor:
    """(queries, keys) bool: the last `queries` of `keys` positions each see themselves and the
    earlier keys, at most `span` positions in all (0: no limit)."""
    i = torch.arange(keys - queries, keys, device=device)[:, None]  # absolute query positions
    j = torch.arange(keys, device=device)[None, :]
    mask = j <= i
    return mask & (i - j < span) if span else mask


def short_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span: int = 0) -> torch.Tensor:
    """Causal attention written out for short sequences: q, k, v (N, heads, L, hd) -> (N, heads, L, hd).

    The fused attention kernels work on tiles of 64-128 queries; with L = 8-16 frames (the
    temporal pass of the ST-transformer) most of every tile is padding and the pass costs ~10x
    its memory traffic. Written as products and a softmax, torch.compile turns it into a few
    kernels that read q, k, v once. (Scores in fp32.)"""
    L = q.shape[-2]
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("nhid,nhjd->nhij", q.float(), k.float()) * scale  # (N, h, L, L)
    p = scores.masked_fill(~causal_mask(L, L, span, q.device), float("-inf")).softmax(dim=-1)
    return torch.einsum("nhij,nhjd->nhid", p.to(v.dtype), v)


# causal attention over at most this many positions uses `short_causal_attention` when the
# module runs compiled on a GPU (0: always scaled_dot_product_attention; the environment
# variable DRIFTLESS_SHORT_ATTENTION sets it, for A/B benchmarks); see `Attention`
SHORT_ATTENTION_MAX = int(os.environ.get("DRIFTLESS_SHORT_ATTENTION", "32"))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool = True, rotary: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.rotary = RotaryEmbedding(self.head_dim) if rotary else None

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (N, L, D) -> q, k, v: (N, heads, L, hd)
        q, k, v = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.heads)
        return self.q_norm(q), self.k_norm(k), v

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        commit: bool = False,
        window: int | None = None,
        span: int = 0,
    ) -> torch.Tensor:
        """x: (N, L, D) -> (N, L, D).

        With `cache`, x holds the newest L positions and attends to the cached ones first;
        with `commit` its keys and values are appended to the cache afterwards (keeping at
        most `window` positions). `positions` (L,) are absolute positions along the attended
        axis for the rotary embedding; cached keys keep the rotation of their own positions,
        so only relative offsets matter and positions may grow without bound. `span` (causal
        only; 0 = unlimited): a position attends to itself and at most span - 1 earlier ones,
        the same sliding window the KV cache keeps (callers pass window <= span - 1).
        """
        q, k, v = self._qkv(x)
        if self.rotary is not None:
            if positions is None:
                positions = torch.arange(x.shape[1], device=x.device)
            cos, sin = self.rotary(positions.to(x.device))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        L = x.shape[1]
        if commit and cache is None:
            raise ValueError("commit=True needs a cache to write to")
        static = getattr(cache, "static", False)
        if cache is not None and L == 1 and (cache.length or commit or static):
            # one new position: attend to the cached ones and itself, no copies (a static cache
            # reads all its slots with a mask, and is written only by a pass that commits, or by the
            # caller of an exported graph: host_write)
            if static and (not commit or cache.host_write):
                out = cache.attend(q, k, v, window)
                if commit:  # the position's keys are kept aside for the caller to write (host_write)
                    cache.new_k, cache.new_v = k, v
            else:
                k_all, v_all = cache.with_current(k, v, window)
                out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=cache.attn_mask() if static else None)
            if commit:
                cache.commit_current(window)
        elif static:
            raise ValueError(f"a static KV cache takes one position at a time, got {L}")
        elif (causal and cache is None and x.is_cuda and 1 < L <= SHORT_ATTENTION_MAX
              and torch.compiler.is_compiling()):
            out = short_causal_attention(q, k, v, span)  # the compiled temporal pass (see the function)
        else:
            if cache is not None and cache.length:
                past_k, past_v = cache.past()
                k_all, v_all = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
                mask = None
                if causal:  # new query i sees the cached keys and new keys <= i (within the span)
                    mask = causal_mask(L, past_k.shape[2] + L, span, x.device)
                out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
            elif causal and span and L > span:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(L, L, span, x.device))
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and L > 1)
            if commit:
                cache.append(k, v, window)
        return self.proj(rearrange(out, "n h l d -> n l (h d)"))
