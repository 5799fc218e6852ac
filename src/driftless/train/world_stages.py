"""The stages that learn a playable world, registered in `train.specs.STAGES`:

    tokenizer   clips of pixels from an episode store (or live CoinRun) -> ST-ViViT
    lam         clips of pixels -> latent action model
    dynamics    clips of cached latents (+ LAM / true actions) -> Diffusion-Forcing dynamics

(`driftless train latents`, between the first two and the last, is not a training stage: it
encodes a store once with a trained tokenizer and LAM into the latent cache dynamics trains on.)
Validation metrics are computed here from what the models return (reconstructions,
predictions), so the models need nothing of eval/.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import torch
from einops import rearrange

from driftless import checkpoint
from driftless.config import option, override
from driftless.eval.metrics import psnr, ssim
from driftless.models.common import pixels_to_unit, unit_to_pixels
from driftless.models.compose import dynamics_fields
from driftless.models.dynamics import FRAME_MODELS
from driftless.train.distributed import DistInfo
from driftless.train.specs import StageArgs, StageSpec, apply_overrides, option_overrides, register_stage
from driftless.train.trainer import TrainConfig, Trainer


# ---- data ------------------------------------------------------------------------------------------
def on_device(store, device: torch.device, choice: str = "auto") -> bool:
    """Whether to copy a pixel store into device memory (`ResidentClips`): "yes", "no", or "auto"
    = on a GPU when the store takes under a third of its free memory."""
    from driftless.data.clips import ResidentClips

    if choice not in ("auto", "yes", "no"):
        raise ValueError(f"data_on_device must be auto, yes or no, got {choice!r}")
    if choice != "auto":
        return choice == "yes"
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return ResidentClips.nbytes(store) < free / 3


def _store_stream(data: str, clip_len: int, cfg: TrainConfig, info: DistInfo, workers: int, split_seed: int = 0,
                  data_on_device: str = "no"):
    if data.startswith("coinrun-stream"):
        from driftless.data.coinrun import StreamingClips

        split = data.split(":", 1)[1] if ":" in data else "train"
        ds = StreamingClips(clip_len=clip_len, split=split, seed=cfg.seed + split_seed, rank=info.rank)
        loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, num_workers=workers)

        def stream(start: int):  # live environments: not replayable, resume continues with fresh clips
            return iter(loader)

        return stream
    from driftless.data.clips import ClipDataset, ResidentClips, make_loader

    ds = ClipDataset(data, clip_len=clip_len)
    if len(ds) == 0:
        raise ValueError(f"{data} has no episode of at least {clip_len} frames")
    if on_device(ds.store, info.device, data_on_device):
        resident = ResidentClips(ds, cfg.batch_size, info.device, seed=cfg.seed + split_seed, rank=info.rank,
                                 world_size=info.world_size, progress=info.is_main)
        return resident.stream

    def stream(start: int):
        return iter(make_loader(ds, cfg.batch_size, seed=cfg.seed + split_seed, rank=info.rank,
                                world_size=info.world_size, start=start, num_workers=workers,
                                pin_memory=info.device.type == "cuda"))

    return stream


def pixel_clips(a: StageArgs, cfg, clip_len: int, info: DistInfo):
    """uint8 clips {"frames": (b, t, h, w, 3)} from an episode store or live CoinRun; the main
    rank keeps `a.val_batches` fixed batches of the validation store."""
    stream = _store_stream(a.data, clip_len, a.train, info, a.workers, data_on_device=a.data_on_device)
    val_src = _store_stream(a.val_data, clip_len, a.train, info, 0, split_seed=999) if a.val_data else None
    val = list(itertools.islice(val_src(0), a.val_batches)) if (val_src and info.is_main) else []
    return stream, val


def latent_clips(a: StageArgs, cfg, clip_len: int, info: DistInfo):
    """Clips of a latent cache {"latents": (b, t, s, c), "actions"?, "indices"?} on the device,
    with the actions the config conditions on (`cfg.action_source`)."""
    from driftless.data.latents import LatentCache, LatentClips

    clips = LatentClips(LatentCache(a.data), clip_len, a.train.batch_size, cfg.action_source,
                        seed=a.train.seed, rank=info.rank, device=info.device)
    val = []
    if a.val_data:
        vclips = LatentClips(LatentCache(a.val_data), clip_len, a.train.batch_size, cfg.action_source,
                             seed=12345, device=info.device)
        val = [vclips.batch(i) for i in range(a.val_batches)]
    return clips.stream, val


def latent_tokens(cfg) -> int:
    """Tokens per frame of a latent model: its grid's."""
    return cfg.tokens_per_frame


def pixel_batch(cfg, batch: int, clip_len: int, generator: torch.Generator) -> dict:
    h, w = cfg.resolution
    return {"frames": torch.randint(0, 256, (batch, clip_len, h, w, 3), generator=generator, dtype=torch.uint8)}


def latent_batch(cfg, batch: int, clip_len: int, generator: torch.Generator) -> dict:
    out = {"latents": torch.randn(batch, clip_len, cfg.tokens_per_frame, cfg.latent_dim, generator=generator)}
    if cfg.num_actions:
        out["actions"] = torch.randint(0, cfg.num_actions, (batch, clip_len - 1), generator=generator)
    return out


# ---- validation ------------------------------------------------------------------------------------
def _strip(real: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """uint8 (b, t, h, w, 3) pairs -> one image: real over predicted rows, first 4 clips, up to 8 frames."""
    n, t = min(4, real.shape[0]), min(8, real.shape[1])
    rows = torch.stack([real[:n, :t], pred[:n, :t]], dim=1)  # (n, 2, t, h, w, 3)
    return rearrange(rows, "n r t h w c -> (n r h) (t w) c").cpu()


def _code_usage(indices: torch.Tensor, codebook_size: int) -> dict:
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    return {"vq_perplexity": float(torch.exp(-(p * torch.log(p + 1e-10)).sum())),
            "vq_usage": float((counts > 0).float().mean())}


@torch.no_grad()
def tokenizer_validation(model, batch: dict) -> tuple[dict, torch.Tensor]:
    """Reconstruction PSNR/SSIM of the posterior mean (and codebook use of a VQ tokenizer),
    plus a real-over-reconstruction strip."""
    frames = batch["frames"]
    recon = model.reconstruct(frames)
    metrics = {"psnr": float(psnr(recon, frames)), "ssim": float(ssim(recon, frames))}
    if model.cfg.bottleneck == "vq":
        metrics.update(_code_usage(model.encode_indices(frames), model.cfg.codebook_size))
    return metrics, _strip(frames, recon)


def _psnr_unit(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR over a whole batch of [-1, 1] frames (peak-to-peak 2), as the training loss reports it."""
    mse = ((pred.float().clamp(-1, 1) - target) ** 2).mean()
    return float(-10 * torch.log10(mse / 4 + 1e-12))


@torch.no_grad()
def lam_validation(model, batch: dict) -> tuple[dict, torch.Tensor]:
    """Next-frame PSNR with inferred actions, with random actions, and for copying the last
    frame; the gap between the first two (delta_psnr) is the LAM's controllability. Image:
    real next frames over predicted ones."""
    x = pixels_to_unit(batch["frames"])
    _, idx, _, stats = model.encode(x)
    target = x[:, 1:].float()
    pred = model.decode_indices(x[:, :-1], idx)
    rand = torch.randint(0, model.cfg.num_actions, idx.shape, device=idx.device)
    pred_rand = model.decode_indices(x[:, :-1], rand)
    metrics = {"psnr": _psnr_unit(pred, target), "psnr_random_actions": _psnr_unit(pred_rand, target),
               "psnr_copy_last": _psnr_unit(x[:, :-1], target),
               "vq_perplexity": float(stats["vq_perplexity"]), "vq_usage": float(stats["vq_usage"])}
    metrics["delta_psnr"] = metrics["psnr"] - metrics["psnr_random_actions"]
    return metrics, _strip(unit_to_pixels(target), unit_to_pixels(pred))


# ---- after training --------------------------------------------------------------------------------
@torch.no_grad()
def fit_tokenizer_stats(trainer: Trainer, stream_fn, a: StageArgs) -> None:
    """Measure per-channel latent statistics with the EMA tokenizer and store them in the
    checkpoint's config (so `encode` returns normalised latents). A tokenizer taken untrained
    from --init-from (0 steps) keeps the statistics it came with, when it has them."""
    tok = trainer.ema_model.eval()
    saved = checkpoint.read_header(a.init_from, "tokenizer")["config"] if a.init_from and trainer.step == 0 else {}
    if saved.get("latent_mean") is not None and saved.get("latent_std") is not None:
        mean, std = list(saved["latent_mean"]), list(saved["latent_std"])
        tok.latent_mean.copy_(torch.tensor(mean))
        tok.latent_std.copy_(torch.tensor(std))
    else:
        frames = (b["frames"].to(trainer.info.device) for b in itertools.islice(stream_fn(0), a.stats_batches))
        mean, std = tok.fit_latent_stats(frames)
    trainer.model.latent_mean.copy_(tok.latent_mean)
    trainer.model.latent_std.copy_(tok.latent_std)
    trainer.model_config = {**trainer.model_config, "latent_mean": mean, "latent_std": std}
    trainer.save(sync=False)
    print(json.dumps({"latent_mean": [round(v, 4) for v in mean], "latent_std": [round(v, 4) for v in std]}))


# ---- dynamics: its model follows the latent cache ---------------------------------------------------
@dataclass
class DynamicsOptions:
    actions: str = option("lam", choices=("lam", "true", "none"),
                          help="condition on LAM actions (default), the data's true actions, or nothing")
    teacher_forcing: bool = option(False, sets="teacher_forcing",
                                   help="train the teacher-forcing variant (clean history, noisy next frame)")
    frame_model: str | None = option(
        None, choices=tuple(FRAME_MODELS), sets="frame_model",
        help="how a frame is modelled (same as --set frame_model=...): forcing = the backbone denoises the whole "
             "frame (default); mar = sets of tokens with a per-token diffusion head; maskgit = Genie's baseline "
             "over VQ codes (needs a latent cache of a VQ tokenizer)")


def dynamics_overrides(a: StageArgs) -> dict:
    """As every stage, plus the codebook size of a frame model of VQ codes (MaskGIT), which is
    the cache's VQ codebook (`FrameModel.codebook_key`)."""
    out = option_overrides(a)
    name = out.get("frame_model")
    frame = FRAME_MODELS.get(name) if isinstance(name, str) else None  # (an unknown name: the config says so)
    key = frame.codebook_key if frame is not None else None
    if key is not None:
        from driftless.data.latents import LatentCache

        size = LatentCache(a.data).meta.get("codebook_size")
        if size is None:
            raise ValueError(f"frame_model={name} trains on VQ code indices, but {a.data} is a latent cache of a "
                             f"KL tokenizer (no indices.npy): build one with `driftless train latents --tokenizer "
                             f"<VQ tokenizer checkpoint>`")
        given = out.setdefault(key, int(size))
        if int(given) != int(size):
            raise ValueError(f"{key}={given} does not match the cache's VQ codebook ({size} codes)")
    return out


def dynamics_config(cfg, a: StageArgs):
    """The preset takes the cache's latent width and grid (the tokenizer's) and the action
    count of the chosen action source (the LAM's, or the data's true actions); --set wins."""
    from driftless.data.latents import LatentCache

    cache = LatentCache(a.data)
    side = int(round(cache.meta["tokens"] ** 0.5))
    source = a.options.actions
    num_actions = None  # "none": the config's, unused
    if source == "lam":
        num_actions = cache.meta["num_lam_actions"] or cfg.num_actions
    elif source == "true":
        num_actions = int(cache.actions.max()) + 1
    derived = {**dynamics_fields(cache.meta["latent_dim"], (side, side), num_actions), "action_source": source}
    cfg = override(cfg, {k: v for k, v in derived.items() if k not in a.overrides})
    return apply_overrides(cfg, a)


# ---- the table -------------------------------------------------------------------------------------
PIXEL_DATA_HELP = "episode store folder, or coinrun-stream[:split] for live Procgen environments"

TOKENIZER = register_stage(StageSpec(
    name="tokenizer",
    help="train the ST-ViViT video tokenizer (KL by default; --set bottleneck=vq for the VQ baseline)",
    data_help=PIXEL_DATA_HELP, data=pixel_clips, clip_len=8, synthetic_batch=pixel_batch,
    validation=tokenizer_validation, after_fit=fit_tokenizer_stats))

LAM = register_stage(StageSpec(
    name="lam", help="train the latent action model on pixel clips",
    data_help=PIXEL_DATA_HELP, data=pixel_clips, clip_len=16, synthetic_batch=pixel_batch,
    validation=lam_validation))

DYNAMICS = register_stage(StageSpec(
    name="dynamics",
    help="train the dynamics model on a latent cache (see `train latents`); --frame-model picks forcing "
         "(default), mar or maskgit",
    data_help="latent cache folder (written by `driftless train latents`)", data=latent_clips, clip_len=None,
    options=DynamicsOptions, overrides=dynamics_overrides, configure=dynamics_config,
    tokens_per_frame=latent_tokens, synthetic_batch=latent_batch))
