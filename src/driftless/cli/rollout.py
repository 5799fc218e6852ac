"""driftless rollout WORLD --prompt IMAGE --actions "0,3,3,1" --out out.mp4|.gif|.png"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_actions(text: str, num_actions: int) -> list[int]:
    """ "0,3,3,1" (commas and/or spaces) -> [0, 3, 3, 1], each in [0, num_actions)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise ValueError('--actions must list integers like "0,3,3,1"')
    out = []
    for p in parts:
        try:
            a = int(p)
        except ValueError:
            raise ValueError(f'--actions must list integers like "0,3,3,1"; {p!r} is not one') from None
        if not 0 <= a < num_actions:
            raise ValueError(f"action {a} is out of range: this world has actions 0..{num_actions - 1}")
        out.append(a)
    return out


def make_policy(args, num_actions: int, batch: int):
    """-> (number of steps, function step_index -> actions (batch,) int64)."""
    import numpy as np

    given = parse_actions(args.actions, num_actions) if args.actions is not None else None
    policy = args.policy or ("given" if given else None)
    if policy is None:
        raise ValueError('give --actions "0,3,3,1" or --policy random with --steps N')
    if policy == "given":
        if not given:
            raise ValueError("--policy given needs --actions")
        steps = args.steps or len(given)
        return steps, lambda i: np.full(batch, given[i % len(given)], dtype=np.int64)
    if policy == "random":
        if given:
            raise ValueError("--policy random chooses the actions itself; drop --actions")
        if not args.steps:
            raise ValueError("--policy random needs --steps N")
        rng = np.random.default_rng(args.seed)
        return args.steps, lambda i: rng.integers(0, num_actions, size=batch).astype(np.int64)
    raise ValueError(f"--policy must be 'given' or 'random', got {policy!r}")


def load_prompt(args, resolution):
    """--prompt IMAGE or --level N -> uint8 (1, H, W, 3)."""
    import numpy as np

    from driftless.serve.media import load_image_file
    from driftless.serve.session import LevelSource, resize_frames

    if bool(args.prompt) == (args.level is not None):
        raise ValueError("give exactly one of --prompt IMAGE (PNG/JPEG) or --level N (a CoinRun test level)")
    if args.prompt:
        return load_image_file(args.prompt, resolution)[None]
    frame, _ = LevelSource().frame(args.level, np.random.default_rng(args.seed))
    return resize_frames(frame, resolution)


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    import driftless
    from driftless.runtime import check_device, set_threads
    from driftless.world.threads import tune_threads
    from driftless.serve.media import Mp4Writer, save_video, tile

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif", ".png"):
        raise ValueError(f"--out must end in .mp4, .gif or .png (a strip of frames), got {out.name!r}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    device = check_device(args.device)
    threads = set_threads(device, args.threads)
    world = driftless.load(args.world, device=device)
    if world.dynamics is None:
        raise ValueError(f"{args.world} has no dynamics model; rollouts need a full world")
    sampling = {"steps": args.denoise_steps} if args.denoise_steps else {}
    if device == "cpu" and args.threads == "auto":
        threads, _ = tune_threads(world, batch=args.batch, sampling=sampling)
    steps, policy = make_policy(args, world.num_actions, args.batch)
    prompt = load_prompt(args, world.resolution)  # (1, H, W, 3)
    context = np.repeat(prompt[None], args.batch, axis=0)  # (B, 1, H, W, 3)

    def view(frames_b):  # (B, H, W, 3) -> one picture (the grid of the batch)
        return frames_b[0] if args.batch == 1 else tile(frames_b, columns=int(np.ceil(np.sqrt(args.batch))))

    out.parent.mkdir(parents=True, exist_ok=True)
    stream = out.suffix.lower() == ".mp4"
    tmp = out.with_name(out.name + ".partial.mp4") if stream else None
    writer = Mp4Writer(str(tmp), fps=args.fps, scale=args.scale) if stream else None
    kept = []
    first = world.reset(context, seed=args.seed, **sampling)  # (B, H, W, 3)
    (writer.write if stream else kept.append)(view(first))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    try:
        for i in tqdm(range(steps), desc="rollout", unit="frame", disable=args.quiet):
            frame = world.step(policy(i))  # (B, H, W, 3)
            (writer.write if stream else kept.append)(view(frame))
        sync()
        seconds = time.perf_counter() - t0
    except BaseException:
        if writer is not None:
            writer.close()
            tmp.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
    if stream:
        tmp.replace(out)
    else:
        save_video(out, np.stack(kept), fps=args.fps, scale=args.scale)
    result = {"out": str(out), "frames": steps + 1, "batch": args.batch, "device": device,
              "threads": threads, "seconds": round(seconds, 3),
              "steps_per_s": round(steps / seconds, 2), "frames_per_s": round(steps * args.batch / seconds, 2),
              "denoise_steps": int(args.denoise_steps or world.sampling.steps)}
    print(json.dumps(result))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "rollout", help="generate frames from a prompt image and actions; write MP4, GIF or a PNG strip",
        description="Roll a world forward from one prompt frame: given actions (--actions) or a random policy "
                    "(--policy random --steps N) for long unattended runs. Prints a JSON summary with frames/s "
                    "(with --batch B, B independent rollouts are generated at once and tiled in the output).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='examples:\n  driftless rollout coinrun --prompt start.png --actions "0,3,3,1" --out out.gif\n'
               "  driftless rollout runs/world --level 10734 --steps 1000 --policy random --out long.mp4\n"
               "  driftless rollout runs/world --level 10500 --steps 200 --policy random --batch 16 --out grid.mp4")
    p.add_argument("world", help="world folder or shipped name (e.g. coinrun)")
    p.add_argument("--prompt", help="starting frame: a PNG or JPEG (center-cropped and resized)")
    p.add_argument("--level", type=int, help="start from CoinRun test level N (10500-10999) instead; needs procgen")
    p.add_argument("--actions", help='latent actions, e.g. "0,3,3,1" (repeated when --steps is longer)')
    p.add_argument("--steps", type=int, help="frames to generate (default: one per --actions entry)")
    p.add_argument("--policy", choices=["given", "random"], help="given: --actions; random: uniform actions")
    p.add_argument("--out", required=True, help="output file: .mp4, .gif or .png (a strip of frames)")
    p.add_argument("--batch", type=int, default=1, help="independent rollouts generated at once (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling / policy seed (default 0)")
    p.add_argument("--denoise-steps", type=int, help="sampling steps per frame (default: the world's own)")
    p.add_argument("--fps", type=float, default=15.0, help="frames per second of the video (default 15)")
    p.add_argument("--scale", type=int, default=4, help="nearest-neighbour scale of the output (default 4)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--threads", default=None,
                   help="CPU threads for torch: a number, or auto (time 1 and all cores, keep the faster); "
                        "default: all cores")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
