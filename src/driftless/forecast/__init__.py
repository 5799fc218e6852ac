"""Probabilistic forecasting of multivariate time series with Diffusion Forcing (a showcase).

    model.py     the causal Diffusion-Forcing forecaster, its config and presets; checkpoint kind
                 "forecaster" (loaded by `driftless.models.registry.load_model`)
    stage.py     the `forecaster` stage: its config for a dataset (`forecaster_config`)
    data.py      GluonTS files, statsmodels' macrodata, a synthetic process with a known law
    train.py     training glue: random windows through the shared `Trainer`; saving
    metrics.py   CRPS, CRPS-sum, ND, NRMSE, coverage (GluonTS's definitions)
    evaluate.py  the model beside seasonal-naive, VAR, teacher-forcing and oracle baselines;
                 fan charts
    cli.py       `driftless forecast train|predict|eval` (registered by `driftless.cli`)

Built on the shared core only (`driftless.nn`, `driftless.diffusion`, `driftless.train`,
`driftless.checkpoint`, `driftless.config`); nothing of the world model or the other showcases.
"""
