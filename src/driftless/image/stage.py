"""The MAR image model as a training stage, `image` in the stage table (`train.specs`), trained by
`driftless image train` through `train.stages.run_stage`:

    configure         the preset with the tokenizer's latent width and token grid
                      (`models.compose.latent_fields`, read from the tokenizer's checkpoint header)
                      and the ImageFolder's classes; --order and --set win
    data              the ImageFolder's normalised latents through the tokenizer, encoded once and
                      cached in the run folder (latents-train / latents-val.safetensors), served as
                      shuffled in-memory batches; one process (no torchrun)
    clip_len 1        an image is a one-frame clip; its tokens per frame are the grid's
    synthetic_batch   random latents and labels (`driftless bench train --stage image`)
    validation        the held-out diffusion loss with fixed masks, levels and noise
    meta              the data and the tokenizer the checkpoint was trained with (`image sample`
                      and `image eval` decode through that tokenizer)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from driftless.config import option, override
from driftless.image.model import ORDERS
from driftless.models.compose import latent_fields
from driftless.train.distributed import DistInfo
from driftless.train.specs import StageArgs, StageSpec, register_stage

VAL_SEED = 999  # the permutation that picks the fixed validation batches


@dataclass
class ImageOptions:
    """The image stage's own options (flags of `driftless image train`)."""

    tokenizer: str = option(help="tokenizer checkpoint folder (continuous KL latents)")
    order: str | None = option(None, choices=ORDERS, sets="order",
                               help="random: MAR, bidirectional (default); raster: causal next-token ablation")
    max_per_class: int | None = option(None, help="use at most this many training images per class")


def _options(a: StageArgs) -> ImageOptions:
    if not isinstance(a.options, ImageOptions):
        raise ValueError("the image stage needs its options, ImageOptions(tokenizer=...): the tokenizer whose "
                         "latents it models")
    return a.options


def image_config(cfg, a: StageArgs):
    """The preset with the tokenizer's latent width and grid and the data's classes; overrides win."""
    from driftless.image.data import list_image_folder
    from driftless.models.registry import load_config

    tok = load_config(_options(a).tokenizer, "tokenizer")
    _, _, classes = list_image_folder(a.data)
    derived = {**latent_fields(tok.latent_dim, tok.grid), "num_classes": len(classes), "class_names": list(classes)}
    return override(cfg, {**derived, **a.overrides})


def image_data(a: StageArgs, cfg, clip_len: int, info: DistInfo):
    """Shuffled batches {"latents" (b, s, C), "labels" (b,)} of the training ImageFolder, and up to
    `a.val_batches` fixed batches of the validation one."""
    from driftless.image.data import cached_latents
    from driftless.models.registry import load_model
    from driftless.train.memory import TensorBatches

    if info.world_size > 1:
        raise ValueError("driftless image train runs on one process (no torchrun)")
    opts, device, bs, out = _options(a), str(info.device), a.train.batch_size, Path(a.out)
    tok = load_model(opts.tokenizer, device, kind="tokenizer")
    lat, labels, _ = cached_latents(a.data, tok, opts.tokenizer, out / "latents-train.safetensors", None,
                                    opts.max_per_class, device)
    val = []
    if a.val_data:
        vlat, vlab, _ = cached_latents(a.val_data, tok, opts.tokenizer, out / "latents-val.safetensors",
                                       cfg.class_names, None, device)
        perm = torch.randperm(len(vlat), generator=torch.Generator().manual_seed(VAL_SEED))
        val = [{"latents": vlat[perm[i:i + bs]], "labels": vlab[perm[i:i + bs]]}
               for i in range(0, min(len(vlat), bs * a.val_batches), bs)]
    return TensorBatches({"latents": lat, "labels": labels}, bs, seed=a.train.seed).stream, val


def image_tokens(cfg) -> int:
    return cfg.tokens


def image_batch(cfg, batch: int, clip_len: int, generator: torch.Generator) -> dict:
    if clip_len != 1:
        raise ValueError(f"an image is a one-frame clip: clip_len must be 1, got {clip_len}")
    out = {"latents": torch.randn(batch, cfg.tokens, cfg.latent_dim, generator=generator)}
    if cfg.num_classes:
        out["labels"] = torch.randint(0, cfg.num_classes, (batch,), generator=generator)
    return out


@torch.no_grad()
def image_validation(model, batch: dict) -> tuple[dict, None]:
    """Held-out diffusion loss with fixed masks, levels and noise (comparable across steps)."""
    x, labels = model.batch_latents(batch)
    g = torch.Generator(device=x.device).manual_seed(1234)
    loss, _ = model.masked_loss(x, labels, generator=g)
    return {"loss": float(loss)}, None


def image_meta(a: StageArgs) -> dict:
    from driftless.image.data import list_image_folder

    opts = _options(a)
    _, labels, _ = list_image_folder(a.data)
    n = len(labels) if opts.max_per_class is None else sum(min(c, opts.max_per_class) for c in Counter(labels).values())
    return {"data": str(Path(a.data).resolve()), "tokenizer": str(Path(opts.tokenizer).resolve()), "train_images": n}


IMAGE = register_stage(StageSpec(
    name="image", help="train the MAR image model on the tokenizer latents of an ImageFolder",
    data_help="ImageFolder: one sub-folder of images per class", data=image_data, clip_len=1,
    options=ImageOptions, configure=image_config, tokens_per_frame=image_tokens, synthetic_batch=image_batch,
    validation=image_validation, meta=image_meta, verb="driftless image train"))
