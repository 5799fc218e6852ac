"""The forecaster as a stage, `forecaster` in the stage table (`train.specs`).

It is trained in memory by `driftless forecast train` (forecast/train.py: `train_forecaster`), not
by `run_stage`: it draws random windows of one in-memory series and saves its EMA weights with
its training settings, without a run folder. The table knows

    configure         the preset for a dataset (`forecaster_config`): the number of series, the
                      horizon, the context (default twice the horizon), the seasons to embed
                      (default the data's), the teacher-forcing baseline; --set wins
    clip length       the config's `window` (context + horizon steps, one token each)
    tokens_per_frame  one (a token is the vector of every series at one step)

It has no synthetic batch: a forecaster's width is its dataset's number of series, which
`driftless bench train` has no data to take from.
"""

from __future__ import annotations

from dataclasses import dataclass

from driftless.config import option, override
from driftless.train.specs import StageArgs, StageSpec, one_token, register_stage

DATA_HELP = ("dataset: 'macrodata' (statsmodels, offline), 'synthetic' (known law), options as "
             "'synthetic:dim=2,prediction_length=4', or a GluonTS dataset folder (metadata.json, train/, test/; "
             "options 'PATH:max_target_dim=100')")


@dataclass
class ForecastOptions:
    """The stage's own options (flags of `driftless forecast train`)."""

    context_length: int | None = option(None, help="history steps the model sees (default 2 x horizon)")
    seasons: str = option("auto", help="comma-separated periods to embed, 'auto' (the data's) or ''")
    teacher_forcing: bool = option(False, help="train the teacher-forcing baseline instead")


def forecaster_config(cfg, ds, options: ForecastOptions, overrides: dict | None = None):
    """The preset `cfg` for the dataset `ds` (a `forecast.data.ForecastDataset`); `overrides` win."""
    h = ds.prediction_length
    if options.seasons == "auto":
        seasons = [ds.season] if 1 < ds.season <= ds.train.shape[0] // 2 else []
    else:
        seasons = [int(s) for s in options.seasons.split(",") if s.strip()]
    cfg = override(cfg, {"target_dim": ds.dim, "prediction_length": h, "context_length": options.context_length or 2 * h,
                         "seasons": seasons, "teacher_forcing": options.teacher_forcing})
    return override(cfg, overrides or {})


def dataset_config(cfg, a: StageArgs):
    from driftless.forecast.data import load_dataset

    return forecaster_config(cfg, load_dataset(a.data), a.options, a.overrides)


FORECASTER = register_stage(StageSpec(
    name="forecaster", help="train the Diffusion-Forcing forecaster on a dataset's training split",
    data_help=DATA_HELP, clip_field="window", options=ForecastOptions, configure=dataset_config,
    tokens_per_frame=one_token, verb="driftless forecast train"))
