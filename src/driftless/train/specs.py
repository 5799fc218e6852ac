"""What a training stage is: one `StageSpec` per stage, registered in one table.

A spec says everything that differs between stages, so that `run_stage`, the training
benchmark and the `driftless train` CLI hold no per-stage branches:

    clip_len          default frames per clip (None: the model config's `clip_field`, e.g. `clip_len`)
    data              the data stream and fixed validation batches (pixel clips, latent clips, ...)
    options           a dataclass of the stage's own options (CLI flags; `StageArgs.options`)
    overrides         the model-config overrides a run records: --set plus what options imply
    configure         the model config from its preset, its data and other checkpoints
    tokens_per_frame  tokens per frame of a model config (for throughput)
    synthetic_batch   a random batch of the stage's shape (benchmarks)
    validation        validation(model, batch) -> ({metric: float}, image or None)
    after_fit         what to do once training has finished (fit statistics, ...)
    meta              provenance the checkpoint records besides preset, data and overrides
    verb              the command that trains the stage when it is not `driftless train NAME`

The world's stages (tokenizer, lam, dynamics) live in train/world_stages.py; the showcases
register theirs from their own packages (image/stage.py, plan/stage.py, forecast/stage.py) and
train them with their own verbs. The table loads every module of `STAGE_MODULES` the first time
it is consulted, so it knows all of them whoever asks; this module only names them. Another
package adds its own with `register_stage(StageSpec(...))` at import, next to
`models.registry.register_kind` for its model.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from driftless.config import option, override
from driftless.train.trainer import TrainConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from driftless.train.distributed import DistInfo
    from driftless.train.trainer import Trainer

Stream = Callable[[int], Iterator[dict]]  # stream(samples already consumed) -> this rank's batches


@dataclass
class StageArgs:
    """One training run of a stage (the fields with help are flags of `driftless train STAGE`)."""

    kind: str  # the stage (a key of STAGES)
    data: str = option(help="where the stage's training data is")  # each stage's `data_help` says what
    out: str = option(help="run folder: checkpoint/, metrics.jsonl, val/ images")
    preset: str = option("small", help="model size preset: debug | small | base (default small)")
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields, dotted for nested
    train: TrainConfig = field(default_factory=TrainConfig)
    clip_len: int | None = option(None, help="frames per training clip")
    val_data: str | None = option(None, help="held-out store (or latent cache) for periodic validation")
    val_batches: int = 4
    workers: int = option(4, help="DataLoader worker processes")
    data_on_device: str = option("auto", choices=("auto", "yes", "no"),
                                 help="keep the whole training store in GPU memory and cut clips there (auto: "
                                      "on a GPU, when the store takes under a third of its free memory)")
    device: str | None = option(None, help="cpu | cuda | cuda:N (default: cuda when available)")
    resume: bool = option(False, help="continue from OUT/checkpoint if it exists")
    force: bool = option(False, help="start over in an OUT folder that already holds a run, overwriting its "
                                     "checkpoint and log (without --resume or --force such a folder is refused)")
    options: Any = None  # the stage's own options: an instance of its spec's `options` (None: defaults)
    stats_batches: int = 64  # tokenizer: batches used to fit latent normalisation statistics
    progress: bool = True  # the trainer's progress bar (train world --no-progress turns it off)
    init_from: str | None = option(None, metavar="CKPT",
                                   help="start from the (EMA) weights of this checkpoint folder, with a fresh "
                                        "optimizer (fine-tuning, or continuing a run whose optimizer state was "
                                        "not kept)")


def option_overrides(a: StageArgs) -> dict:
    """--set overrides plus the options that stand for one (an options field whose metadata
    has `sets=KEY`, given a value other than its default, is `--set KEY=value`)."""
    out = dict(a.overrides)
    if a.options is not None:
        for f in dataclasses.fields(a.options):
            key, value = f.metadata.get("sets"), getattr(a.options, f.name)
            if key and value != f.default:
                out[key] = value
    return out


def apply_overrides(cfg: Any, a: StageArgs) -> Any:
    """The preset with the run's overrides: a stage whose model depends on nothing else."""
    return override(cfg, a.overrides) if a.overrides else cfg


def patch_tokens(cfg: Any) -> int:
    """Tokens per frame of a pixel model: (H / patch) * (W / patch)."""
    return (cfg.resolution[0] // cfg.patch) * (cfg.resolution[1] // cfg.patch)


def one_token(cfg: Any) -> int:
    """Tokens per frame of a sequence model whose every step is one token (a frame of it)."""
    return 1


@dataclass(frozen=True)
class StageSpec:
    """One training stage: everything `run_stage`, `bench train` and `driftless train` need to
    know about it (see the module docstring)."""

    name: str  # the stage, and the model kind it trains (models.registry; a checkpoint's "kind")
    help: str  # one line for `driftless train NAME`
    data_help: str  # what --data names
    # (args, model config, clip_len, dist info) -> (training stream, validation batches); None: the
    # stage is trained by its own `verb` (in memory), not by `run_stage`
    data: Callable[[StageArgs, Any, int, DistInfo], tuple[Stream, list[dict]]] | None = None
    clip_len: int | None = None  # default frames per clip; None: the model config's `clip_field`
    clip_field: str = "clip_len"  # the model-config field that holds the clip length when clip_len is None
    options: type | None = None  # dataclass of the stage's own options
    overrides: Callable[[StageArgs], dict] = option_overrides
    configure: Callable[[Any, StageArgs], Any] = apply_overrides  # (preset config, args) -> config
    tokens_per_frame: Callable[[Any], int] = patch_tokens
    # (model config, batch size, clip_len, generator) -> a batch of CPU tensors
    synthetic_batch: Callable[[Any, int, int, torch.Generator], dict] | None = None
    validation: Callable[[nn.Module, dict], tuple[dict, Any]] | None = None
    # (trainer, training stream, args): runs on the main rank when training finished its steps or budget
    after_fit: Callable[[Trainer, Stream, StageArgs], None] | None = None
    meta: Callable[[StageArgs], dict] | None = None  # (args) -> more checkpoint provenance (e.g. its tokenizer)
    verb: str | None = None  # e.g. "driftless image train"; None: `driftless train NAME`

    def with_clip_len(self, cfg: Any, clip_len: int | None = None) -> tuple[Any, int]:
        """(model config, frames per clip) for a requested clip length (None: the default). A
        stage whose model config holds its clip length gets the request written into it."""
        if self.clip_len is not None:
            return cfg, clip_len or self.clip_len
        if clip_len and clip_len != getattr(cfg, self.clip_field):
            cfg = override(cfg, {self.clip_field: clip_len})
        return cfg, getattr(cfg, self.clip_field)

    def resolve(self, a: StageArgs) -> StageArgs:
        """`a` with the stage's default options filled in and its recorded overrides resolved."""
        options = a.options
        if options is None and self.options is not None:
            options = self.options()
        if options is not None and (self.options is None or not isinstance(options, self.options)):
            raise ValueError(f"stage {self.name!r} takes options of type "
                             f"{getattr(self.options, '__name__', None)}, got {type(options).__name__}")
        a = dataclasses.replace(a, options=options)
        return dataclasses.replace(a, overrides=self.overrides(a))


STAGES: dict[str, StageSpec] = {}

# modules that register stages when imported: the world's first, then the showcases' (named here,
# imported only when the table is first consulted, so train/ imports no showcase code)
STAGE_MODULES = ["driftless.train.world_stages", "driftless.image.stage", "driftless.plan.stage",
                 "driftless.forecast.stage"]


def register_stage(spec: StageSpec) -> StageSpec:
    """Add a stage to the table (a package registers its own at import)."""
    if spec.name in STAGES and STAGES[spec.name] is not spec:
        raise ValueError(f"a stage named {spec.name!r} is already registered")
    STAGES[spec.name] = spec
    return spec


def _load_stage_modules() -> None:
    for module in STAGE_MODULES:
        importlib.import_module(module)  # registers its stages (a no-op after the first time)


def get_stage(name: str) -> StageSpec:
    _load_stage_modules()
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; expected one of {sorted(STAGES)}")
    return STAGES[name]


def all_stages() -> dict[str, StageSpec]:
    """Every registered stage, by name: those of `driftless train` first (the world's), then those
    trained by other verbs (the showcases'), each in the order they registered."""
    _load_stage_modules()
    return {name: spec for own in (True, False) for name, spec in STAGES.items() if (spec.verb is None) == own}
