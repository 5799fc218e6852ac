"""What the keys do: branch the real game and the world from the same states, and compare.

A latent action means what it does. Where the game is available (Procgen), a branch point is a
saved game state reached by a held-action random agent; from it the real game holds each
control (left, right, jump, none) for `frames` frames, and the world, started on the real
frames up to the branch point, holds each latent action for as many frames.

    starts = sample_starts(BranchConfig(starts=32, split="val"))   # real branches of every control
    gen = world_branches(world, starts["context"], range(world.num_actions), 6)
    dist = branch_distances(gen, starts["real"], ...)             # (starts, codes, controls)
    rates = nearest_rates(dist, controls, among=HEADLINE)           # (controls, codes)

`rates[c, a]` is how often the world's branch for latent action `a` is nearer the real branch
of control `c` than those of the other controls in `among`: the controls accuracy of a key of
control `c` mapped to `a` (chance 1/3 for left / right / jump). `fit_by_effect` assigns keys to
latent actions one-to-one by these rates; `controls_accuracy` measures a map on held-out starts.

How branches are compared (`MEASURES`):
* "shift": the scene's motion. The global image shift of every branch frame against the one
  before (best-matching shift of the blurred grey images, `scene_shift`), summed into a
  trajectory of (dy, dx) in pixels from the branch point (`scene_trajectory`); two branches are
  as far apart as their trajectories (mean over frames of the Euclidean distance). In a
  platformer the camera follows the agent: "right" moves the scene left, "jump" moves it down.
  The world's frames are compared with its own reconstruction of the branch-point frame, so the
  tokenizer's blur is not read as motion.
* "pixel": mean squared error of the frames (PSNR's measure).

For worlds learned from video files (no game to branch) `fit_by_motion` reads the scene motion
of each latent action alone (platformer convention above), relative to the average latent
action from the same frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from driftless.world.action_map import KEY_GROUPS

# the Procgen action held for each control (Procgen's combos: 1 LEFT, 7 RIGHT, 5 UP, 4 no-op,
# 2 LEFT+UP, 8 RIGHT+UP; world/action_map.py PROCGEN_GROUPS holds the groups they belong to)
CONTROL_ACTIONS: dict[str, int] = {"left": 1, "right": 7, "jump": 5, "none": 4, "left_jump": 2, "right_jump": 8}
HEADLINE = ("left", "right", "jump")  # the controls accuracy's headline (chance 1/3)
PRIMARY = HEADLINE + ("none",)
COMBOS = ("left_jump", "right_jump")
MEASURES = ("shift", "pixel")
SHIFT_RANGE = 10  # pixels searched each way for a frame's shift against the branch point
SHIFT_BLUR = 1.5  # Gaussian sigma (pixels) applied to both images before matching
# scene motion (dy, dx) a control causes in a platformer whose camera follows the agent
MOTION_DIRECTIONS: dict[str, tuple[float, float]] = {"left": (0.0, 1.0), "right": (0.0, -1.0), "jump": (1.0, 0.0)}


@dataclass
class BranchConfig:
    """Where the branch points come from and how long each branch is."""

    starts: int = 32  # game states branched
    frames: int = 8  # frames each control / latent action is held
    context: int = 4  # real frames up to the branch point that the world starts from
    warmup_min: int = 8  # frames the held-action random agent plays before a branch point: at least
    warmup_max: int = 64  # and at most (uniform in between, per start)
    warmup_forward: float = 0.5  # share of the warm-up agent's draws that move right (into the level)
    settle: int = 6  # no-op frames ending the warm-up, so that the agent has landed where it can act
    split: str = "val"  # Procgen level split (fit: val; evaluation: test)
    game: str = "coinrun"
    mode: str = "hard"
    seed: int = 0
    measure: str = "shift"
    batch_size: int = 64  # world rollouts per forward pass

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {self.measure!r}")
        if self.starts < 1 or self.frames < 1 or self.context < 1 or self.batch_size < 1:
            raise ValueError("starts, frames, context and batch_size must be >= 1")
        if not self.context <= self.warmup_min <= self.warmup_max:
            raise ValueError(f"need context <= warmup_min <= warmup_max, got {self.context}, {self.warmup_min}, "
                             f"{self.warmup_max}")


# ---------------------------------------------------------------------------- real game
def sample_starts(cfg: BranchConfig, controls=tuple(CONTROL_ACTIONS)) -> dict:
    """`cfg.starts` branch points of random levels of `cfg.split`, each with the real game's
    branch for every control. A start whose episode ends within any branch (death, the coin) is
    replaced by another. Returns {"context": uint8 (n, T0, H, W, 3), "real": uint8 (n, C,
    frames, H, W, 3), "controls": [...], "levels": [...], "warmup": [...]}."""
    from driftless.data.coinrun import HELD, RandomAgent, make_env

    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5EED]))
    control_actions = [CONTROL_ACTIONS[c] for c in controls]
    got: dict[str, list] = {"context": [], "real": [], "levels": [], "warmup": []}
    for _attempt in range(20):
        need = cfg.starts - len(got["context"])
        if need <= 0:
            break
        m = need + max(2, need // 4)  # a few spare envs for the starts that end in a branch
        env = make_env(m, cfg.split, int(rng.integers(2**31 - 1)), cfg.mode, cfg.game)
        agent = RandomAgent(m, rng, HELD, weights=_forward_weights(cfg.warmup_forward))
        warm = rng.integers(cfg.warmup_min, cfg.warmup_max + 1, size=m) + cfg.settle
        _, obs, _ = env.observe()
        history = [[f] for f in obs["rgb"]]  # frames since each env's episode began
        states: list = [None] * m
        context: list = [None] * m
        levels = [int(i["level_seed"]) for i in env.get_info()]
        for t in range(1, int(warm.max()) + 1):
            step = agent()
            step[t > warm - cfg.settle] = CONTROL_ACTIONS["none"]
            env.act(step)
            _, obs, first = env.observe()
            info = env.get_info() if first.any() else None
            for i in range(m):
                if first[i]:
                    history[i] = []
                    levels[i] = int(info[i]["level_seed"])
                history[i] = (history[i] + [obs["rgb"][i]])[-cfg.context:]
            due = [i for i in range(m) if warm[i] == t and len(history[i]) == cfg.context]
            if due:
                saved = env.callmethod("get_state")
                for i in due:
                    states[i], context[i] = saved[i], np.stack(history[i])
        ok = np.array([s is not None for s in states])
        if not ok.any():
            env.close()
            continue
        filler = states[int(np.argmax(ok))]
        real = np.zeros((m, len(control_actions), cfg.frames) + obs["rgb"].shape[1:], np.uint8)
        for ci, a in enumerate(control_actions):
            env.callmethod("set_state", [s if s is not None else filler for s in states])
            for j in range(cfg.frames):
                env.act(np.full(m, a, dtype=np.int32))
                _, o, first = env.observe()
                real[:, ci, j] = o["rgb"]
                ok &= ~first  # the episode ended inside this branch
        env.close()
        for i in np.flatnonzero(ok)[:need]:
            got["context"].append(context[i])
            got["real"].append(real[i])
            got["levels"].append(levels[i])
            got["warmup"].append(int(warm[i]))
    if len(got["context"]) < cfg.starts:
        raise RuntimeError(f"found only {len(got['context'])} of {cfg.starts} branch points in {cfg.game} "
                           f"{cfg.split}")
    return {"context": np.stack(got["context"]), "real": np.stack(got["real"]), "controls": list(controls),
            "levels": got["levels"], "warmup": got["warmup"], "config": asdict(cfg)}


def _forward_weights(forward: float) -> np.ndarray:
    """Procgen action probabilities with `forward` of the mass on the right-moving actions (6, 7,
    8), the rest uniform: a warm-up agent that gets away from the level's left edge, where the
    camera is clamped and "left" moves nothing."""
    from driftless.data.coinrun import NUM_ACTIONS

    right = [6, 7, 8]
    w = np.full(NUM_ACTIONS, (1 - forward) / (NUM_ACTIONS - len(right)))
    w[right] = forward / len(right)
    return w


# ---------------------------------------------------------------------------- world
def world_branches(world, context: np.ndarray, codes, frames: int, seed: int = 0, batch_size: int = 64,
                   progress: bool = False, **sampling) -> np.ndarray:
    """The world's branch of every latent action in `codes` from every context: uint8
    (n, len(codes), frames, H, W, 3). Rollouts are batched `batch_size` at a time."""
    codes = [int(a) for a in codes]
    n = len(context)
    pairs = [(i, a) for i in range(n) for a in codes]  # start-major
    out = np.zeros((n * len(codes), frames) + tuple(context.shape[2:]), np.uint8)
    chunks = range(0, len(pairs), batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="world branches", unit="batch")
    for ci, lo in enumerate(chunks):
        part = pairs[lo:lo + batch_size]
        ctx = context[[i for i, _ in part]]  # (b, T0, H, W, 3)
        acts = np.array([[a] * frames for _, a in part], dtype=np.int64)  # (b, frames)
        video = world.rollout(ctx, acts, seed=seed * 1_000_003 + ci, **sampling)
        out[lo:lo + len(part)] = video[:, ctx.shape[1]:]
    return out.reshape((n, len(codes)) + out.shape[1:])


def reconstructed_reference(world, context: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The world's own rendering (tokenizer round trip) of each context's last frame: uint8 (n, H, W, 3)."""
    out = []
    for lo in range(0, len(context), batch_size):
        out.append(world.decode(world.encode(context[lo:lo + batch_size]))[:, -1])
    return np.concatenate(out)


# ---------------------------------------------------------------------------- measures
def scene_shift(reference: np.ndarray, frames: np.ndarray, max_shift: int = SHIFT_RANGE,
                blur: float = SHIFT_BLUR) -> np.ndarray:
    """Global shift (dy, dx) in pixels of each frame against its reference: the integer shift
    within +-max_shift minimising the mean squared difference of the two grey images (both
    blurred alike, so a blurry world and the sharp game are read the same way) on the central
    region, refined to sub-pixel by a parabola through the neighbours. Content that moved right by
    2 px gives dx = +2. reference uint8 (..., H, W, 3), frames (..., T, H, W, 3) -> float (..., T, 2)."""
    from scipy.ndimage import gaussian_filter

    def grey(x):
        g = np.asarray(x, dtype=np.float32).mean(-1)
        return gaussian_filter(g, sigma=[0] * (g.ndim - 2) + [blur, blur]) if blur else g

    cur = grey(frames)
    ref = np.broadcast_to(grey(reference)[..., None, :, :], cur.shape)
    lead, (h, w) = cur.shape[:-2], cur.shape[-2:]
    ref, cur = ref.reshape((-1, h, w)), cur.reshape((-1, h, w))
    m = max_shift
    a = cur[:, m:h - m, m:w - m]
    err = np.empty((len(cur), 2 * m + 1, 2 * m + 1), np.float32)
    for i, dy in enumerate(range(-m, m + 1)):  # frame(y, x) ~ reference(y - dy, x - dx)
        for j, dx in enumerate(range(-m, m + 1)):
            err[:, i, j] = ((a - ref[:, m - dy:h - m - dy, m - dx:w - m - dx]) ** 2).mean((-2, -1))
    iy, ix = np.unravel_index(err.reshape(len(err), -1).argmin(-1), err.shape[1:])
    rows = np.arange(len(err))

    def refine(lo, mid, hi):  # vertex of the parabola through three error values, in [-0.5, 0.5]
        den = lo - 2 * mid + hi
        ok = den > 1e-9
        return np.where(ok, np.clip(0.5 * (lo - hi) / np.where(ok, den, 1.0), -0.5, 0.5), 0.0)

    cy, cx = np.clip(iy, 1, 2 * m - 1), np.clip(ix, 1, 2 * m - 1)
    fy = np.where((iy > 0) & (iy < 2 * m), refine(err[rows, cy - 1, ix], err[rows, iy, ix], err[rows, cy + 1, ix]), 0)
    fx = np.where((ix > 0) & (ix < 2 * m), refine(err[rows, iy, cx - 1], err[rows, iy, ix], err[rows, iy, cx + 1]), 0)
    out = np.stack([iy - m + fy, ix - m + fx], axis=-1).astype(np.float64)
    return out.reshape(lead + (2,))


def scene_trajectory(reference: np.ndarray, frames: np.ndarray, max_shift: int = SHIFT_RANGE) -> np.ndarray:
    """Cumulative scene motion (dy, dx) of a branch from its branch-point frame: the sum of the
    frame-to-frame shifts (`scene_shift`), so that fast motion (a jump moves CoinRun's scene 7+
    px a frame) is not capped by the search range. reference (..., H, W, 3), frames (..., T, H,
    W, 3) -> float (..., T, 2)."""
    prev = np.concatenate([np.asarray(reference)[..., None, :, :, :], frames[..., :-1, :, :, :]], axis=-4)
    steps = scene_shift(prev.reshape((-1,) + prev.shape[-3:]), frames.reshape((-1, 1) + frames.shape[-3:]),
                        max_shift)
    return np.cumsum(steps.reshape(frames.shape[:-3] + (2,)), axis=-2)


def branch_distances(gen: np.ndarray, real: np.ndarray, measure: str = "shift", gen_reference: np.ndarray | None = None,
                     real_reference: np.ndarray | None = None) -> np.ndarray:
    """Distance of every generated branch to every real branch of the same start.
    gen uint8 (n, A, k, H, W, 3), real uint8 (n, C, k, H, W, 3) -> float (n, A, C).
    "shift" needs the branch-point frames: real_reference (n, H, W, 3) for the real branches and
    gen_reference (n, H, W, 3) (the world's rendering of it) for the generated ones."""
    if measure == "pixel":
        g = gen.astype(np.float32)[:, :, None]  # (n, A, 1, k, H, W, 3)
        r = real.astype(np.float32)[:, None]  # (n, 1, C, k, H, W, 3)
        return ((g - r) ** 2).mean(axis=(3, 4, 5, 6)).astype(np.float64)
    if measure != "shift":
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if gen_reference is None or real_reference is None:
        raise ValueError("the shift measure needs the branch-point frames (gen_reference, real_reference)")
    tg = scene_trajectory(np.broadcast_to(gen_reference[:, None], gen.shape[:2] + gen.shape[3:]), gen)  # (n, A, k, 2)
    tr = scene_trajectory(np.broadcast_to(real_reference[:, None], real.shape[:2] + real.shape[3:]), real)
    return np.linalg.norm(tg[:, :, None] - tr[:, None], axis=-1).mean(-1)  # (n, A, C)


def nearest_rates(dist: np.ndarray, controls, among=HEADLINE) -> np.ndarray:
    """rates (len(among), A): for each control c of `among` and latent action a, the fraction of
    starts where a's branch is nearer c's real branch than every other control's in `among`
    (ties share the credit). dist (n, A, C) over `controls`."""
    idx = [list(controls).index(c) for c in among]
    d = dist[:, :, idx]  # (n, A, K)
    best = d.min(-1, keepdims=True)
    win = np.isclose(d, best, rtol=1e-9, atol=1e-12).astype(np.float64)
    win /= win.sum(-1, keepdims=True)
    return win.mean(0).T  # (K, A)


# ---------------------------------------------------------------------------- assignment
def assign_one_to_one(scores: np.ndarray, rows, exclude=()) -> dict[str, int]:
    """Rows (controls) -> distinct columns (latent actions) maximising the summed score
    (scipy's linear_sum_assignment); columns in `exclude` are not used."""
    from scipy.optimize import linear_sum_assignment

    scores = np.asarray(scores, dtype=np.float64)
    cols = [a for a in range(scores.shape[1]) if a not in set(exclude)]
    if len(rows) > len(cols):
        raise ValueError(f"{len(rows)} controls cannot get distinct latent actions out of {len(cols)}")
    r, c = linear_sum_assignment(-scores[:, cols])
    return {rows[i]: int(cols[j]) for i, j in zip(r, c)}


def keys_of(groups: dict[str, int], key_groups: dict[str, str] = KEY_GROUPS) -> dict[str, int]:
    return {k: groups[g] for k, g in key_groups.items() if g in groups}


def assign_controls(rates3: np.ndarray, rates4: np.ndarray, rates6: np.ndarray | None = None) -> dict[str, int]:
    """The map fitted by effect, one control per latent action: left / right / jump jointly by
    their 3-way rates; then "none" by its 4-way rate among the latent actions left; then
    left_jump / right_jump (6-way rates) where they beat chance (1/6) on a latent action left."""
    groups = assign_one_to_one(rates3, list(HEADLINE))
    used = set(groups.values())
    free = [a for a in range(rates4.shape[1]) if a not in used]
    if free:
        groups["none"] = max(free, key=lambda a: rates4[PRIMARY.index("none"), a])
    if rates6 is not None and rates6.shape[1] - len(groups) >= len(COMBOS):
        rows = rates6[len(PRIMARY):]  # (2, A)
        got = assign_one_to_one(rows, list(COMBOS), exclude=set(groups.values()))
        groups.update({c: a for c, a in got.items() if rows[COMBOS.index(c), a] > 1 / 6})
    return groups


# ---------------------------------------------------------------------------- fits
def measure_starts(world, starts: dict, codes=None, measure: str = "shift", seed: int = 0, batch_size: int = 64,
                   progress: bool = False, gen: np.ndarray | None = None, **sampling) -> dict:
    """Roll the world out from every start with every latent action in `codes` (default all)
    and compare with the real branches: {"codes", "dist" (n, A, C), "gen" uint8 (n, A, k, H, W, 3),
    "motion" (A, 2) mean scene shift (dy, dx) at the last frame, "rates3" / "rates4" / "rates6"}."""
    codes = list(range(world.num_actions)) if codes is None else [int(a) for a in codes]
    k = starts["real"].shape[2]
    if gen is None:
        gen = world_branches(world, starts["context"], codes, k, seed=seed, batch_size=batch_size,
                             progress=progress, **sampling)
    ref_gen = reconstructed_reference(world, starts["context"], batch_size)
    traj = scene_trajectory(np.broadcast_to(ref_gen[:, None], gen.shape[:2] + gen.shape[3:]), gen)  # (n, A, k, 2)
    if measure == "shift":
        last = starts["context"][:, -1]
        real_traj = scene_trajectory(np.broadcast_to(last[:, None], starts["real"].shape[:2] + last.shape[1:]),
                                     starts["real"])  # (n, C, k, 2)
        dist = np.linalg.norm(traj[:, :, None] - real_traj[:, None], axis=-1).mean(-1)  # (n, A, C)
    else:
        dist = branch_distances(gen, starts["real"], measure)
    controls = starts["controls"]
    out = {"codes": codes, "dist": dist, "gen": gen, "measure": measure, "motion": traj[:, :, -1].mean(0)}
    out["rates3"] = nearest_rates(dist, controls, HEADLINE)
    if "none" in controls:
        out["rates4"] = nearest_rates(dist, controls, PRIMARY)
    if all(c in controls for c in COMBOS):
        out["rates6"] = nearest_rates(dist, controls, PRIMARY + COMBOS)
    return out


def key_accuracy(rates3: np.ndarray, codes, keys: dict[str, int]) -> dict:
    """Controls accuracy of a key map from the 3-way rates of `codes`: per key of left / right /
    jump, the fraction of starts its latent action's branch is nearest its control's real one;
    per control (the mean of its keys) and the mean over the controls."""
    codes = [int(a) for a in codes]
    per_key = {}
    for key, group in KEY_GROUPS.items():
        if group in HEADLINE and key in keys and int(keys[key]) in codes:
            per_key[key] = float(rates3[HEADLINE.index(group), codes.index(int(keys[key]))])
    per_control = {}
    for c in HEADLINE:
        vals = [v for k, v in per_key.items() if KEY_GROUPS[k] == c]
        per_control[c] = float(np.mean(vals)) if vals else None
    known = [v for v in per_control.values() if v is not None]
    return {"keys": per_key, "controls": per_control, "mean": float(np.mean(known)) if known else None,
            "chance": 1 / len(HEADLINE)}


def key_accuracy_interval(dist: np.ndarray, controls, codes, keys: dict[str, int], level: float = 0.95,
                          resamples: int = 2000, seed: int = 0) -> dict:
    """How far the controls accuracy of `keys` could move on other starts: a percentile bootstrap
    over the starts of dist (n, A, C). {"mean": [lo, hi], "controls": {c: [lo, hi]}, "level",
    "resamples"}; a few dozen starts give intervals of about +-0.1 (each start is one trial per key)."""
    n = dist.shape[0]
    rng = np.random.default_rng(seed)
    means, per = [], {c: [] for c in HEADLINE}
    for _ in range(resamples):
        acc = key_accuracy(nearest_rates(dist[rng.integers(0, n, n)], controls), codes, keys)
        if acc["mean"] is not None:
            means.append(acc["mean"])
        for c, v in acc["controls"].items():
            if v is not None:
                per[c].append(v)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def band(vals):
        return [float(v) for v in np.percentile(vals, q)] if vals else None

    return {"mean": band(means), "controls": {c: band(v) for c, v in per.items()}, "level": level,
            "resamples": resamples}


def effect_evidence(m: dict) -> dict:
    """The JSON evidence of a measurement: scores of every key x latent action (3-way rates for
    the keys of left / right / jump, the 4-way "none" rate for ArrowDown), what every latent
    action looks like (4-way rates per control) and its mean scene motion."""
    scores = {}
    for key, group in KEY_GROUPS.items():
        if group in HEADLINE:
            scores[key] = [round(float(v), 4) for v in m["rates3"][HEADLINE.index(group)]]
        elif group == "none" and "rates4" in m:
            scores[key] = [round(float(v), 4) for v in m["rates4"][PRIMARY.index("none")]]
    out = {"scores": scores, "codes": list(m["codes"]),
           "motion": [[round(float(v), 2) for v in dydx] for dydx in m["motion"]]}
    if "rates4" in m:
        out["effects"] = {c: [round(float(v), 4) for v in m["rates4"][i]] for i, c in enumerate(PRIMARY)}
    return out


def fit_by_effect(world, cfg: BranchConfig | None = None, progress: bool = False, **sampling) -> tuple[dict, dict]:
    """Keys -> latent actions by what each latent action does in the world against what each
    control does in the real game (Procgen), on `cfg.starts` branch points of `cfg.split`:
    one-to-one by the controls rates (`assign_controls`). Returns (the action map's fields:
    method, keys, groups, scores, effects, motion, fit; the measurement with its arrays)."""
    cfg = cfg or BranchConfig()
    starts = sample_starts(cfg)
    m = measure_starts(world, starts, measure=cfg.measure, seed=cfg.seed, batch_size=cfg.batch_size,
                       progress=progress, **sampling)
    groups = assign_controls(m["rates3"], m["rates4"], m.get("rates6"))
    keys = keys_of(groups)
    action_map = {"method": "effect", "keys": keys, "groups": groups, **effect_evidence(m),
                  "fit": {**asdict(cfg), "accuracy": key_accuracy(m["rates3"], m["codes"], keys)}}
    action_map["scores_note"] = (
        f"fraction of {cfg.starts} {cfg.game} {cfg.split} branch points where the latent action's {cfg.frames}-frame "
        f"branch is nearest ({cfg.measure} measure) the real branch of the key's control, among left/right/jump "
        f"(ArrowDown: among none/left/right/jump)")
    return action_map, {"starts": starts, **m}


def fit_by_motion(world, context: np.ndarray, frames: int = 8, seed: int = 0, batch_size: int = 64,
                  progress: bool = False, **sampling) -> tuple[dict, dict]:
    """Keys -> latent actions without a game (worlds learned from video files): roll every
    latent action out from real `context` clips uint8 (n, T0, H, W, 3) and read the scene's
    motion, relative to the average latent action from the same frames. A platformer's camera
    follows the agent (`MOTION_DIRECTIONS`): "right" is the latent action moving the scene
    left most, "left" right, "jump" down (one-to-one); "none" the one moving it least."""
    codes = list(range(world.num_actions))
    gen = world_branches(world, context, codes, frames, seed=seed, batch_size=batch_size, progress=progress,
                         **sampling)
    ref = reconstructed_reference(world, context, batch_size)
    traj = scene_trajectory(np.broadcast_to(ref[:, None], gen.shape[:2] + gen.shape[3:]), gen).mean(2)  # (n, A, 2)
    rel = traj - traj.mean(1, keepdims=True)  # against the average latent action
    scores = np.stack([rel @ np.asarray(MOTION_DIRECTIONS[c]) for c in HEADLINE], 1).mean(0)  # (3, A) px
    groups = assign_one_to_one(scores, list(HEADLINE))
    free = [a for a in codes if a not in groups.values()]
    still = np.linalg.norm(traj, axis=-1).mean(0)  # (A,) px of motion
    if free:
        groups["none"] = min(free, key=lambda a: still[a])
    keys = keys_of(groups)
    key_scores = {k: [round(float(v), 3) for v in scores[HEADLINE.index(g)]] for k, g in KEY_GROUPS.items()
                  if g in HEADLINE}
    key_scores["ArrowDown"] = [round(-float(v), 3) for v in still]
    action_map = {"method": "motion", "keys": keys, "groups": groups, "scores": key_scores, "codes": codes,
                  "motion": [[round(float(v), 2) for v in dydx] for dydx in traj.mean(0)],
                  "fit": {"starts": int(len(context)), "frames": frames, "context": int(context.shape[1]),
                          "seed": seed},
                  "scores_note": ("pixels per frame the latent action moves the scene in the key's direction "
                                  "(camera follows the agent: right = scene moving left, jump = scene moving down), "
                                  "relative to the average latent action; ArrowDown: minus its motion")}
    return action_map, {"gen": gen, "codes": codes, "context": context}


# ---------------------------------------------------------------------------- previews
def write_previews(folder, context: np.ndarray, gen: np.ndarray, codes, rows: int = 2, gap: int = 2) -> dict:
    """One PNG per latent action in `folder`: for the first `rows` starts, a row of the last
    context frame and the world's branch holding that action. context (n, T0, H, W, 3), gen (n,
    A, k, H, W, 3). Returns {code (str): file name}."""
    from pathlib import Path

    from driftless.checkpoint import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    r = min(rows, len(context))
    h = context.shape[2]
    names = {}
    for j, a in enumerate(codes):
        lines = [np.concatenate([context[i, -1]] + list(gen[i, j]), axis=1) for i in range(r)]  # (H, (k+1)W, 3)
        img = np.full((r * (h + gap) - gap, lines[0].shape[1], 3), 255, np.uint8)
        for i, line in enumerate(lines):
            img[i * (h + gap):i * (h + gap) + h] = line
        names[str(int(a))] = f"action-{int(a)}.png"
        atomic_write_bytes(folder / names[str(int(a))], preview_png(img))
    return names


def preview_png(img: np.ndarray) -> bytes:
    """A preview strip as a small PNG: 256-colour palette (median cut, no dithering), about half
    the bytes of RGB and 38 dB from it on the shipped world's strips: the strips ship with the
    world, which must stay within 16 MB."""
    import io

    from PIL import Image

    pal = Image.fromarray(np.asarray(img, np.uint8)).quantize(256, method=Image.Quantize.MEDIANCUT,
                                                               dither=Image.Dither.NONE)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
