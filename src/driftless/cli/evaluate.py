"""driftless eval WORLD --data DIR [--split test] [--size auto|quick|full | --full] [--json out.json] [--plots DIR]"""

from __future__ import annotations

import argparse
import json

from driftless.eval.evaluate import ACTION_MODES, PARTS, QUICK, SIZES, EvalConfig
from driftless.runtime import default_device

EPILOG = """\
what is measured (see docs/benchmarks.md, "Evaluation"):
  recon     tokenizer reconstruction PSNR/SSIM on --recon-len-frame clips
  rollout   GenieRedux protocol: --context real frames, then --horizon generated frames with
            actions the LAM infers from the real clip (or true actions); PSNR/SSIM per step;
            Delta_t PSNR against uniformly random actions with the same seed (t = --delta-t);
            motion following: how far the world shifts the scene (sideways, vertically) where
            the real clip moved, under the same actions (1 = as far, 0 = standing still)
  drift     --drift-rollouts rollouts of --drift-frames frames with random actions, scored by a
            model-independent realism measure against a bank of real frames, and by their palette
            distance to their own context ("same level") against real long episodes of the store
            (driftless data coinrun --same-level-frames 1100 adds them)
  actions   latent-action usage and perplexity; action-map accuracy where true actions exist
  controls  from --controls-starts held-out game states (Procgen), the real game's branch for each
            control vs the world's branch for its key: per-key accuracy (chance 1/3 for left /
            right / jump); needs a world whose map or store names a Procgen game
  fvd       Frechet Video Distance, only with --i3d PATH (nothing is downloaded)

sizes (--size): full is the protocol of every published figure (256 clips, 16 rollouts of 1000
frames, ...); quick (16 clips, 2 rollouts of 200 frames, smaller drift bank) takes about 2 minutes
for the shipped world on a 2-core CPU. auto (default) = full on CUDA, quick elsewhere; --full is
--size full. A flag given explicitly (e.g. --clips 64) wins over the size.

examples:
  driftless eval runs/world --data data/coinrun --split test --json eval.json --plots eval_plots
  driftless eval runs/world --data data/coinrun-test --full                 (the full protocol on a CPU: ~1 h)
  driftless eval runs/world --data data/coinrun-test --clips 64 --drift-frames 200 --skip fvd
  driftless eval runs/world --data data/coinrun-test --i3d weights/i3d_torchscript.pt --device cuda --bf16
"""


def _summary(result: dict) -> list[str]:
    lines = []
    r = result.get("reconstruction")
    if r:
        lines.append(f"tokenizer   PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.3f}  ({r['clips']} clips x "
                     f"{r['frames_per_clip']} frames)")
    r = result.get("rollout")
    if r:
        lines.append(f"rollout     PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.3f}  ({r['actions']} actions, "
                     f"{r['context']} context + {r['horizon']} frames, {r['clips']} clips; copy-last "
                     f"{r['copy_last']['psnr']:.2f} dB)")
    d = result.get("delta")
    if d:
        lines.append(f"delta_t     Δ_{d['t']} PSNR {d['delta_psnr']:+.3f} dB")
    m = (r or {}).get("motion_following")
    if m:
        way = "" if m["same_way"] is None else (f"; same way on {m['same_way']:.0%} of the "
                                                f"{m['moving_clips']} clips that moved >= {m['moving_px']:g} px")
        def times(v):  # None: the real clips did not move along that axis
            return "n/a" if v is None else f"x{v:.2f}"

        lines.append(f"motion      follows the real scene shift {times(m['sideways'])} sideways, {times(m['vertical'])} "
                     f"vertically (1 = as far; {m['world_sideways_px']:.1f} of {m['real_sideways_px']:.1f} px "
                     f"sideways at the last step){way}")
    d = result.get("drift")
    if d:
        s = d["summary"]
        lines.append(f"drift       NN-PSNR {s['nn_psnr_first']:.2f} -> {s['nn_psnr_last']:.2f} dB over {s['frames']} "
                     f"frames (real {d['reference']['nn_psnr_mean']:.2f}); collapsed at end "
                     f"{s['collapse_rate_last']:.1%} (real frames {d['reference']['collapse_rate']:.1%}"
                     + (f", unseen episodes {d['reference']['collapse_rate_holdout']:.1%}"
                        if d["reference"].get("collapse_rate_holdout") is not None else "") + ")")
        sl = d.get("same_level") or {}
        ss = sl.get("summary", {})
        if ss.get("same_level_score") is not None:
            lines.append(f"same level  score {ss['same_level_score']:.2f} (last {sl['window']} frames inside the real "
                         f"long episodes' p{sl['percentile']:g}; real play ~{sl['percentile'] / 100:.2f}); palette "
                         f"distance to the context {ss['palette_tv_first']:.3f} -> {ss['palette_tv_last']:.3f} (real "
                         f"median {ss['palette_tv_real_median_last']:.3f}, p{sl['percentile']:g} "
                         f"{ss['palette_tv_real_limit_last']:.3f}); morphed rollouts {ss['morphed_rate']:.0%}")
        elif sl:
            lines.append(f"same level  not scored: {sl.get('reason') or ss.get('reason')}")
    a = result.get("latent_actions")
    if a:
        lines.append(f"actions     usage {a['usage']:.2f}  perplexity {a['perplexity']:.2f}")
    m = result.get("action_map")
    if m and m.get("available"):
        ship = m.get("shipped", {}).get("accuracy")
        lines.append(f"action map  refit accuracy {m['refit']['accuracy']:.3f} (majority "
                     f"{m['refit']['majority_baseline']:.3f})"
                     + (f", shipped map {ship:.3f}" if ship is not None else ""))
    c = result.get("controls")
    if c and c.get("available"):
        a = c["accuracy"]
        per = ", ".join(f"{k} {v:.2f}" for k, v in a["controls"].items() if v is not None)
        ci = (c.get("accuracy_ci") or {}).get("mean")
        lines.append(f"controls    {per}; mean " + (f"{a['mean']:.3f}" if a["mean"] is not None else "–")
                     + (f" (95 % interval over states {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
                     + f" (chance {a['chance']:.3f}; best one-to-one map {c['best_accuracy']['mean']:.3f}; "
                       f"{c['starts']} states, {c['frames']} frames)")
    f = result.get("fvd")
    if f and f.get("fvd") is not None:
        lines.append(f"fvd         {f['fvd']:.2f} ({f['real_clips']} clips of {f['frames']} frames)")
    return lines


def _sizes(cfg: EvalConfig) -> str:
    return (f"{cfg.clips} clips, {cfg.recon_clips} reconstruction clips, {cfg.drift_rollouts} drift rollouts x "
            f"{cfg.drift_frames} frames, {cfg.action_clips} action clips, {cfg.controls_starts} controls states")


def _default(name: str) -> str:
    """Help text for a flag whose default depends on --size."""
    full = getattr(EvalConfig(), name)
    return f"default {QUICK[name]} quick, {full} full" if name in QUICK else f"default {full}"


SAMPLING_FLAGS = ("steps", "eta", "cfg_scale", "cfg_steps", "context_level", "temperature", "window",
                  "history_guidance", "fused_commit")


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The world sampling options given on the command line ({} = the world's own), checked
    before anything is loaded: a value out of range raises ValueError naming the flag."""
    from driftless.world.world import SamplingOptions

    given = {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k, None) is not None}
    try:
        SamplingOptions(**given)  # the same checks the world applies (ranges, finite numbers)
    except ValueError as e:
        name = next((k for k in given if f"option {k} " in str(e)), None)
        flag = f"--{name.replace('_', '-')}: " if name else ""
        raise ValueError(f"{flag}{e}") from None
    return given


def _run(args: argparse.Namespace) -> int:
    import torch

    from driftless.checkpoint import atomic_write_json
    from driftless.eval.evaluate import evaluate, resolve_store, sized_config
    from driftless.world.world import load

    if args.threads:
        torch.set_num_threads(args.threads)
    skip = [s for s in (args.skip or "").split(",") if s]
    sampling = sampling_overrides(args)
    device = default_device(args.device)
    cfg = sized_config(
        "full" if args.full else args.size, device,
        split=args.split, clips=args.clips, context=args.context, horizon=args.horizon, delta_t=args.delta_t,
        actions=args.actions, recon_clips=args.recon_clips, recon_len=args.recon_len,
        drift_frames=args.drift_frames, drift_rollouts=args.drift_rollouts, drift_bin=args.drift_bin,
        drift_window=args.drift_window, strip_every=args.strip_every, bank_size=args.bank_size,
        action_clips=args.action_clips, controls_starts=args.controls_starts, controls_frames=args.controls_frames,
        fvd_frames=args.fvd_frames, fvd_size=args.fvd_size,
        batch_size=args.batch_size, seed=args.seed,
        precision="bf16" if args.bf16 else "fp32", sampling=sampling, skip=skip, progress=not args.no_progress)
    world = load(args.world, device=device)
    if world.dynamics is not None:
        world._options(world.sampling, sampling)  # against this world (context_level <= its noise levels), up front
    if world.dynamics is None:  # a lone tokenizer: only its reconstruction can be measured
        print(f"eval: a lone tokenizer on {device}: reconstruction of {cfg.recon_clips} clips x {cfg.recon_len} frames")
    else:
        print(f"eval: {cfg.size} protocol on {device} ({_sizes(cfg)}; --full for the full protocol)"
              if cfg.size == "quick" else f"eval: {cfg.size} protocol on {device} ({_sizes(cfg)})")
    if world.device.type == "cpu" and not args.threads and world.dynamics is not None:
        from driftless.world.threads import tune_threads

        # on a CPU shared with other work one thread can be many times faster than all cores
        threads, timings = tune_threads(world, batch=2, sampling=sampling)
        print(f"eval: {threads} CPU thread(s) ({', '.join(f'{n}: {t * 1000:.0f} ms' for n, t in timings.items())} "
              f"per frame of 2 rollouts; --threads N to choose)")
    store, store_info = resolve_store(args.data, args.split)
    if not store_info["split_matches"]:
        print(f"warning: {store_info['path']} declares split {store_info['declared_split']!r}, "
              f"evaluated as {args.split!r}")
    bank = None
    if args.bank_data:
        from driftless.data.store import EpisodeStore

        bank = EpisodeStore(args.bank_data)
    torch.manual_seed(args.seed)
    result, artifacts = evaluate(world, store, cfg, bank_store=bank, i3d_path=args.i3d)
    result["data"] = {**store_info, "episodes": store.num_episodes, "frames": store.num_frames}
    result["world_path"] = str(args.world)
    if args.plots:
        from driftless.eval.plots import write_all

        result["plots"] = write_all(result, artifacts, args.plots)
    if args.json:
        atomic_write_json(args.json, result)
    print("\n".join(_summary(result)))
    if args.json:
        print(f"wrote {args.json}")
    for p in result.get("plots", []):
        print(f"wrote {p}")
    if not args.json and args.print_json:
        print(json.dumps(result, indent=2))
    return 0


def register(sub) -> None:
    d = EvalConfig()
    p = sub.add_parser("eval", help="measure a world: reconstruction, rollout PSNR/SSIM, Δ_t PSNR, drift, actions, "
                                    "controls, FVD",
                       description="Evaluate a world on held-out clips of an episode store; write every number "
                                   "(with the config, device, commit and date) as JSON and the figures as PNG.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("world", help="world folder (or a shipped world name)")
    p.add_argument("--data", required=True, help="episode store, or a folder holding SPLIT/ or a sibling DATA-SPLIT")
    p.add_argument("--split", default=d.split, help="which split to evaluate (default: test)")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--plots", metavar="DIR", help="write PNG figures into DIR")
    p.add_argument("--print-json", action="store_true", help="print the full JSON when --json is not given")
    p.add_argument("--size", choices=SIZES, default="auto",
                   help="protocol size: quick (minutes on a CPU) or full (every published figure); auto (default): "
                        "full on CUDA, quick elsewhere")
    p.add_argument("--full", action="store_true", help="the full protocol whatever the device (= --size full)")
    g = p.add_argument_group("rollout protocol")
    g.add_argument("--clips", type=int, help=f"test clips ({_default('clips')})")
    g.add_argument("--context", type=int, default=d.context, help=f"context frames N (default {d.context})")
    g.add_argument("--horizon", type=int, default=d.horizon, help=f"generated frames scored (default {d.horizon})")
    g.add_argument("--delta-t", type=int, default=d.delta_t, help=f"headline t of Δ_t PSNR (default {d.delta_t})")
    g.add_argument("--actions", default=d.actions, choices=ACTION_MODES,
                   help="inferred: LAM actions from the real clip; true: the data's actions (dynamics trained on "
                        "true actions); auto: whichever the dynamics was trained on (default)")
    g.add_argument("--recon-clips", type=int, help=f"reconstruction clips ({_default('recon_clips')})")
    g.add_argument("--recon-len", type=int, default=d.recon_len, help="frames per reconstruction clip")
    g = p.add_argument_group("drift")
    g.add_argument("--drift-frames", type=int, help=f"frames per rollout ({_default('drift_frames')})")
    g.add_argument("--drift-rollouts", type=int, help=f"rollouts ({_default('drift_rollouts')})")
    g.add_argument("--drift-bin", type=int, default=d.drift_bin, help="frames per point of the drift curves")
    g.add_argument("--drift-window", type=int, default=d.drift_window, help="frames averaged for first/last figures")
    g.add_argument("--strip-every", type=int, default=d.strip_every, help="every k-th frame in the drift strip")
    g.add_argument("--bank-size", type=int, help=f"real frames in the drift measure's bank ({_default('bank_size')})")
    g.add_argument("--bank-data", help="store for the bank (default: the evaluated store, disjoint episodes)")
    g = p.add_argument_group("actions and FVD")
    g.add_argument("--action-clips", type=int, help=f"16-frame clips for action-map accuracy ({_default('action_clips')})")
    g.add_argument("--controls-starts", type=int,
                   help=f"held-out game states of the controls evaluation ({_default('controls_starts')})")
    g.add_argument("--controls-frames", type=int, default=d.controls_frames,
                   help=f"frames each control / latent action is held (default {d.controls_frames})")
    g.add_argument("--i3d", help="I3D weights (.safetensors state dict or TorchScript) for FVD; nothing is downloaded")
    g.add_argument("--fvd-frames", type=int, default=d.fvd_frames, help="frames per FVD clip (context + generated)")
    g.add_argument("--fvd-size", type=int, default=d.fvd_size, help="frames resized to this for I3D (reference: 224)")
    g = p.add_argument_group("execution")
    g.add_argument("--skip", help=f"comma-separated parts not to run: {','.join(PARTS)}")
    g.add_argument("--batch-size", type=int, help=f"clips per forward pass ({_default('batch_size')})")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default on a CPU: 1 or all cores, whichever "
                                               "steps the world faster here)")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("sampling (default: the world's own, world.json \"sampling\"; recorded in config.sampling)")
    g.add_argument("--steps", type=int, help="sampling steps per frame (default: the world's)")
    g.add_argument("--cfg-scale", type=float, help="classifier-free guidance on the action (default: the world's)")
    g.add_argument("--cfg-steps", type=int, help="forcing: guide only the first N denoising steps, the noisiest "
                                                 "(fewer than --steps lets fused_commit stay on; default: the "
                                                 "world's, else every step)")
    g.add_argument("--eta", type=float, help="DDIM stochasticity in [0, 1]: 0 deterministic, 1 DDPM-like "
                                             "(default: the world's)")
    g.add_argument("--context-level", type=int, help="noise level (0 = clean, up to the dynamics' levels, e.g. 1000) "
                                                     "the generated past is held at in the context (default: the "
                                                     "world's, else the dynamics' diffusion.context_level)")
    g.add_argument("--temperature", type=float, help="scale of the initial noise of each frame (forcing; 1 = "
                                                     "unscaled), head noise (mar), softmax temperature (maskgit) "
                                                     "(default: the world's)")
    g.add_argument("--history-guidance", type=float, metavar="W",
                   help="history guidance (forcing): each denoising step takes out_free + W * (out_past - out_free), "
                        "out_free the same model with its past at the top noise level; 1 = off, W > 1 pulls towards "
                        "the past; composes with --cfg-scale (each branch guided on the action first); about twice "
                        "the compute per frame (default: the world's)")
    g.add_argument("--fused-commit", action=argparse.BooleanOptionalAction,
                   help="forcing: the last denoising pass appends the frame to the context (one backbone pass fewer "
                        "per frame; frames are then held at the last step's level, not --context-level) "
                        "(default: the world's)")
    g.add_argument("--window", type=int, help="frames the dynamics attends to (the new one and the window - 1 "
                                              "before it), also the context kept at reset and the tokenizer "
                                              "decoder's window (capped by its own); at most the dynamics' trained "
                                              "context_window (default: the world's, else that window)")
    p.set_defaults(func=_run)
