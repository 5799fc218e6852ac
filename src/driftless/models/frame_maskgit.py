"""MaskGIT frame model (`frame_model="maskgit"`): Genie's dynamics baseline over VQ code indices.

Tokens are the VQ tokenizer's code indices (the latent cache's `indices.npy`); the input is a
learned embedding of the code (index `codebook_size` is the mask token), the output a logit per
code, the backbone the shared causal ST-transformer (action as the prepended token, KV cache).

Training (Genie): every frame of a clip gets its own mask rate from U(mask_min, mask_max) =
U(0.5, 1); ceil(rate * s) of its tokens, at random, become the mask token; cross-entropy on the
masked tokens of every frame. History corruption: history is what the earlier frames of the
same clip show, i.e. masked at their own rates (as in Genie, where all frames are masked); in
addition, with probability `clean_frame_prob` a frame stays fully visible (no loss on it), so
that the fully visible history of sampling is inside the training distribution. No noise levels:
the level conditioning is held at 0.

Sampling one frame (MaskGIT): all tokens start masked; at each of `steps` (25) steps the model
samples a code for every masked token (softmax with `temperature`), scores it by its
log-probability plus Gumbel noise annealed by `choice_temperature * (1 - (i+1)/steps)`, and
keeps the most confident ones so that exactly the cosine schedule's count stays masked; known
tokens are never re-masked. The finished frame is committed to the caches as clean codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from driftless.diffusion.diffloss import linear_cfg_schedule
from driftless.models.frames import Backbone, BuildShared, FrameModel, no_shared_layers
from driftless.nn.masking import cosine_mask_counts, gumbel, keep_some_unmasked, random_masks, uniform_ratios

if TYPE_CHECKING:
    from driftless.models.dynamics import DynamicsConfig, RolloutState


@dataclass
class MaskGITConfig:
    codebook_size: int = 1024  # the VQ tokenizer's codebook (set from the latent cache)
    mask_min: float = 0.5  # training mask rate ~ U(mask_min, mask_max) per frame (Genie)
    mask_max: float = 1.0
    clean_frame_prob: float = 0.2  # a frame is fully visible (context only, no loss) this often
    steps: int = 25  # default MaskGIT steps per frame (Genie: 25; World's `steps` overrides)
    choice_temperature: float = 4.5  # Gumbel noise on the confidences, annealed to 0 (MaskGIT)
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.codebook_size < 2:
            raise ValueError(f"MaskGIT codebook_size must be >= 2, got {self.codebook_size}")
        if not 0.0 <= self.mask_min < self.mask_max <= 1.0:
            raise ValueError(f"MaskGIT mask rates need 0 <= mask_min < mask_max <= 1, got {self.mask_min}, "
                             f"{self.mask_max}")
        if not 0.0 <= self.clean_frame_prob < 1.0:
            raise ValueError(f"MaskGIT clean_frame_prob must lie in [0, 1), got {self.clean_frame_prob}")
        if self.steps < 1:
            raise ValueError(f"MaskGIT steps must be >= 1, got {self.steps}")
        if self.choice_temperature < 0:
            raise ValueError(f"MaskGIT choice_temperature must be >= 0, got {self.choice_temperature}")


class MaskGITFrame(FrameModel):
    """Code embedding (+ mask token) and the logit head, on the shared backbone. Reads and writes VQ
    code indices (b, t, s) int64; the decoder gets their code vectors."""

    name = "maskgit"
    codebook_key = "maskgit.codebook_size"

    def __init__(self, cfg: DynamicsConfig, build_shared: BuildShared = no_shared_layers):
        super().__init__(cfg)
        build_shared()  # (creation order: the shared layers first, then the frame model's)
        self.mg: MaskGITConfig = cfg.maskgit
        d, k = cfg.backbone.dim, cfg.maskgit.codebook_size
        self.code_emb = nn.Embedding(k + 1, d)  # index k: the mask token
        self.to_logits = nn.Linear(d, k)
        nn.init.normal_(self.code_emb.weight, std=0.02)
        nn.init.zeros_(self.to_logits.weight)  # starts uniform over the codebook
        nn.init.zeros_(self.to_logits.bias)

    @property
    def mask_index(self) -> int:
        return self.mg.codebook_size

    # ---- what it reads and writes: VQ code indices ---------------------------------------------
    @classmethod
    def tokenizer_overrides(cls, cfg: DynamicsConfig) -> dict:
        return {"bottleneck": "vq", "codebook_size": cfg.maskgit.codebook_size}

    def check_tokenizer(self, tokenizer) -> None:
        super().check_tokenizer(tokenizer)
        tcfg = tokenizer.cfg
        if tcfg.bottleneck != "vq" or tcfg.codebook_size != self.mg.codebook_size:
            raise ValueError(f"a maskgit dynamics model needs a VQ tokenizer with {self.mg.codebook_size} "
                             f"codes, got bottleneck={tcfg.bottleneck!r} with {tcfg.codebook_size} codes")

    def inputs_from_video(self, tokenizer, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> code indices (b, t, s) and their code vectors, normalised (b, t, s, c)."""
        idx = tokenizer.encode_indices(video)
        return idx, self.to_latents(tokenizer, idx)

    def to_latents(self, tokenizer, out: torch.Tensor) -> torch.Tensor:
        """Code indices (b, t, s) -> their normalised code vectors (b, t, s, c)."""
        return tokenizer.normalize(tokenizer.vq.lookup(out).float())

    def check_indices(self, idx: torch.Tensor, allow_mask: bool = False) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            got = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"the maskgit frame model takes VQ code indices (integers in [0, "
                             f"{self.mg.codebook_size})), got {got}: encode frames with tokenizer.encode_indices")
        top = self.mg.codebook_size + (1 if allow_mask else 0)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= top):
            raise ValueError(f"code indices must lie in [0, {self.mg.codebook_size}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return idx.long()

    # ---- network ---------------------------------------------------------------------------
    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.code_emb(inputs)  # (b, t, s) -> (b, t, s, d)

    def logits(self, run: Backbone, idx: torch.Tensor, actions: torch.Tensor | None, start: int = 0, caches=None,
               commit: bool = False) -> torch.Tensor:
        """idx (b, t, s) code indices (mask_index = masked) -> logits (b, t, s, codebook_size).
        Causal across frames."""
        levels = torch.zeros(idx.shape[:2], dtype=torch.long, device=idx.device)
        h = run(self.embed(idx), levels, actions, start=start, caches=caches, commit=commit)
        return self.to_logits(h)

    forward = logits

    def sample_rates(self, shape: tuple[int, ...], device, generator: torch.Generator | None = None) -> torch.Tensor:
        r = uniform_ratios(shape, self.mg.mask_min, self.mg.mask_max, device, generator)
        return keep_some_unmasked(r, self.mg.clean_frame_prob, generator)

    # ---- training ----------------------------------------------------------------------------
    def training_loss(self, run: Backbone, batch: dict) -> tuple[torch.Tensor, dict]:
        if "indices" not in batch:
            raise ValueError("frame_model='maskgit' trains on VQ code indices: build the latent cache with a VQ "
                             "tokenizer (`driftless train latents --tokenizer <vq checkpoint>`), which stores "
                             "indices.npy")
        idx = self.check_indices(batch["indices"])  # (b, t, s)
        b, t, s = idx.shape
        acts = self.training_actions(batch, b, t, idx.device)
        mask = random_masks(self.sample_rates((b, t), idx.device), s)  # (b, t, s)
        inp = torch.where(mask, torch.full_like(idx, self.mask_index), idx)
        logits = self.logits(run, inp, acts).float()  # (b, t, s, K)
        ce = F.cross_entropy(logits[mask], idx[mask], label_smoothing=self.mg.label_smoothing) if mask.any() \
            else logits.sum() * 0.0
        with torch.no_grad():
            acc = (logits[mask].argmax(-1) == idx[mask]).float().mean() if mask.any() else torch.zeros(())
        return ce, {"ce": ce.detach(), "masked_accuracy": acc, "mask_ratio": mask.float().mean()}

    # ---- sampling ----------------------------------------------------------------------------
    def context(self, inputs: torch.Tensor, context_level: int | None,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Known frames of code indices (b, n, s) enter the caches clean, at level 0 (no noise)."""
        idx = self.check_indices(inputs)
        return idx, torch.zeros(idx.shape[:2], dtype=torch.long, device=idx.device)

    @torch.no_grad()
    def generate_frame(self, run: Backbone, state: RolloutState, actions: torch.Tensor | None, batch: int, device,
                       steps: int | None = None, cfg_scale: float = 1.0, eta: float | None = None,
                       context_level: int | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None, trace: list | None = None,
                       history_guidance: float = 1.0) -> torch.Tensor:
        """-> the next frame's code indices (b, 1, s): `steps` MaskGIT steps, the softmax at
        `temperature` (`eta` and `context_level` unused: codes are clean). `trace`, if given,
        receives the number of still-masked tokens per session after each step."""
        b, s = batch, self.cfg.tokens_per_frame
        steps = self.mg.steps if steps is None else int(steps)
        counts = cosine_mask_counts(s, steps)
        acts = None if actions is None else actions.reshape(b, 1)
        guided = cfg_scale != 1.0 and acts is not None
        null = torch.full_like(acts, self.null_action) if guided else None
        idx = torch.full((b, s), self.mask_index, dtype=torch.long, device=device)
        unknown = torch.ones((b, s), dtype=torch.bool, device=device)
        for i, still_masked in enumerate(counts):
            logits = self.logits(run, idx[:, None], acts, start=state.position, caches=state.caches)[:, 0].float()
            if guided:
                lu = self.logits(run, idx[:, None], null, start=state.position, caches=state.caches)[:, 0].float()
                w = linear_cfg_schedule(i, len(counts), cfg_scale, revealed=(s - still_masked) / s)
                logits = lu + w * (logits - lu)
            if temperature > 0:
                logits = logits / temperature
                sampled = (logits + gumbel(logits.shape, device, generator)).argmax(-1)  # categorical draw
            else:
                sampled = logits.argmax(-1)
            sampled = torch.where(unknown, sampled, idx)
            if still_masked == 0:
                idx, unknown = sampled, torch.zeros_like(unknown)
            else:
                logp = torch.log_softmax(logits, -1).gather(-1, sampled[..., None])[..., 0]  # (b, s)
                anneal = self.mg.choice_temperature * (1.0 - (i + 1) / len(counts))
                conf = logp + anneal * gumbel(logp.shape, device, generator) if anneal > 0 else logp
                conf = torch.where(unknown, conf, torch.full_like(conf, float("inf")))
                remask = torch.zeros_like(unknown)
                remask.scatter_(1, conf.argsort(-1)[:, :still_masked], True)  # least confident stay masked
                idx = torch.where(remask, torch.full_like(sampled, self.mask_index), sampled)
                unknown = remask
            if trace is not None:
                trace.append(unknown.sum(-1).tolist())
        out = idx[:, None]  # (b, 1, s)
        self.observe(run, state, out, acts)
        return out
