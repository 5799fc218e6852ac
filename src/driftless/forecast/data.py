"""Multivariate time-series data for forecasting: GluonTS files, statsmodels' macrodata, and a
synthetic process whose forecast distribution is known exactly.

Everything becomes a `ForecastDataset`: one multivariate training series (T, D) and a list of
test entries, each a multivariate series (T_i, D) whose last `prediction_length` steps are the
forecast target and everything before is history (GluonTS's rolling-evaluation layout).

GluonTS file layout (what `load_gluonts` reads; nothing is downloaded)::

    <name>/metadata.json   {"freq": "H", "prediction_length": 24,
                            "feat_static_cat": [{"name": ..., "cardinality": "370"}], ...}
    <name>/train/*.json    JSON lines {"start": "2014-01-01 00:00:00", "target": [...],
    <name>/test/*.json                 "feat_static_cat": [i]}   (.jsonl and .gz also read)

The multivariate protocol of TimeGrad and Diffusion Forcing groups the univariate series the
way GluonTS's MultivariateGrouper does, and this reader does the same:

* train: every series is placed on the common time axis from the earliest start to the latest
  end; missing steps are filled with that series' mean; the result is one (T, D) series;
* test: the test file holds `num_test_dates` consecutive blocks of D series (one block per
  rolling forecast date, default `len(test) // len(train)`); each series is left-padded with 0
  to the earliest test start, and each block becomes one (T_i, D) test entry;
* `max_target_dim` keeps the last D' series (as GluonTS does); NaN targets become 0.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GLUONTS_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


# ---------------------------------------------------------------- the dataset container

@dataclass
class ForecastDataset:
    name: str
    freq: str
    prediction_length: int
    train: np.ndarray  # (T, D) float32
    test: list[np.ndarray]  # each (T_i, D); the last prediction_length steps are the target
    season: int = 1  # seasonal period in steps (seasonal naive, season embeddings)
    columns: list[str] | None = None
    test_offsets: list[int] = field(default_factory=list)  # time index of each test entry's first step
    process: "SyntheticVAR | None" = None  # the generating process, when it is known

    def __post_init__(self) -> None:
        if self.train.ndim != 2:
            raise ValueError(f"{self.name}: train must be (T, D), got shape {self.train.shape}")
        d = self.train.shape[1]
        for i, entry in enumerate(self.test):
            if entry.ndim != 2 or entry.shape[1] != d:
                raise ValueError(f"{self.name}: test entry {i} must be (T_i, {d}), got {entry.shape}")
            if entry.shape[0] <= self.prediction_length:
                raise ValueError(f"{self.name}: test entry {i} has {entry.shape[0]} steps, "
                                 f"needs more than prediction_length={self.prediction_length}")
        if not self.test_offsets:
            self.test_offsets = [0] * len(self.test)

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def windows(self, context_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """contexts (N, C, D), targets (N, H, D), t0 (N,) time index of each context's first step.

        Entries shorter than C + H are left-padded by repeating their first value."""
        h, c = self.prediction_length, context_length
        ctx, tgt, t0 = [], [], []
        for entry, off in zip(self.test, self.test_offsets):
            if entry.shape[0] < c + h:
                pad = np.repeat(entry[:1], c + h - entry.shape[0], axis=0)
                entry, off = np.concatenate([pad, entry]), off - pad.shape[0]
            ctx.append(entry[-(c + h):-h])
            tgt.append(entry[-h:])
            t0.append(off + entry.shape[0] - c - h)
        return np.stack(ctx).astype(np.float32), np.stack(tgt).astype(np.float32), np.asarray(t0)

    def summary(self) -> str:
        return (f"{self.name}: D={self.dim}, freq={self.freq}, train T={self.train.shape[0]}, "
                f"{len(self.test)} test windows of {self.prediction_length} steps, season={self.season}")


# ---------------------------------------------------------------- frequencies

def pandas_freq(freq: str) -> str:
    """GluonTS-era aliases ('H', '30T', '1H') -> the spelling current pandas accepts."""
    m = re.fullmatch(r"(\d*)([A-Za-z]+)", freq.strip())
    if not m:
        raise ValueError(f"cannot parse frequency {freq!r}; expected e.g. 'H', '30min', 'B', 'D'")
    mult, unit = m.groups()
    unit = {"H": "h", "T": "min", "S": "s", "L": "ms"}.get(unit, unit)
    return f"{mult}{unit}"


def season_of(freq: str) -> int:
    """Seasonal period in steps: daily for sub-daily data, weekly for daily, yearly otherwise."""
    m = re.fullmatch(r"(\d*)([A-Za-z]+)(-.*)?", freq.strip())
    if not m:
        raise ValueError(f"cannot parse frequency {freq!r}")
    mult = int(m.group(1) or 1)
    unit = m.group(2)
    per_day = {"h": 24, "H": 24, "min": 1440, "T": 1440, "s": 86400, "S": 86400}
    if unit in per_day:
        return max(1, per_day[unit] // mult)
    table = {"D": 7, "B": 5, "W": 52, "M": 12, "MS": 12, "ME": 12, "Q": 4, "QS": 4, "QE": 4}
    return table.get(unit, 1)


def _offsets(starts: list[str], freq: str) -> tuple[list[int], str]:
    """Steps from the earliest start to each start (pandas only when the starts differ)."""
    uniq = sorted(set(starts))
    if len(uniq) == 1:
        return [0] * len(starts), uniq[0]
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - pandas comes with the `forecast` extra
        raise ValueError("series with different start dates need pandas (pip install 'driftless[forecast]')") from e
    f = pandas_freq(freq)
    stamps = {s: pd.Timestamp(s) for s in uniq}
    first = min(stamps.values())
    steps = {s: len(pd.date_range(first, t, freq=f)) - 1 for s, t in stamps.items()}
    return [steps[s] for s in starts], str(first)


# ---------------------------------------------------------------- GluonTS reader

def _read_entries(folder: Path) -> list[dict]:
    if not folder.is_dir():
        raise FileNotFoundError(f"expected a folder of GluonTS JSON-lines files at {folder}")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(GLUONTS_SUFFIXES))
    if not files:
        raise ValueError(f"{folder} holds no GluonTS data files (*{', *'.join(GLUONTS_SUFFIXES)})")
    entries = []
    for path in files:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n} is not valid JSON ({err})") from err
                if "start" not in e or "target" not in e:
                    raise ValueError(f"{path}:{n} lacks 'start' or 'target'; expected GluonTS JSON lines")
                target = np.asarray(e["target"], dtype=np.float64)
                if target.ndim != 1:
                    raise ValueError(f"{path}:{n}: expected a univariate target, got shape {target.shape}")
                entries.append({"start": str(e["start"]), "target": np.nan_to_num(target, nan=0.0)})
    return entries


def load_gluonts(path: str | Path, max_target_dim: int | None = None,
                 num_test_dates: int | None = None) -> ForecastDataset:
    """Read a GluonTS dataset folder and group it as MultivariateGrouper does (module docstring)."""
    root = Path(path)
    meta_path = root / "metadata.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{root} has no metadata.json; expected a GluonTS dataset folder "
                                "(metadata.json, train/, test/)")
    meta = json.loads(meta_path.read_text())
    for key in ("freq", "prediction_length"):
        if key not in meta:
            raise ValueError(f"{meta_path} lacks {key!r}")
    freq, h = str(meta["freq"]), int(meta["prediction_length"])
    train_entries = _read_entries(root / "train")
    test_entries = _read_entries(root / "test")
    d = len(train_entries)
    if num_test_dates is None:
        if len(test_entries) % d:
            raise ValueError(f"{len(test_entries)} test series are not a whole number of blocks of the "
                             f"{d} training series; pass num_test_dates")
        num_test_dates = len(test_entries) // d
    if num_test_dates < 1 or len(test_entries) % num_test_dates:
        raise ValueError(f"cannot split {len(test_entries)} test series into {num_test_dates} dates")

    # train: align on [earliest start, latest end], fill with each series' mean
    offs, first = _offsets([e["start"] for e in train_entries], freq)
    end = max(o + len(e["target"]) for o, e in zip(offs, train_entries))
    train = np.empty((end, d), dtype=np.float32)
    for j, (o, e) in enumerate(zip(offs, train_entries)):
        train[:, j] = e["target"].mean()
        train[o:o + len(e["target"]), j] = e["target"]

    # test: left-pad with 0 to the earliest test start, split into date blocks
    t_offs, t_first = _offsets([e["start"] for e in test_entries], freq)
    block = len(test_entries) // num_test_dates
    test = []
    for b in range(num_test_dates):
        rows = list(zip(t_offs, test_entries))[b * block:(b + 1) * block]
        lengths = {o + len(e["target"]) for o, e in rows}
        if len(lengths) != 1:
            raise ValueError(f"test block {b} mixes series that end at different dates ({sorted(lengths)[:4]}...); "
                             "expected num_test_dates blocks of series sharing an end")
        arr = np.zeros((lengths.pop(), block), dtype=np.float32)
        for j, (o, e) in enumerate(rows):
            arr[o:, j] = e["target"]
        test.append(arr)
    if block != d:
        raise ValueError(f"each test date holds {block} series but training has {d}")
    test_offset = _offsets([first, t_first], freq)[0][1] if t_first != first else 0
    if max_target_dim is not None and max_target_dim < d:
        train = train[:, -max_target_dim:]
        test = [t[:, -max_target_dim:] for t in test]
    return ForecastDataset(name=root.name, freq=freq, prediction_length=h, train=train, test=test,
                           season=season_of(freq), test_offsets=[test_offset] * len(test))


# ---------------------------------------------------------------- macrodata (ships with statsmodels)

MACRO_COLUMNS = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate",
                 "unemp", "pop", "infl", "realint"]


def _rolling_split(name: str, series: np.ndarray, freq: str, h: int, windows: int, season: int,
                   columns=None, process=None) -> ForecastDataset:
    t = series.shape[0]
    n_train = t - windows * h
    if n_train <= h:
        raise ValueError(f"{name}: {t} steps cannot hold {windows} test windows of {h} plus training data")
    test = [series[: n_train + (i + 1) * h] for i in range(windows)]
    return ForecastDataset(name=name, freq=freq, prediction_length=h, train=series[:n_train], test=test,
                           season=season, columns=columns, process=process)


def macrodata(prediction_length: int = 4, test_windows: int = 8) -> ForecastDataset:
    """US quarterly macro data 1959Q1-2009Q3 (statsmodels): 12 series in levels, the last
    `test_windows` non-overlapping windows of `prediction_length` quarters are the test set."""
    try:
        from statsmodels.datasets import macrodata as md
    except ImportError as e:
        raise ValueError("the macrodata demo needs statsmodels: pip install 'driftless[forecast]'") from e
    frame = md.load_pandas().data
    series = frame[MACRO_COLUMNS].to_numpy(dtype=np.float32)  # (203, 12)
    return _rolling_split("macrodata", series, "Q", prediction_length, test_windows, 4, columns=list(MACRO_COLUMNS))


# ---------------------------------------------------------------- synthetic process with a known law

@dataclass
class SyntheticVAR:
    """x_t = m_t + A (x_{t-1} - m_{t-1}) + e_t, e_t ~ N(0, Sigma), m_t = level + amp * sin(2 pi t / P + phase).

    The h-step forecast given x_t is Gaussian with mean m_{t+h} + A^h (x_t - m_t) and covariance
    sum_{i<h} A^i Sigma A^i^T, so CRPS, coverage and CRPS-sum of the true law are known."""

    dim: int = 2
    period: int = 24
    rho: tuple[float, float] = (0.5, 0.9)  # range of A's eigenvalues (A is symmetric)
    noise: float = 1.0  # innovation std
    corr: float = 0.5  # innovation correlation between any two series
    level: float = 10.0
    amp: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.period < 1:
            raise ValueError(f"SyntheticVAR needs dim >= 1 and period >= 1, got {self.dim}, {self.period}")
        if not 0 <= self.rho[0] <= self.rho[1] < 1:
            raise ValueError(f"rho must satisfy 0 <= lo <= hi < 1 for a stationary process, got {self.rho}")
        rng = np.random.default_rng(self.seed)
        q, _ = np.linalg.qr(rng.normal(size=(self.dim, self.dim)))
        self.A = (q * rng.uniform(*self.rho, size=self.dim)) @ q.T  # (D, D) symmetric
        c = self.corr if self.dim > 1 else 0.0
        self.Sigma = self.noise**2 * ((1 - c) * np.eye(self.dim) + c * np.ones((self.dim, self.dim)))
        self.chol = np.linalg.cholesky(self.Sigma)
        self.levels = self.level * rng.uniform(0.5, 1.5, size=self.dim)
        self.amps = self.amp * rng.uniform(0.5, 1.5, size=self.dim)
        self.phases = rng.uniform(0, 2 * np.pi, size=self.dim)

    def mean_path(self, t: np.ndarray) -> np.ndarray:
        """m_t for integer times t (...,) -> (..., D)."""
        t = np.asarray(t, dtype=np.float64)[..., None]
        return self.levels + self.amps * np.sin(2 * np.pi * t / self.period + self.phases)

    def generate(self, length: int, seed: int = 0, burn_in: int = 200) -> np.ndarray:
        """(length, D) float32 sample path starting at time 0 (after a burn-in from stationarity)."""
        rng = np.random.default_rng(seed)
        e = np.zeros(self.dim)
        out = np.empty((length, self.dim))
        for t in range(-burn_in, length):
            e = self.A @ e + self.chol @ rng.normal(size=self.dim)
            if t >= 0:
                out[t] = e
        return (out + self.mean_path(np.arange(length))).astype(np.float32)

    def forecast_law(self, last: np.ndarray, t_last: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Given x at times t_last (N, D), (N,): means (N, H, D) and covariances (H, D, D)."""
        last = np.asarray(last, dtype=np.float64)
        t_last = np.asarray(t_last)
        dev = last - self.mean_path(t_last)  # (N, D)
        means, covs = [], []
        power, cov = np.eye(self.dim), np.zeros((self.dim, self.dim))
        for h in range(1, horizon + 1):
            cov = cov + power @ self.Sigma @ power.T  # sum_{i<h} A^i Sigma A^iT
            power = self.A @ power
            means.append(self.mean_path(t_last + h) + dev @ power.T)
            covs.append(cov.copy())
        return np.stack(means, 1), np.stack(covs)

    def sample_forecast(self, last: np.ndarray, t_last: np.ndarray, horizon: int, n: int,
                        seed: int = 0) -> np.ndarray:
        """Paths from the true law: (N, n, H, D)."""
        rng = np.random.default_rng(seed)
        dev = np.asarray(last, dtype=np.float64) - self.mean_path(np.asarray(t_last))
        dev = np.repeat(dev[:, None], n, axis=1)  # (N, n, D)
        out = []
        for h in range(1, horizon + 1):
            dev = dev @ self.A.T + rng.normal(size=dev.shape) @ self.chol.T
            out.append(dev + self.mean_path(np.asarray(t_last) + h)[:, None])
        return np.stack(out, 2).astype(np.float32)


def synthetic(dim: int = 8, length: int = 3000, prediction_length: int = 24, test_windows: int = 14,
              period: int = 24, seed: int = 0, **process_kw) -> ForecastDataset:
    """A SyntheticVAR path of `length` training steps plus `test_windows` rolling test windows."""
    proc = SyntheticVAR(dim=dim, period=period, seed=seed, **process_kw)
    series = proc.generate(length + test_windows * prediction_length, seed=seed + 1)
    return _rolling_split(f"synthetic{dim}", series, "H", prediction_length, test_windows, period, process=proc)


# ---------------------------------------------------------------- one entry point

def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def load_dataset(spec: str) -> ForecastDataset:
    """'macrodata[:k=v,...]', 'synthetic[:k=v,...]' or the path of a GluonTS dataset folder
    (options for a folder: 'path:max_target_dim=100,num_test_dates=7')."""
    name, _, opts = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    kw = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"dataset option {item!r} must look like key=value")
        kw[key.strip()] = _parse_value(value.strip())
    try:
        if name == "macrodata":
            return macrodata(**kw)
        if name == "synthetic":
            return synthetic(**kw)
    except TypeError as e:
        raise ValueError(f"bad option for dataset {name!r}: {e}") from e
    if Path(name).is_dir():
        return load_gluonts(name, **kw)
    raise ValueError(f"unknown dataset {spec!r}: expected 'macrodata', 'synthetic' or a GluonTS dataset folder "
                     "(with metadata.json, train/, test/)")


__all__ = ["ForecastDataset", "SyntheticVAR", "load_gluonts", "macrodata", "synthetic", "load_dataset",
           "season_of", "pandas_freq"]
