"""A frame-quality measure for long rollouts that does not depend on the model under test.

Long rollouts driven by random actions have no ground truth to compare with, so drift is
measured as *realism*: how much each generated frame still looks like some real frame of the
same data. Every measure below is computed in pixel space from the data alone: no learned
features (a measure built on the world's own tokenizer would reward a world for agreeing with
itself) and no downloaded network.

Per generated frame:

* ``nn_psnr`` (dB): PSNR against its nearest neighbour in a fixed bank of real frames, both
  area-downsampled to ``size`` x ``size`` (32 by default for 64x64 data). Downsampling makes
  the comparison tolerant of small sprite offsets a plausible frame need not reproduce,
  while layout, palette and large structures still have to match *some* real frame. Noise,
  smeared or garbage frames land far from every bank frame. It is capped at ``psnr_cap``
  (50 dB): exact duplicates (the same level's first screen in the bank and in a rollout)
  would otherwise score 100 dB and dominate every average.
* ``color_tv``: total-variation distance between the frame's colour histogram
  (``hist_bins`` levels per channel) and the closest histogram in the bank: palette drift
  (washed-out, shifted or saturated colours) that can leave coarse structure intact.
* ``sharpness``: root-mean-square finite difference of the full-resolution grey image (an
  RMS, not a mean absolute value, which blur would leave unchanged on monotone edges).
  Blur drives it below what real frames show, noise above; the low-resolution neighbour
  search alone partly hides both.
* ``change`` (per transition): mean absolute difference to the previous frame, in [0, 1].
  A frozen rollout keeps every per-frame measure healthy; this exposes it.

Calibration: the same measures are computed on held-out real frames (episodes disjoint from
the bank). A generated frame counts as *collapsed* when its ``nn_psnr`` falls below, or its
``color_tv`` / ``sharpness`` fall outside, the range of those real frames (``nn_psnr`` and
``color_tv`` are one-sided; the colour limit is never below ``color_tv_floor``, for data drawn
in a few exact colours where real frames sit at 0). How wide "the range" is
(``collapse_rule``):

* ``"calibrated"`` (default): each of the four limits sits at the real frames' quantile
  ``collapse_target / 4`` (so that at most ``collapse_target``, 0.5 %, of the calibration
  frames are flagged by the union of the four, a Bonferroni split), then moves outwards by
  ``collapse_margin`` (0.1) x its distance to the measure's median, a little slack for the
  sampling noise of an extreme quantile. ``reference.collapse_rate`` is the rate on the
  calibration frames (<= 0.5 % by construction). ``reference.collapse_rate_holdout`` is the
  stricter check: the reference episodes split in two halves, limits fitted on one half score
  the other (both ways), i.e. real frames of episodes (levels) the limits never saw. It stays
  high when the store holds few levels, under either rule (docs/evaluation.md has the
  measured figures): the limits hold for the levels of the reference. The price of the wider
  limits: a mildly blurred frame (one 3x3 box blur) can now pass.
* ``"quantile"`` (before issue 16): the central ``1 - 2 * quantile`` range, which flags about
  ``4 * quantile`` (4 %) of real frames by construction.

A rollout counts as *frozen* when its mean change over the last window is below
``frozen_fraction`` of the real frames' median change.

"Same level" (issue 16): a rollout can stay a perfectly CoinRun-looking frame, pass every
measure above, and still *morph* into another level (a dark sky turns yellow-green, walls
change colour). Per generated frame t, against the rollout's OWN context frames:

* ``palette_tv``: total-variation distance between the colour histogram of frame t and the
  mean colour histogram of the context frames (the same ``hist_bins`` levels per channel);
* ``layout_rmse``: RMS difference between frame t and the mean context frame, both
  area-averaged to ``layout_size`` x ``layout_size`` (where the big colour masses are: sky,
  walls, ground; CoinRun scrolls, so this one moves more in real play).

Their reference band is the same statistic on *real long episodes of one level*
(`same_level_reference`: frame t of a real episode vs that episode's first ``context`` frames;
`driftless data coinrun --same-level-frames N` makes such episodes, a level kept across its
restarts): per horizon bin the 50th and 90th percentiles over episodes. `same_level_summary`
gives the headline: ``same_level_score``, the fraction of generated frames in the last
``window`` frames whose ``palette_tv`` lies inside the real episodes' ``score_percentile``
(90th) over the same frames (a world as faithful to its level as real play scores about
0.9; one that morphs into other levels scores near 0), and ``morphed_rate``, the fraction of
rollouts whose mean ``palette_tv`` over that window is above it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

MEASURES = ("nn_psnr", "color_tv", "sharpness")
SAME_LEVEL = ("palette_tv", "layout_rmse")
COLLAPSE_RULES = ("calibrated", "quantile")


@dataclass
class DriftConfig:
    size: int = 32  # frames are area-downsampled to size x size for the nearest-neighbour search
    hist_bins: int = 4  # colour levels per channel (4 -> 64 histogram bins)
    quantile: float = 0.01  # collapse_rule "quantile": real frames outside [q, 1-q] of a measure count as collapsed
    collapse_rule: str = "calibrated"  # calibrated (real frames ~0 % flagged) | quantile (the rule before issue 16)
    collapse_target: float = 0.005  # calibrated: the union of the 4 limits flags at most this of the calibration frames
    collapse_margin: float = 0.1  # calibrated: each limit moved out by this x its distance to the median
    layout_size: int = 4  # same-level layout distance: frames area-averaged to this x this
    score_percentile: float = 90.0  # same_level_score: frames inside this percentile of the real episodes
    band_min_episodes: int = 3  # a real band point needs this many real episodes reaching it
    frozen_fraction: float = 0.1  # frozen: last-window change below this x the real median change
    color_tv_floor: float = 0.02  # never flag a colour distance below this (data with a few exact colours)
    psnr_cap: float = 50.0  # nearest-neighbour PSNR is capped here: above it frames are identical for our purpose
    chunk: int = 512  # query frames per distance matrix

    def __post_init__(self) -> None:
        if self.size < 4 or self.hist_bins < 2 or not 0 <= self.quantile < 0.5:
            raise ValueError(f"DriftConfig needs size >= 4, hist_bins >= 2, 0 <= quantile < 0.5, got {self}")
        if self.collapse_rule not in COLLAPSE_RULES:
            raise ValueError(f"collapse_rule must be one of {COLLAPSE_RULES}, got {self.collapse_rule!r}")
        if not 0 <= self.collapse_target < 1 or self.collapse_margin < 0:
            raise ValueError(f"DriftConfig needs 0 <= collapse_target < 1 and collapse_margin >= 0, got {self}")
        if self.layout_size < 1 or not 0 < self.score_percentile <= 100 or self.band_min_episodes < 1:
            raise ValueError(f"DriftConfig needs layout_size >= 1, 0 < score_percentile <= 100, "
                             f"band_min_episodes >= 1, got {self}")


def _unit(frames, device) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float (n, 3, H, W) in [0, 1] on device."""
    t = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 of shape (n, H, W, 3), got {tuple(t.shape)} {t.dtype}")
    return t.to(device).permute(0, 3, 1, 2).float() / 255.0


def color_hist(x: torch.Tensor, bins: int) -> torch.Tensor:
    """float (n, 3, H, W) in [0, 1] -> (n, bins**3) joint colour histogram (fractions of pixels)."""
    q = (x * bins).long().clamp_(0, bins - 1)  # (n, 3, H, W) levels
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (n, H, W) joint colour bin
    hist = torch.zeros(x.shape[0], bins ** 3, device=x.device)
    hist.scatter_add_(1, idx.flatten(1), torch.ones_like(idx.flatten(1), dtype=hist.dtype))
    return hist / idx[0].numel()


def frame_change(video) -> np.ndarray:
    """uint8 (..., T, H, W, 3) -> mean absolute change between consecutive frames (..., T-1) in [0, 1]."""
    v = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video)
    if v.dtype != torch.uint8 or v.dim() < 4:
        raise ValueError(f"video must be uint8 (..., T, H, W, 3), got {tuple(v.shape)} {v.dtype}")
    d = (v[..., 1:, :, :, :].float() - v[..., :-1, :, :, :].float()).abs() / 255.0
    return d.flatten(-3).mean(-1).cpu().numpy()


class FrameQuality:
    """Measures of realism against a bank of real frames, calibrated on held-out real frames.

    bank: uint8 (N, H, W, 3) real frames; reference: uint8 (M, H, W, 3) real frames from other
    episodes; reference_change: optional (K,) changes between consecutive real frames.
    """

    def __init__(self, bank, reference, cfg: DriftConfig | None = None, device="cpu", reference_change=None,
                 reference_episodes=None):
        self.cfg = cfg or DriftConfig()
        self.device = torch.device(device)
        bank_t = _unit(bank, self.device)
        if bank_t.shape[0] < 1:
            raise ValueError("the frame bank needs at least one frame")
        self.resolution = tuple(bank_t.shape[-2:])
        self.size = min(self.cfg.size, *self.resolution)
        self._bank = self._small(bank_t)  # (N, D)
        self._bank_sq = (self._bank ** 2).sum(1)  # (N,)
        self._bank_hist = self._hist(bank_t)  # (N, K)
        ref = self.measure_raw(reference)
        self.margin = float(self.cfg.collapse_margin) if self.cfg.collapse_rule == "calibrated" else 0.0
        self.thresholds = self.fit_thresholds(ref)
        flagged = self._collapsed(ref)
        self.reference = {
            "frames": int(len(ref["nn_psnr"])),
            "bank_frames": int(self._bank.shape[0]),
            **{f"{k}_median": float(np.median(ref[k])) for k in MEASURES},
            **{f"{k}_mean": float(np.mean(ref[k])) for k in MEASURES},
            "collapse_rate": float(flagged.mean()),
            "collapse_rule": self.cfg.collapse_rule,
            "collapse_margin": self.margin,
            "thresholds": self.thresholds,
        }
        holdout = self._holdout_rate(ref, reference_episodes)
        if holdout is not None:
            self.reference["collapse_rate_holdout"] = holdout
        if reference_change is not None and len(reference_change):
            self.reference["change_median"] = float(np.median(reference_change))
            self.reference["change_mean"] = float(np.mean(reference_change))

    def fit_thresholds(self, ref: dict[str, np.ndarray], margin: float | None = None) -> dict[str, float]:
        """The collapse limits from measures of real frames (the class docstring's rules); margin:
        the calibrated rule's widening (default: the one chosen at construction)."""
        cfg = self.cfg
        q = cfg.quantile if cfg.collapse_rule == "quantile" else cfg.collapse_target / 4
        m = 0.0 if cfg.collapse_rule == "quantile" else (self.margin if margin is None else margin)
        out = {}
        for key, k, side in (("nn_psnr_min", "nn_psnr", -1), ("color_tv_max", "color_tv", 1),
                             ("sharpness_min", "sharpness", -1), ("sharpness_max", "sharpness", 1)):
            edge = float(np.quantile(ref[k], q if side < 0 else 1 - q))
            out[key] = edge + m * (edge - float(np.median(ref[k])))  # widened by m x the median-to-edge distance
        out["color_tv_max"] = max(cfg.color_tv_floor, out["color_tv_max"])
        return out

    def _holdout_rate(self, ref: dict[str, np.ndarray], episodes, margin: float | None = None) -> float | None:
        """Collapse rate of real frames under limits fitted on OTHER episodes: the reference
        episodes split in two halves, each scored with the other's limits (frame-weighted)."""
        if episodes is None:
            return None
        episodes = np.asarray(episodes)
        uniq = np.unique(episodes)
        if len(uniq) < 2 or len(episodes) != len(ref["nn_psnr"]):
            return None
        half = np.isin(episodes, uniq[::2])
        flagged = 0
        for fit, score in ((half, ~half), (~half, half)):
            thr = self.fit_thresholds({k: v[fit] for k, v in ref.items()}, margin)
            flagged += int(self._collapsed({k: v[score] for k, v in ref.items()}, thr).sum())
        return flagged / len(episodes)

    # ---- features ---------------------------------------------------------------------------
    def _small(self, x: torch.Tensor) -> torch.Tensor:
        # (n, 3, H, W) -> area average to (n, 3, size, size) -> (n, D)
        return F.adaptive_avg_pool2d(x, self.size).flatten(1)

    def _hist(self, x: torch.Tensor) -> torch.Tensor:
        return color_hist(x, self.cfg.hist_bins)

    @staticmethod
    def _sharpness(x: torch.Tensor) -> torch.Tensor:
        g = x.mean(1)  # (n, H, W) grey
        dx, dy = g[:, :, 1:] - g[:, :, :-1], g[:, 1:] - g[:, :-1]
        return (0.5 * (dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1))).sqrt()

    @torch.no_grad()
    def measure_raw(self, frames) -> dict[str, np.ndarray]:
        """uint8 (..., H, W, 3) -> {"nn_psnr", "color_tv", "sharpness"} each (...)."""
        arr = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        lead = tuple(arr.shape[:-3])
        if tuple(arr.shape[-3:-1]) != self.resolution:
            raise ValueError(f"frames must be {self.resolution[0]}x{self.resolution[1]} like the bank, "
                             f"got {tuple(arr.shape)}")
        flat = arr.reshape(-1, *arr.shape[-3:])
        out = {k: [] for k in MEASURES}
        for i in range(0, flat.shape[0], self.cfg.chunk):
            x = _unit(flat[i:i + self.cfg.chunk], self.device)
            s = self._small(x)  # (m, D)
            d2 = (s ** 2).sum(1, keepdim=True) + self._bank_sq[None] - 2 * s @ self._bank.T  # (m, N)
            mse = d2.min(1).values.clamp(min=0) / s.shape[1]
            out["nn_psnr"].append((-10 * torch.log10(mse.clamp(min=1e-12))).clamp(max=self.cfg.psnr_cap))
            tv = 0.5 * torch.cdist(self._hist(x), self._bank_hist, p=1)  # (m, N)
            out["color_tv"].append(tv.min(1).values)
            out["sharpness"].append(self._sharpness(x))
        return {k: torch.cat(v).cpu().numpy().reshape(lead) for k, v in out.items()}

    def _collapsed(self, m: dict[str, np.ndarray], thresholds: dict | None = None) -> np.ndarray:
        t = thresholds or self.thresholds
        return ((m["nn_psnr"] < t["nn_psnr_min"]) | (m["color_tv"] > t["color_tv_max"])
                | (m["sharpness"] < t["sharpness_min"]) | (m["sharpness"] > t["sharpness_max"]))

    def measure(self, frames) -> dict[str, np.ndarray]:
        """measure_raw plus "collapsed" (bool) for each frame."""
        m = self.measure_raw(frames)
        m["collapsed"] = self._collapsed(m)
        return m


# ---- curves over the horizon ------------------------------------------------------------------
def _binned(values: np.ndarray, bin_size: int) -> dict[str, list[float]]:
    """values (R, T) -> per-bin mean and quartiles over rollouts and the frames of the bin."""
    r, t = values.shape
    out = {"mean": [], "q25": [], "q75": []}
    for s in range(0, t, bin_size):
        v = values[:, s:s + bin_size].astype(np.float64).reshape(-1)
        out["mean"].append(float(v.mean()))
        out["q25"].append(float(np.quantile(v, 0.25)))
        out["q75"].append(float(np.quantile(v, 0.75)))
    return out


def summarize(per_frame: dict[str, np.ndarray], change: np.ndarray, quality: FrameQuality, bin_size: int = 10,
              window: int = 50) -> dict:
    """Curves and headline numbers of a set of rollouts.

    per_frame: FrameQuality.measure output for generated frames, each (R, T) (frame 1 = the
    first generated frame); change: (R, T) change into each generated frame (from the last
    context frame for the first). window: frames averaged for the first/last figures.
    """
    r, t = per_frame["nn_psnr"].shape
    bin_size = max(1, min(bin_size, t))
    window = max(1, min(window, t))
    centers = [float(s + 1 + (min(s + bin_size, t) - s - 1) / 2) for s in range(0, t, bin_size)]
    curves = {k: _binned(per_frame[k], bin_size) for k in MEASURES}
    curves["collapsed"] = _binned(per_frame["collapsed"].astype(np.float64), bin_size)
    curves["change"] = _binned(change, bin_size)

    def first(k, v=None):
        return float(np.mean((per_frame[k] if v is None else v)[:, :window]))

    def last(k, v=None):
        return float(np.mean((per_frame[k] if v is None else v)[:, -window:]))

    ref = quality.reference
    summary = {
        "rollouts": int(r), "frames": int(t), "window": int(window),
        "nn_psnr_first": first("nn_psnr"), "nn_psnr_last": last("nn_psnr"),
        "color_tv_first": first("color_tv"), "color_tv_last": last("color_tv"),
        "sharpness_first": first("sharpness"), "sharpness_last": last("sharpness"),
        "collapse_rate_first": first("collapsed", per_frame["collapsed"].astype(np.float64)),
        "collapse_rate_last": last("collapsed", per_frame["collapsed"].astype(np.float64)),
        "change_first": first("change", change), "change_last": last("change", change),
    }
    summary["drift_db"] = summary["nn_psnr_first"] - summary["nn_psnr_last"]
    summary["gap_to_real_db"] = ref["nn_psnr_mean"] - summary["nn_psnr_last"]
    if "change_median" in ref:
        frozen = change[:, -window:].mean(1) < quality.cfg.frozen_fraction * ref["change_median"]
        summary["frozen_rate"] = float(frozen.mean())
    return {"horizon": centers, "bin": int(bin_size), "curves": curves, "summary": summary,
            "reference": ref, "config": asdict(quality.cfg)}


# ---- real frames from a store -------------------------------------------------------------------
def sample_frames(store, episodes, n: int, rng: np.random.Generator, consecutive: bool = False,
                  with_episodes: bool = False):
    """n frames drawn uniformly from the given episodes of an EpisodeStore: uint8 (n, H, W, 3);
    with `consecutive`, also each frame's successor: (frames, next_frames); with `with_episodes`,
    the episode of each frame (n,) is appended to what is returned."""
    episodes = np.asarray(episodes, dtype=np.int64)
    lengths = store.episode_lengths[episodes] - (1 if consecutive else 0)
    keep = lengths > 0
    episodes, lengths = episodes[keep], lengths[keep]
    if len(episodes) == 0:
        raise ValueError("no frames to sample: the chosen episodes are empty (or too short for pairs)")
    total = int(lengths.sum())
    flat = np.sort(rng.choice(total, size=min(n, total), replace=False))
    cum = np.cumsum(lengths)
    which = np.searchsorted(cum, flat, side="right")  # index into `episodes`
    offset = flat - np.concatenate([[0], cum[:-1]])[which]
    frames, nxt, ids = [], [], []
    for k in np.unique(which):
        ep = int(episodes[k])
        pos = offset[which == k]
        data = store.frames(ep)
        frames.append(np.asarray(data[pos]))
        ids.append(np.full(len(pos), ep, dtype=np.int64))
        if consecutive:
            nxt.append(np.asarray(data[pos + 1]))
    out = (np.concatenate(frames),) + ((np.concatenate(nxt),) if consecutive else ())
    out += (np.concatenate(ids),) if with_episodes else ()
    return out if len(out) > 1 else out[0]


def quality_from_store(store, cfg: DriftConfig | None = None, bank_size: int = 2048, reference_size: int = 1024,
                       seed: int = 0, device="cpu", exclude_episodes=()) -> tuple[FrameQuality, np.ndarray]:
    """Build a FrameQuality from a store: half of the episodes (at random) feed the bank, the
    other half the held-out reference. Returns it and the reference episodes (where rollouts
    should start, so that no start frame sits in the bank). With a single episode, the bank
    and reference are disjoint frames of it."""
    rng = np.random.default_rng(seed)
    eps = np.setdiff1d(np.arange(store.num_episodes), np.asarray(exclude_episodes, dtype=np.int64))
    eps = eps[store.episode_lengths[eps] >= 2]
    if len(eps) == 0:
        raise ValueError("the store has no episode of 2+ frames to build a frame bank from")
    eps = rng.permutation(eps)
    if len(eps) >= 2:
        bank_eps, ref_eps = eps[: (len(eps) + 1) // 2], eps[(len(eps) + 1) // 2:]
        bank = sample_frames(store, bank_eps, bank_size, rng)
        ref, ref_next, ref_ids = sample_frames(store, ref_eps, reference_size, rng, consecutive=True,
                                               with_episodes=True)
    else:  # one episode: even frames to the bank, odd frames (and their successors) held out
        frames = np.asarray(store.frames(int(eps[0])))
        bank = frames[::2][:bank_size]
        ref, ref_next = frames[1:-1:2][:reference_size], frames[2::2][:reference_size]
        ref_eps, ref_ids = eps, None
    change = frame_change(np.stack([ref, ref_next], axis=1))[:, 0]
    return FrameQuality(bank, ref, cfg, device, reference_change=change, reference_episodes=ref_ids), ref_eps


# ---- same level: distance of each frame to its own context frames ----------------------------------
@torch.no_grad()
def same_level_measures(frames, context, cfg: DriftConfig | None = None, device="cpu") -> dict[str, np.ndarray]:
    """frames uint8 (R, T, H, W, 3), context uint8 (R, C, H, W, 3) (each row's own context) ->
    {"palette_tv": (R, T), "layout_rmse": (R, T)}: colour-histogram TV distance and low-resolution
    RMS distance of every frame to the mean of its row's context frames."""
    cfg = cfg or DriftConfig()
    f = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    c = torch.as_tensor(np.asarray(context) if not isinstance(context, torch.Tensor) else context)
    if f.dim() != 5 or c.dim() != 5 or f.shape[0] != c.shape[0] or f.shape[2:] != c.shape[2:]:
        raise ValueError(f"same_level_measures needs frames (R, T, H, W, 3) and context (R, C, H, W, 3) of the same "
                         f"R, H, W; got {tuple(f.shape)} and {tuple(c.shape)}")
    if c.shape[1] < 1:
        raise ValueError("same_level_measures needs at least one context frame per row")
    r, t = f.shape[:2]
    s = min(cfg.layout_size, *f.shape[2:4])
    ctx = _unit(c.flatten(0, 1), device)  # (R*C, 3, H, W)
    ctx_hist = color_hist(ctx, cfg.hist_bins).unflatten(0, (r, -1)).mean(1)  # (R, K)
    ctx_small = F.adaptive_avg_pool2d(ctx, s).unflatten(0, (r, -1)).mean(1).flatten(1)  # (R, 3*s*s)
    palette, layout = [], []
    step = max(1, cfg.chunk // max(1, r))
    for i in range(0, t, step):
        x = _unit(f[:, i:i + step].flatten(0, 1), device)  # (R*t', 3, H, W)
        n = x.shape[0] // r
        h = color_hist(x, cfg.hist_bins).unflatten(0, (r, n))  # (R, t', K)
        palette.append(0.5 * (h - ctx_hist[:, None]).abs().sum(-1))
        small = F.adaptive_avg_pool2d(x, s).flatten(1).unflatten(0, (r, n))  # (R, t', 3*s*s)
        layout.append((small - ctx_small[:, None]).pow(2).mean(-1).sqrt())
    return {"palette_tv": torch.cat(palette, 1).cpu().numpy(), "layout_rmse": torch.cat(layout, 1).cpu().numpy()}


def same_level_reference(store, horizon: int, context: int = 1, cfg: DriftConfig | None = None,
                         max_episodes: int = 32, device="cpu") -> dict:
    """The same-level statistic on real episodes: for each chosen episode, frames
    context..context+horizon-1 against its first `context` frames. Episodes made as one level
    kept across restarts (info "same_level") come first, then the longest others; each must
    have at least context + 1 frames. Returns {"values": {measure: (E, horizon) with NaN past
    an episode's end}, "episodes": [...], "same_level_episodes": k, "lengths": [...]}."""
    cfg = cfg or DriftConfig()
    lengths = np.asarray(store.episode_lengths)
    eligible = np.flatnonzero(lengths >= context + 1)
    if len(eligible) == 0:
        raise ValueError(f"no episode of {context + 1}+ frames in {store.root} for the same-level reference")
    flagged = np.array([bool(store.info(int(e)).get("same_level")) for e in eligible])
    order = np.lexsort((-lengths[eligible], ~flagged))  # same-level episodes first, then the longest
    chosen = eligible[order][:max_episodes]
    values = {k: np.full((len(chosen), horizon), np.nan) for k in SAME_LEVEL}
    for row, ep in enumerate(chosen):
        ep = int(ep)
        stop = min(int(lengths[ep]), context + horizon)
        frames = np.array(store.frames(ep, 0, stop))  # a copy: torch wants writable arrays
        m = same_level_measures(frames[None, context:], frames[None, :context], cfg, device)
        for k in SAME_LEVEL:
            values[k][row, :stop - context] = m[k][0]
    return {"values": values, "episodes": [int(e) for e in chosen],
            "same_level_episodes": int(flagged[order][:max_episodes].sum()),
            "lengths": [int(lengths[e]) for e in chosen], "context": int(context)}


def _band(values: np.ndarray, bin_size: int, min_rows: int, percentiles=(50.0, 90.0)) -> dict:
    """values (E, T) with NaN -> per bin the percentiles over rows and frames, None where fewer
    than min_rows rows reach the bin's last frame; "episodes": rows that reach it."""
    _, t = values.shape
    out = {f"p{p:g}": [] for p in percentiles}
    out["episodes"] = []
    for s in range(0, t, bin_size):
        v = values[:, s:s + bin_size]
        rows = int((~np.isnan(v[:, -1])).sum())
        out["episodes"].append(rows)
        for p in percentiles:
            out[f"p{p:g}"].append(float(np.nanpercentile(v, p)) if rows >= min_rows else None)
    return out


def same_level_summary(generated: dict[str, np.ndarray], reference: dict, cfg: DriftConfig | None = None,
                       bin_size: int = 10, window: int = 50) -> dict:
    """Curves of the generated same-level measures (each (R, T)), the real band per bin, and the
    headline over the last `window` frames (module docstring): same_level_score, morphed_rate."""
    cfg = cfg or DriftConfig()
    t = generated["palette_tv"].shape[1]
    bin_size, window = max(1, min(bin_size, t)), max(1, min(window, t))
    real = {k: v[:, :t] for k, v in reference["values"].items()}
    if real["palette_tv"].shape[1] < t:  # the reference is shorter than the rollouts: pad with NaN
        real = {k: np.pad(v, [(0, 0), (0, t - v.shape[1])], constant_values=np.nan) for k, v in real.items()}
    pcts = (50.0, cfg.score_percentile) if cfg.score_percentile != 50 else (50.0,)
    out = {"curves": {k: _binned(generated[k], bin_size) for k in SAME_LEVEL},
           "band": {k: _band(real[k], bin_size, cfg.band_min_episodes, pcts) for k in SAME_LEVEL},
           "reference": {"episodes": len(reference["episodes"]), "same_level_episodes": reference["same_level_episodes"],
                         "lengths": reference["lengths"], "context": reference["context"],
                         "frames_covered": int(((~np.isnan(real["palette_tv"])).sum(0) >= cfg.band_min_episodes).sum())},
           "percentile": cfg.score_percentile, "window": int(window)}
    summary = {}
    for k in SAME_LEVEL:
        summary[f"{k}_first"] = float(generated[k][:, :window].mean())
        summary[f"{k}_last"] = float(generated[k][:, -window:].mean())
    last_real = real["palette_tv"][:, -window:]
    reaching = int((~np.isnan(last_real[:, -1])).sum())
    summary["real_episodes_last"] = reaching
    if reaching >= cfg.band_min_episodes:
        rows = ~np.isnan(last_real[:, -1])
        limit = float(np.percentile(last_real[rows], cfg.score_percentile))
        gen_last = generated["palette_tv"][:, -window:]
        summary["palette_tv_real_limit_last"] = limit
        summary["palette_tv_real_median_last"] = float(np.median(last_real[rows]))
        summary["same_level_score"] = float((gen_last <= limit).mean())
        summary["morphed_rate"] = float((gen_last.mean(1) > limit).mean())
        summary["inside_real_band"] = bool(np.median(gen_last) <= limit)
        for k in SAME_LEVEL[1:]:
            summary[f"{k}_real_median_last"] = float(np.median(real[k][:, -window:][rows]))
    else:
        summary["same_level_score"] = None
        summary["reason"] = (f"only {reaching} real episode(s) of {reference['context'] + t}+ frames (need "
                             f"{cfg.band_min_episodes}): make long ones with driftless data coinrun --same-level-frames")
    out["summary"] = summary
    return out
