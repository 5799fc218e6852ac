"""Tune a world's context noise level on validation data: `driftless world tune WORLD --data VAL`.

When sampling frame by frame, the dynamics holds its own generated past at a diffusion noise
level, the *context level* (the dynamics' config says 15 of 1000). A noisier past makes the
model trust its own imperfect frames less, which on the shipped CoinRun world kept long rollouts
on the player's level far better (docs/benchmarks.md, 1.6); too noisy and the past is lost. The
best level differs per world, so it is measured and stored in the world's `world.json`
(`sampling.context_level`, which `World` and the ONNX export take as their default).

Every candidate level is measured on the SAME validation episodes, with the same rollouts (the
same start frames, actions and sampling seeds; only the level differs), by two protocols:

* short horizon: the GenieRedux protocol of `eval/evaluate.py` (`rollout_protocol`): reset on 1
  real frame, generate 10 with the LAM's actions of the real clip, mean PSNR against the real
  frames (`psnr`);
* long horizon: the same-level drift of `eval/drift.py` (`drift_protocol`): `rollouts` rollouts of
  `frames` frames with random actions; `same_level_score` is the fraction of the last
  `drift_window` frames whose palette distance to the rollout's own context lies inside real
  one-level play's 90th percentile (real play scores about 0.9). It needs real episodes of one
  level at least 1 + `frames` long in the store (`driftless data coinrun --same-level-frames`).

The rule (`choose`), in order:

1. eligible: a candidate whose PSNR is within `psnr_tolerance` dB of the best candidate's (so
   that the short horizon does not pay for the long one) and whose rollouts are not frozen
   (`frozen_rate` at most `max_frozen`: a rollout stuck on its start frame scores a perfect
   same-level score);
2. among those, the highest same-level score (ties: the higher PSNR);
3. it replaces the world's current level only if its score beats the current level's by at least
   `min_gain` (a few rollouts are noisy: a small gain is not evidence); otherwise the current
   level stays (if the current level is not eligible itself, the winner replaces it anyway).

Then the temperature (the scale of each frame's initial noise; `temperatures`, at the chosen
level): a stochastic sampler pays PSNR where the future is predictable, a cold one blurs textures
(docs/benchmarks.md, 2.5). Each candidate is measured by the short-horizon protocol on the same
clips; the best replaces the current temperature only if it gains at least
`temperature_min_gain` dB and its long rollouts are no more frozen than `max_frozen` and keep a
same-level score within `min_gain` of the chosen level's (`choose_temperature`).

Last the sampling steps per frame (`steps`, at the chosen level and temperature): every step is a
full pass of the dynamics, so on a CPU the steps set the frame rate of play (4 steps against 8
doubles it). Each candidate is measured by the short-horizon protocol on the same clips; the
*fewest* steps whose PSNR lies within `steps_tolerance` dB of the best candidate's win, if their
long rollouts hold as a temperature's must (`choose_steps`); a candidate that fails the long check
passes the choice to the next fewest.

Then, for a world whose frame model can (Diffusion Forcing, one pass per step), `fused_commit`: the
last denoising pass commits the frame to the dynamics' caches instead of a pass of its own, one
backbone pass fewer per frame. Measured on and off at the chosen level, temperature and steps (the
world's current setting was measured already; the other costs one short and one long run); on
wins if its short-horizon PSNR lies within `steps_tolerance` dB of off's and its long rollouts hold
against off's as a step count's must (`choose_fused_commit`).

Validation only: a store that declares the test split is refused unless `allow_test` (settings
chosen on the test split make the test figures optimistic). `tune_context_level` writes the choice and
every candidate's numbers into world.json atomically (`sampling.context_level`, and
`tuning.context_level`: data, split, rule, numbers, date, code version; likewise
`sampling.temperature` and `tuning.temperature`, `sampling.steps` and `tuning.steps`,
`sampling.fused_commit` and `tuning.fused_commit`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from driftless.runtime import clean_json, run_info

DEFAULT_LEVELS = (15, 100, 300, 500)
DEFAULT_TEMPERATURES = (1.0, 0.85, 0.7, 0.5)
DEFAULT_STEPS = (2, 3, 4, 8)


@dataclass
class TuneConfig:
    levels: tuple[int, ...] = DEFAULT_LEVELS  # candidate context levels (the world's current one is always added)
    split: str = "val"  # the split the store must declare (tuning never chooses on test unless allow_test)
    allow_test: bool = False
    clips: int = 16  # short horizon: clips of 1 + horizon frames (GenieRedux protocol)
    horizon: int = 10
    rollouts: int = 4  # long horizon: rollouts per candidate
    frames: int = 300  # frames per rollout; the store needs same-level episodes of 1 + frames frames
    drift_window: int = 50  # the last frames the same-level score is taken over
    psnr_tolerance: float = 0.3  # dB below the best candidate's short-horizon PSNR still eligible
    max_frozen: float = 0.25  # at most this fraction of a candidate's rollouts frozen
    min_gain: float = 0.05  # same-level score a candidate must gain over the current level to replace it
    # candidate temperatures, measured at the chosen level (the world's current one is always added;
    # empty: the temperature is not tuned)
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    temperature_min_gain: float = 0.1  # short-horizon dB a temperature must gain over the current one
    # candidate sampling steps per frame, measured at the chosen level and temperature (the world's
    # current steps always added; empty: the steps are not tuned)
    steps: tuple[int, ...] = DEFAULT_STEPS
    steps_tolerance: float = 0.15  # short-horizon dB under the best candidate the fewest steps may lose
    # measure fused_commit on and off at the chosen level, temperature and steps (worlds that can fuse)
    fused_commit: bool = True
    bank_size: int = 512  # real frames of the drift measure's bank / calibration (as eval's quick size)
    reference_size: int = 256
    batch_size: int = 16
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.levels = tuple(int(v) for v in self.levels)
        if not self.levels:
            raise ValueError("give at least one candidate context level")
        if any(v < 0 for v in self.levels):
            raise ValueError(f"context levels are >= 0, got {list(self.levels)}")
        for name in ("clips", "horizon", "rollouts", "frames", "drift_window", "batch_size", "bank_size",
                     "reference_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.temperatures = tuple(float(v) for v in self.temperatures)
        if any(not 0.0 <= v <= 2.0 for v in self.temperatures):
            raise ValueError(f"temperatures lie in [0, 2], got {list(self.temperatures)}")
        self.steps = tuple(int(v) for v in self.steps)
        if any(not 1 <= v <= 1000 for v in self.steps):
            raise ValueError(f"sampling steps lie in [1, 1000], got {list(self.steps)}")
        if self.steps_tolerance < 0:
            raise ValueError(f"steps_tolerance must be >= 0, got {self.steps_tolerance}")
        if self.temperature_min_gain < 0:
            raise ValueError(f"temperature_min_gain must be >= 0, got {self.temperature_min_gain}")
        if self.drift_window > self.frames:
            raise ValueError(f"drift_window ({self.drift_window}) must not exceed frames ({self.frames})")
        if self.psnr_tolerance < 0 or self.min_gain < 0 or not 0 <= self.max_frozen <= 1:
            raise ValueError(f"psnr_tolerance and min_gain must be >= 0 and max_frozen in [0, 1], got "
                             f"{self.psnr_tolerance}, {self.min_gain}, {self.max_frozen}")


RULE = ("among candidates whose short-horizon PSNR (1 context frame, {horizon} generated) is within "
        "{psnr_tolerance} dB of the best candidate's and whose rollouts are at most {max_frozen:.0%} frozen, "
        "the highest same-level score over the last {drift_window} of {frames} frames (ties: higher PSNR); it "
        "replaces the current level only if its score is at least {min_gain} higher")


def rule_text(cfg: TuneConfig) -> str:
    return RULE.format(**asdict(cfg))


# ---- the rule ---------------------------------------------------------------------------------
def choose(results: list[dict], current: int, cfg: TuneConfig) -> dict:
    """results: one dict per candidate with "context_level", "psnr", "same_level_score" and
    "frozen_rate" (None: not measured) -> {"context_level": the choice, "reason": why,
    "eligible": [levels], "excluded": {level: why}} by the module docstring's rule."""
    best_psnr = max(r["psnr"] for r in results)
    excluded = {}
    for r in results:
        if r["psnr"] < best_psnr - cfg.psnr_tolerance:
            excluded[r["context_level"]] = (f"PSNR {r['psnr']:.2f} dB, {best_psnr - r['psnr']:.2f} dB below the best "
                                            f"({best_psnr:.2f}; tolerance {cfg.psnr_tolerance})")
        elif (r.get("frozen_rate") or 0.0) > cfg.max_frozen:
            excluded[r["context_level"]] = f"{r['frozen_rate']:.0%} of its rollouts frozen (at most {cfg.max_frozen:.0%})"
        elif r.get("same_level_score") is None:
            excluded[r["context_level"]] = "no same-level score (too few long real episodes)"
    eligible = [r for r in results if r["context_level"] not in excluded]
    levels = [r["context_level"] for r in eligible]
    out = {"eligible": levels, "excluded": {str(k): v for k, v in excluded.items()}}
    if not eligible:
        return {"context_level": current, **out, "reason": "no candidate is eligible: the current level stays"}
    top = max(eligible, key=lambda r: (r["same_level_score"], r["psnr"]))
    now = next((r for r in eligible if r["context_level"] == current), None)  # None: not eligible (or not measured)
    if top["context_level"] == current:
        return {"context_level": current, **out,
                "reason": f"the current level has the best same-level score of the eligible {levels}"}
    if now is not None and top["same_level_score"] < now["same_level_score"] + cfg.min_gain:
        return {"context_level": current, **out,
                "reason": (f"level {top['context_level']} scores {top['same_level_score']:.3f}, less than "
                           f"{cfg.min_gain} above the current level's {now['same_level_score']:.3f}: the current "
                           f"level stays")}
    why = ("the current level is not eligible" if now is None else
           f"{top['same_level_score']:.3f} against the current level's {now['same_level_score']:.3f}")
    return {"context_level": top["context_level"], **out,
            "reason": f"level {top['context_level']} has the best same-level score of the eligible {levels} ({why})"}


# ---- measuring ----------------------------------------------------------------------------------
def check_store(store, store_info: dict, cfg: TuneConfig, context: int = 1) -> None:
    """Refuse a test store (unless allow_test) and a store without real episodes long enough for
    the same-level band (before anything is generated)."""
    from driftless.eval.drift import DriftConfig

    declared = store_info.get("declared_split")
    if declared == "test" and not cfg.allow_test:
        raise ValueError(f"{store_info['path']} holds the test split: settings chosen on it would make the test "
                         f"figures optimistic. Tune on validation data (driftless data coinrun --split val "
                         f"--same-level-frames N), or pass --allow-test to do it anyway")
    need = context + cfg.frames
    long_enough = int((np.asarray(store.episode_lengths) >= need).sum())
    if long_enough < DriftConfig().band_min_episodes:
        raise ValueError(f"the same-level score of {cfg.frames}-frame rollouts needs at least "
                         f"{DriftConfig().band_min_episodes} real episodes of {need}+ frames of one level in "
                         f"{store_info['path']} ({long_enough} there): make them with `driftless data coinrun "
                         f"--split val --same-level-frames {need}` or tune with fewer --frames")


def _eval_config(cfg: TuneConfig, sampling: dict):
    from driftless.eval.evaluate import EvalConfig

    return EvalConfig(split=cfg.split, clips=cfg.clips, context=1, horizon=cfg.horizon,
                      delta_t=min(4, cfg.horizon), drift_frames=cfg.frames, drift_rollouts=cfg.rollouts,
                      drift_window=cfg.drift_window, bank_size=cfg.bank_size, reference_size=cfg.reference_size,
                      batch_size=cfg.batch_size, seed=cfg.seed, sampling=sampling, progress=cfg.progress,
                      size="custom")


SHORT_KEYS = ("psnr", "ssim", "psnr_per_step", "delta_psnr")  # a candidate's short-horizon numbers (`_short`)


def _short(world, store, cfg: TuneConfig, sampling: dict) -> dict:
    from driftless.eval.evaluate import rollout_protocol

    short, _ = rollout_protocol(world, store, _eval_config(cfg, sampling))
    return {"psnr": short["rollout"]["psnr"], "ssim": short["rollout"]["ssim"],
            "psnr_per_step": short["rollout"]["psnr_per_step"],
            "delta_psnr": (short["delta"] or {}).get("delta_psnr")}


def _long(world, store, cfg: TuneConfig, sampling: dict) -> dict:
    from driftless.eval.evaluate import drift_protocol

    drift, _ = drift_protocol(world, store, _eval_config(cfg, sampling))
    s, sl = drift["summary"], drift.get("same_level", {}).get("summary", {})
    return {"same_level_score": sl.get("same_level_score"), "morphed_rate": sl.get("morphed_rate"),
            "palette_tv_first": sl.get("palette_tv_first"), "palette_tv_last": sl.get("palette_tv_last"),
            "palette_tv_real_limit_last": sl.get("palette_tv_real_limit_last"),
            "nn_psnr_first": s["nn_psnr_first"], "nn_psnr_last": s["nn_psnr_last"],
            "collapse_rate_last": s["collapse_rate_last"], "frozen_rate": s.get("frozen_rate")}


def measure_level(world, store, level: int, cfg: TuneConfig) -> dict:
    """One candidate's numbers: the GenieRedux rollout PSNR and the drift / same-level summary."""
    sampling = {"context_level": int(level)}
    return {"context_level": int(level), **_short(world, store, cfg, sampling), **_long(world, store, cfg, sampling)}


def long_fails(long: dict, base: dict, cfg: TuneConfig) -> list[str]:
    """Why a challenger's long rollouts (`long`) do not hold against the setting it would replace
    (`base`): more than cfg.max_frozen of them frozen, or a same-level score more than cfg.min_gain
    under base's (a missing number is no failure). [] when they hold."""
    fails = []
    frozen, score, ref = long.get("frozen_rate"), long.get("same_level_score"), base.get("same_level_score")
    if frozen is not None and frozen > cfg.max_frozen:
        fails.append(f"{frozen:.0%} of its rollouts frozen (at most {cfg.max_frozen:.0%})")
    if score is not None and ref is not None and score < ref - cfg.min_gain:
        fails.append(f"same-level score {score:.3f} under {ref:.3f} by more than {cfg.min_gain}")
    return fails


def choose_temperature(short: list[dict], current: float, at_level: dict, long_of, cfg: TuneConfig) -> dict:
    """short: {"temperature", "psnr"} per candidate (the current one among them); at_level: the
    chosen level's long-horizon numbers at the current temperature; long_of(t) -> the long-horizon
    numbers at temperature t (measured only for a challenger) -> {"temperature", "reason", "long"}."""
    now = next(r for r in short if r["temperature"] == current)
    top = max(short, key=lambda r: (r["psnr"], r["temperature"] == current))
    if top["temperature"] == current:
        return {"temperature": current, "reason": f"the current temperature {current} has the best short-horizon PSNR"}
    gain = top["psnr"] - now["psnr"]
    if gain < cfg.temperature_min_gain:
        return {"temperature": current, "reason": f"temperature {top['temperature']} gains {gain:.2f} dB, less than "
                                                  f"{cfg.temperature_min_gain}: the current one stays"}
    long = long_of(top["temperature"])
    fails = long_fails(long, at_level, cfg)
    if fails:
        return {"temperature": current, "long": long,
                "reason": f"temperature {top['temperature']} gains {gain:.2f} dB but: {'; '.join(fails)}: the current "
                          f"one stays"}
    frozen, score = long.get("frozen_rate"), long.get("same_level_score")
    return {"temperature": top["temperature"], "long": long,
            "reason": f"temperature {top['temperature']} has the best short-horizon PSNR, {gain:.2f} dB above the "
                      f"current {current}, and its long rollouts hold (frozen {frozen}, same-level score {score})"}


def _tune_temperature(w, store, level: int, results: list[dict], cfg: TuneConfig, log) -> dict | None:
    """The temperature at the chosen context level (module docstring) -> its record, or None when
    cfg.temperatures is empty."""
    if not cfg.temperatures:
        return None
    current = float(w.sampling.temperature)
    at_level = next(r for r in results if r["context_level"] == level)
    cands = sorted(set(cfg.temperatures) | {current}, reverse=True)
    short, t0 = [], time.time()
    for t in cands:
        r = ({k: at_level[k] for k in ("psnr", "ssim", "psnr_per_step", "delta_psnr")} if t == current else
             _short(w, store, cfg, {"context_level": int(level), "temperature": t}))
        short.append({"temperature": t, **r})
        log(f"temperature {t} at context level {level}: PSNR {r['psnr']:.2f} dB")
    decision = choose_temperature(short, current, at_level,
                                  lambda t: _long(w, store, cfg, {"context_level": int(level), "temperature": t}), cfg)
    log(f"temperature: {decision['temperature']} ({decision['reason']})")
    return {"chosen": decision["temperature"], "previous": current, "context_level": int(level),
            "reason": decision["reason"], "candidates": short, "challenger_long": decision.get("long"),
            "seconds": round(time.time() - t0, 1)}


def choose_steps(short: list[dict], current: int, at_choice: dict, long_of, cfg: TuneConfig) -> dict:
    """short: {"steps", "psnr"} per candidate (the current one among them); at_choice: the long-horizon
    numbers at the chosen level and temperature with the current steps; long_of(n) -> the long-horizon
    numbers with n steps (measured only for a challenger) -> {"steps", "reason", "long" (the winner's,
    when a challenger), "longs" (every challenger rolled out: n -> its numbers)}: the fewest steps
    within cfg.steps_tolerance dB of the best short-horizon PSNR whose long rollouts hold."""
    best = max(r["psnr"] for r in short)
    eligible = sorted((r for r in short if r["psnr"] >= best - cfg.steps_tolerance), key=lambda r: r["steps"])
    checked, longs = {}, {}
    for r in eligible:
        n = r["steps"]
        if n == current:
            why = (f"the current {current} steps are the fewest within {cfg.steps_tolerance} dB of the best "
                   f"short-horizon PSNR ({best:.2f} dB)")
            return {"steps": current, "longs": longs,
                    "reason": why + (f"; fewer failed the long check: {checked}" if checked else "")}
        long = longs[n] = long_of(n)
        fails = long_fails(long, at_choice, cfg)
        if fails:
            checked[n] = "; ".join(fails)
            continue
        frozen, score = long.get("frozen_rate"), long.get("same_level_score")
        return {"steps": n, "long": long, "longs": longs,
                "reason": f"{n} steps are the fewest within {cfg.steps_tolerance} dB of the best short-horizon PSNR "
                          f"({r['psnr']:.2f} against {best:.2f} dB) and their long rollouts hold (frozen {frozen}, "
                          f"same-level score {score})" + (f"; fewer failed the long check: {checked}" if checked else "")}
    return {"steps": current, "longs": longs,
            "reason": f"no candidate with fewer steps is within {cfg.steps_tolerance} dB of the best "
                      f"short-horizon PSNR ({best:.2f} dB) and holds its long rollouts; the current {current} stay"
                      + (f" ({checked})" if checked else "")}


def choose_fused_commit(on_short: dict, off_short: dict, on_long: dict, off_long: dict, cfg: TuneConfig) -> dict:
    """The short-horizon ({"psnr"}) and long-horizon numbers of fused_commit on and off, on the same clips
    and rollouts -> {"fused_commit", "reason"}: on (one backbone pass fewer per frame) when its PSNR lies
    within cfg.steps_tolerance dB of off's, at most cfg.max_frozen of its rollouts are frozen, and its
    same-level score is at most cfg.min_gain under off's; otherwise off."""
    fails = []
    if on_short["psnr"] < off_short["psnr"] - cfg.steps_tolerance:
        fails.append(f"short-horizon PSNR {on_short['psnr']:.2f} under off's {off_short['psnr']:.2f} dB by more "
                     f"than {cfg.steps_tolerance}")
    fails += long_fails(on_long, off_long, cfg)
    frozen, score, base = on_long.get("frozen_rate"), on_long.get("same_level_score"), off_long.get("same_level_score")
    if fails:
        return {"fused_commit": False, "reason": "on fails: " + "; ".join(fails)}
    return {"fused_commit": True,
            "reason": f"on holds: short-horizon PSNR {on_short['psnr']:.2f} against {off_short['psnr']:.2f} dB "
                      f"(tolerance {cfg.steps_tolerance}), same-level score {score} against {base}, frozen {frozen}"}


def _tune_fused_commit(w, store, base: dict, current_short: dict, current_long: dict, cfg: TuneConfig,
                       log) -> dict | None:
    """fused_commit on or off at `base` (the chosen context_level, temperature, steps) -> its record, or None
    when not tuned (cfg.fused_commit off, or a world or setting that cannot fuse). current_short /
    current_long: the numbers already measured at `base` with the world's current setting."""
    o = w.sampling
    frame = getattr(w.dynamics, "frame", None)
    can = (getattr(frame, "fuses_commit", False)
           and not frame.guides_last_step(o.cfg_scale, o.cfg_steps, int(base["steps"]))
           and o.history_guidance == 1.0 and int(base["steps"]) >= 2)
    if not cfg.fused_commit or not can:
        return None
    current, t0 = bool(o.fused_commit), time.time()
    other = {**base, "fused_commit": not current}
    other_short, other_long = _short(w, store, cfg, other), _long(w, store, cfg, other)
    cur_short = {k: current_short[k] for k in SHORT_KEYS}
    on_short, off_short = (cur_short, other_short) if current else (other_short, cur_short)
    on_long, off_long = (current_long, other_long) if current else (other_long, current_long)
    decision = choose_fused_commit(on_short, off_short, on_long, off_long, cfg)
    log(f"fused_commit: {'on' if decision['fused_commit'] else 'off'} ({decision['reason']})")
    return {"chosen": decision["fused_commit"], "previous": current, **{k: base[k] for k in base},
            "reason": decision["reason"], "on": {"short": on_short, "long": on_long},
            "off": {"short": off_short, "long": off_long}, "seconds": round(time.time() - t0, 1)}


def _tune_steps(w, store, level: int, temperature: float, current_short: dict, at_choice: dict, cfg: TuneConfig,
                log) -> dict | None:
    """The sampling steps at the chosen level and temperature (module docstring) -> its record, or
    None when cfg.steps is empty. current_short: the short-horizon numbers already measured there with
    the world's current steps."""
    if not cfg.steps:
        return None
    current = int(w.sampling.steps)
    base = {"context_level": int(level), "temperature": float(temperature)}
    short, t0 = [], time.time()
    for n in sorted(set(cfg.steps) | {current}):
        r = ({k: current_short[k] for k in SHORT_KEYS} if n == current else
             _short(w, store, cfg, {**base, "steps": n}))
        short.append({"steps": n, **r})
        log(f"{n} sampling steps at context level {level}, temperature {temperature}: PSNR {r['psnr']:.2f} dB")
    decision = choose_steps(short, current, at_choice, lambda n: _long(w, store, cfg, {**base, "steps": n}), cfg)
    log(f"steps: {decision['steps']} ({decision['reason']})")
    return {"chosen": decision["steps"], "previous": current, "context_level": int(level),
            "temperature": float(temperature), "reason": decision["reason"], "candidates": short,
            "challenger_long": decision.get("long"),
            "challengers_long": {str(n): v for n, v in decision["longs"].items()},
            "seconds": round(time.time() - t0, 1)}


def tune_context_level(world: str | Path, data: str | Path, cfg: TuneConfig | None = None, write: bool = True,
                       threads: int | None = None, log=print, device="cpu") -> dict:
    """Measure `cfg.levels` (and the world's current context level) on the validation store
    `data` with the world on `device`, choose one by the rule, and (with `write`) store it and
    the evidence in the world's world.json. -> the tuning record."""
    import torch

    from driftless.checkpoint import atomic_write_json
    from driftless.eval.evaluate import resolve_store
    from driftless.world.build import world_folder
    from driftless.world.world import load

    cfg = cfg or TuneConfig()
    folder = world_folder(world)
    if threads:
        torch.set_num_threads(threads)
    w = load(folder, device=device)
    if w.dynamics is None or not w.num_actions:
        raise ValueError(f"{folder} has no action-conditioned dynamics model: nothing to tune")
    store, store_info = resolve_store(data, cfg.split)
    check_store(store, store_info, cfg)
    levels_max = w.dynamics.cfg.diffusion.levels
    bad = [v for v in cfg.levels if v > levels_max]
    if bad:
        raise ValueError(f"context levels must lie in [0, {levels_max}] (the dynamics' noise levels), got {bad}")
    model_default = int(w.dynamics.cfg.diffusion.context_level)
    current = w.sampling.context_level if w.sampling.context_level is not None else model_default
    levels = sorted(set(cfg.levels) | {int(current)})
    per = cfg.clips * 2 * cfg.horizon + cfg.rollouts * cfg.frames
    log(f"tuning the context level of {folder} on {store_info['path']} (split {store_info['declared_split']!r}, "
        f"{store.num_episodes} episodes): candidates {levels} (current {current}); per candidate {cfg.clips} clips "
        f"x (1 + {cfg.horizon}) frames, twice (inferred and random actions), and {cfg.rollouts} rollouts x "
        f"{cfg.frames} frames: {per} generated frames")
    results, t0 = [], time.time()
    for i, level in enumerate(levels):
        t = time.time()
        r = measure_level(w, store, level, cfg)
        r["seconds"] = round(time.time() - t, 1)
        results.append(r)
        done = time.time() - t0
        left = done / (i + 1) * (len(levels) - i - 1)
        score = "n/a" if r["same_level_score"] is None else f"{r['same_level_score']:.3f}"
        log(f"[{i + 1}/{len(levels)}] context level {level}: PSNR {r['psnr']:.2f} dB, same-level score {score}, "
            f"morphed {r['morphed_rate']}, frozen {r['frozen_rate']} ({r['seconds'] / 60:.1f} min; "
            f"{'done' if i + 1 == len(levels) else f'about {left / 60:.1f} min left'})")
    decision = choose(results, int(current), cfg)
    level = decision["context_level"]
    temperature = _tune_temperature(w, store, level, results, cfg, log)
    at_level = next(r for r in results if r["context_level"] == level)
    if temperature is None or temperature["chosen"] == temperature["previous"]:
        t_now, here, long_here = float(w.sampling.temperature), at_level, at_level
    else:
        t_now = temperature["chosen"]
        here = next(c for c in temperature["candidates"] if c["temperature"] == t_now)
        long_here = temperature["challenger_long"]
    steps = _tune_steps(w, store, level, t_now, here, long_here, cfg, log)
    n_now = int(w.sampling.steps) if steps is None else steps["chosen"]
    if steps is not None and steps["chosen"] != steps["previous"]:
        here = next(c for c in steps["candidates"] if c["steps"] == n_now)
        long_here = steps["challenger_long"]
    fused = _tune_fused_commit(w, store, {"context_level": int(level), "temperature": float(t_now), "steps": n_now},
                               here, long_here, cfg, log)
    info = run_info(w.device)
    record = {
        "chosen": decision["context_level"], "previous": int(current), "model_default": model_default,
        "reason": decision["reason"], "eligible": decision["eligible"], "excluded": decision["excluded"],
        "rule": rule_text(cfg), "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "data": {"path": str(store_info["path"]), "split": store_info["declared_split"],
                 "episodes": int(store.num_episodes), "frames": int(store.num_frames)},
        "candidates": results,
        "date": info["date"][:10], "seconds": round(time.time() - t0, 1),
        "code": {"driftless": info["driftless"], "git": info["git"], "torch": info["torch"]},
        "device": info["device_name"] or info["device"], "cpu_count": info["cpu_count"],
        "torch_threads": info["torch_threads"],
        **({"temperature": temperature} if temperature is not None else {}),
        **({"steps": steps} if steps is not None else {}),
        **({"fused_commit": fused} if fused is not None else {}),
    }
    record = clean_json(record)
    if write:
        meta = json.loads((folder / "world.json").read_text())  # as on disk now (the load above may be stale)
        meta.setdefault("sampling", {})["context_level"] = int(decision["context_level"])
        meta.setdefault("tuning", {})["context_level"] = {k: v for k, v in record.items()
                                                          if k not in ("temperature", "steps", "fused_commit")}
        if temperature is not None:
            meta["sampling"]["temperature"] = temperature["chosen"]
            meta["tuning"]["temperature"] = record["temperature"]
        if steps is not None:
            meta["sampling"]["steps"] = steps["chosen"]
            meta["tuning"]["steps"] = record["steps"]
        if fused is not None:
            meta["sampling"]["fused_commit"] = bool(fused["chosen"])
            meta["tuning"]["fused_commit"] = record["fused_commit"]
        atomic_write_json(folder / "world.json", meta)
        load(folder)  # it still loads
    return record
