"""Which model class and config belong to a checkpoint's "kind", and loading by path."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from driftless import checkpoint
from driftless.config import from_dict


@dataclass(frozen=True)
class ModelKind:
    module: str  # a module of driftless.models ("tokenizer") or a full dotted path ("mypkg.model")
    model: str  # class name
    config: str  # config class name

    def load(self):
        mod = importlib.import_module(self.module if "." in self.module else f"driftless.models.{self.module}")
        return getattr(mod, self.model), getattr(mod, self.config), getattr(mod, "PRESETS", {})


KINDS: dict[str, ModelKind] = {
    "tokenizer": ModelKind("tokenizer", "Tokenizer", "TokenizerConfig"),
    "lam": ModelKind("lam", "LatentActionModel", "LAMConfig"),
    "dynamics": ModelKind("dynamics", "Dynamics", "DynamicsConfig"),
    "image": ModelKind("driftless.image.model", "ImageMAR", "ImageConfig"),
    "image_classifier": ModelKind("driftless.image.classifier", "FrameClassifier", "ClassifierConfig"),
    "forecaster": ModelKind("driftless.forecast.model", "build", "ForecasterCheckpointConfig"),
    "sequence_df": ModelKind("driftless.plan.sequence_df", "SequenceDF", "SequenceDFConfig"),
}


def register_kind(name: str, kind: ModelKind) -> None:
    """Let a package outside driftless.models add a model kind (name its module by dotted path)."""
    if name in KINDS and KINDS[name] != kind:
        raise ValueError(f"model kind {name!r} is already registered as {KINDS[name]}")
    KINDS[name] = kind


def kind_info(kind: str):
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(KINDS)}")
    return KINDS[kind].load()


def preset(kind: str, name: str):
    _, _, presets = kind_info(kind)
    if name not in presets:
        raise ValueError(f"no {kind} preset {name!r}; available: {sorted(presets)}")
    import copy

    return copy.deepcopy(presets[name])


def build(kind: str, cfg) -> nn.Module:
    model_cls, _, _ = kind_info(kind)
    return model_cls(cfg)


def _not_this_version(path, e: Exception) -> checkpoint.CheckpointError:
    return checkpoint.CheckpointError(f"{path}: its config does not fit this version of driftless "
                                      f"({e}); retrain it or use a matching version")


def load_config(path: str | Path, kind: str | None = None):
    """The config of a checkpoint folder, as its dataclass, without reading its weights (what
    another model is derived from, e.g. a tokenizer's latent width and grid)."""
    header = checkpoint.read_header(path, kind)
    _, cfg_cls, _ = kind_info(header["kind"])
    try:
        return from_dict(cfg_cls, header["config"])
    except (TypeError, ValueError) as e:
        raise _not_this_version(path, e) from e


def load_model(path: str | Path, device: str | torch.device = "cpu", ema: bool = True,
               kind: str | None = None) -> nn.Module:
    """Rebuild a model from a checkpoint folder (config.json + safetensors), in eval mode."""
    header = checkpoint.read_header(path, kind)
    model_cls, cfg_cls, _ = kind_info(header["kind"])
    try:
        model = model_cls(from_dict(cfg_cls, header["config"]))
    except (TypeError, ValueError) as e:
        raise _not_this_version(path, e) from e
    state = checkpoint.read_weights(path, ema=ema)
    try:
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise checkpoint.CheckpointError(f"{path}: weights do not fit its {header['kind']} config: "
                                         f"{str(e).splitlines()[-1].strip()}") from e
    if missing or unexpected:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not match the {header['kind']} config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})")
    return model.to(device).eval()
