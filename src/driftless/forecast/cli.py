"""`driftless forecast train|predict|eval`: Diffusion-Forcing probabilistic forecasting."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from driftless.config import add_dataclass_flags, dataclass_from_args, parse_overrides
from driftless.forecast.stage import DATA_HELP, ForecastOptions


def _threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=100, help="sample paths per test window (default 100)")
    p.add_argument("--schedule", default=None,
                   help="autoregressive | pyramid | full_sequence; eval accepts a comma-separated list "
                        "(default: the model's, autoregressive)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per token (default: the model's)")
    p.add_argument("--context-level", type=int, default=None,
                   help="noise level the context is held at (default: the model's; 0 for teacher forcing)")
    p.add_argument("--eta", type=float, default=None, help="0: deterministic DDIM steps, 1: ancestral (default: model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on shared machines)")


def cmd_train(args) -> int:
    _threads(args)
    from driftless.forecast.data import load_dataset
    from driftless.forecast.model import Forecaster, preset
    from driftless.forecast.stage import forecaster_config
    from driftless.forecast.train import ForecastTrainConfig, save_forecaster, train_forecaster

    from driftless.checkpoint import refuse_overwrite

    refuse_overwrite(args.out, args.force, "checkpoint")
    ds = load_dataset(args.data)
    print(ds.summary())
    cfg = forecaster_config(preset(args.preset), ds, dataclass_from_args(ForecastOptions, args),
                            parse_overrides(args.set))  # the stage's (forecast/stage.py)
    h, ctx = cfg.prediction_length, cfg.context_length
    model = Forecaster(cfg)
    tcfg = ForecastTrainConfig(steps=args.train_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {'teacher-forcing' if cfg.teacher_forcing else 'diffusion-forcing'} forecaster "
          f"({cfg.backbone}, {n_params} parameters, context {ctx}, horizon {h}) for {tcfg.steps} steps")
    trained, hist = train_forecaster(model, ds, tcfg, device=args.device, progress=not args.quiet)
    meta = {"dataset": args.data, "dataset_name": ds.name, "columns": ds.columns, "parameters": n_params,
            "train_seconds": hist["seconds"], "loss": hist["loss"][-5:], "label": args.label}
    save_forecaster(args.out, trained, tcfg, meta=meta)
    print(f"final loss {hist['loss'][-1]:.4f} after {hist['seconds']:.0f}s; saved {args.out}")
    return 0


def _load(path: str, device: str):
    """(forecaster in eval mode, checkpoint header)."""
    from driftless import checkpoint
    from driftless.models.registry import load_model

    return load_model(path, device, kind="forecaster"), checkpoint.read_header(path, "forecaster")


def _sample_kw(args, schedule: str | None) -> dict:
    return {"schedule": schedule, "steps": args.steps, "context_level": args.context_level, "eta": args.eta,
            "seed": args.seed}


def cmd_predict(args) -> int:
    _threads(args)
    import numpy as np

    from driftless.checkpoint import atomic_write_bytes
    from driftless.forecast.data import load_dataset
    from driftless.forecast.evaluate import fan_chart

    model, header = _load(args.ckpt, args.device)
    ds = load_dataset(args.data or header["meta"].get("dataset", ""))
    if ds.dim != model.cfg.target_dim or ds.prediction_length != model.cfg.prediction_length:
        raise ValueError(f"{args.ckpt} was trained for D={model.cfg.target_dim}, H={model.cfg.prediction_length}; "
                         f"{ds.name} has D={ds.dim}, H={ds.prediction_length}")
    contexts, targets, t0 = ds.windows(model.cfg.context_length)
    samples = model.sample(contexts, t0, num_samples=args.samples, **_sample_kw(args, args.schedule))
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, samples=samples, contexts=contexts, targets=targets, t0=t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out}: samples {samples.shape} (windows, paths, horizon, series)")
    if args.plot:
        w = args.window % len(contexts)
        fan_chart(args.plot, contexts[w], targets[w], {"diffusion forcing": samples[w]},
                  names=ds.columns, title=f"{ds.name}, test window {w}")
        print(f"wrote {args.plot}")
    return 0


def cmd_eval(args) -> int:
    _threads(args)
    from driftless.checkpoint import atomic_write_json
    from driftless.forecast.data import load_dataset
    from driftless.forecast.evaluate import baseline_forecasters, evaluate, fan_chart, format_table, model_forecaster

    ds = load_dataset(args.data)
    print(ds.summary())
    baselines = [b for b in (args.baselines or "").split(",") if b]
    fns, skipped = baseline_forecasters(ds, baselines, num_samples=args.samples, seed=args.seed)
    context_length = 1
    schedules = (args.schedule or "").split(",") if args.schedule else [None]
    for ckpt in args.ckpt or []:
        model, header = _load(ckpt, args.device)
        if ds.dim != model.cfg.target_dim or ds.prediction_length != model.cfg.prediction_length:
            raise ValueError(f"{ckpt} expects D={model.cfg.target_dim}, H={model.cfg.prediction_length}; "
                             f"{ds.name} has D={ds.dim}, H={ds.prediction_length}")
        context_length = max(context_length, model.cfg.context_length)
        label = header["meta"].get("label") or ("teacher_forcing" if model.cfg.teacher_forcing else "diffusion_forcing")
        for sch in schedules:
            name = f"{label}[{sch or model.cfg.schedule}]"
            fns[name] = model_forecaster(model, args.samples, **_sample_kw(args, sch))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    if not fns:
        raise ValueError("nothing to evaluate: pass --ckpt and/or --baselines")
    results = evaluate(ds, fns, context_length, keep_samples=bool(args.plot_dir))
    keys = ("crps_sum", "crps", "nd", "nd_sum", "nrmse", "cov50", "cov90")
    if ds.process is not None:
        keys += ("law_cov50", "law_cov90")
    print(format_table(results, keys))
    if args.plot_dir:
        from driftless.forecast.evaluate import history_length

        contexts, targets, _ = ds.windows(history_length(ds, context_length))
        w = args.window % len(contexts)
        picks = {n: r["samples"][w] for n, r in results.items()}
        path = Path(args.plot_dir) / f"fan_{ds.name}_w{w}.png"
        fan_chart(path, contexts[w], targets[w], picks, names=ds.columns, title=f"{ds.name}, test window {w}")
        print(f"wrote {path}")
    if args.json:
        payload = {"dataset": args.data, "summary": ds.summary(), "skipped": skipped,
                   "results": {n: {k: v for k, v in r.items() if k != "samples"} for n, r in results.items()}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("forecast", help="multivariate probabilistic forecasting with Diffusion Forcing",
                            description="Train, sample and evaluate a Diffusion-Forcing forecaster "
                                        "(CRPS-sum as GluonTS) beside seasonal-naive, VAR and teacher-forcing baselines.")
    verbs = parser.add_subparsers(dest="forecast_verb", metavar="{train,predict,eval}")
    parser.set_defaults(func=lambda a: (parser.print_help(), 2)[1])

    p = verbs.add_parser("train", help="train a forecaster on a dataset's training split")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--force", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--preset", default="small", help="debug | small | small_transformer | base | base_gru")
    add_dataclass_flags(p, ForecastOptions)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a model config field, e.g. width=96")
    p.add_argument("--label", default=None, help="name shown in eval tables")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on shared machines)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("predict", help="sample future paths for every test window (npz) and draw a fan chart")
    p.add_argument("--ckpt", required=True, help="checkpoint folder from `forecast train`")
    p.add_argument("--data", default=None, help=DATA_HELP + " (default: the training dataset)")
    p.add_argument("--out", default="forecast.npz", help="npz with samples (N, S, H, D), contexts, targets")
    p.add_argument("--plot", default=None, help="PNG fan chart of one test window")
    p.add_argument("--window", type=int, default=-1, help="test window to plot (default: the last)")
    _add_sampling(p)
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser("eval", help="CRPS-sum, CRPS, ND, NRMSE, coverage of models and baselines")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--ckpt", action="append", help="checkpoint folder (repeatable)")
    p.add_argument("--baselines", default="seasonal_naive,var",
                   help="comma-separated: seasonal_naive, var, oracle (synthetic data only); '' for none")
    p.add_argument("--json", default=None, help="write the metrics here")
    p.add_argument("--plot-dir", default=None, help="write a fan chart of one test window here")
    p.add_argument("--window", type=int, default=-1, help="test window to plot (default: the last)")
    _add_sampling(p)
    p.set_defaults(func=cmd_eval)
