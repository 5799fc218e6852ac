"""driftless play [WORLD]: serve a world as a real-time browser game."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")
BACKENDS = ("auto", "torch", "onnx")


# the packages whose code makes the exported graphs: an export made by other code is not reused
EXPORT_CODE = ("diffusion", "export", "models", "nn", "world")


def export_code_digest() -> str:
    """A digest of the driftless source that builds and runs an ONNX export (EXPORT_CODE's .py files,
    by relative path), so an upgrade or a local change to that code makes a new export."""
    import hashlib

    import driftless
    from driftless.export.onnx import export_opset

    h = hashlib.sha256(f"{driftless.__version__} opset {export_opset()}".encode())
    root = Path(driftless.__file__).parent
    for package in EXPORT_CODE:
        for f in sorted((root / package).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def onnx_cache(world, steps: int, window: int | None = None, weights: str = "auto") -> Path:
    """Where the ONNX export of `world` sampling `steps` steps (attending to `window` frames; None:
    the world's own; its step graph's `weights` as `export_onnx` takes them) is kept: DRIFTLESS_CACHE
    (default ~/.cache/driftless)/onnx/NAME-DIGEST-sSTEPS(-wWINDOW)(-WEIGHTS but auto), the digest over world.json, each component's
    config.json (which carries its weights' checksums) and the code that exports and runs the graphs
    (export_code_digest), so a retrained world or changed code gets a new folder."""
    import hashlib

    h = hashlib.sha256(export_code_digest().encode())
    folder = Path(getattr(world, "path", "") or "")
    for f in [folder / "world.json", *sorted(folder.glob("*/config.json"))]:
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    root = Path(os.environ.get("DRIFTLESS_CACHE") or Path.home() / ".cache" / "driftless")
    name = (f"{folder.name or 'world'}-{h.hexdigest()[:12]}-s{steps}" + (f"-w{window}" if window else "")
            + (f"-{weights}" if weights != "auto" else ""))
    return root / "onnx" / name


def _onnx_runtime_missing() -> str | None:
    for name in ("onnxruntime", "onnxscript", "onnx"):
        try:
            __import__(name)
        except ImportError:
            return name
    return None


def choose_backend(backend: str, device: str, world, steps: int, window: int | None = None,
                   weights: str = "auto") -> tuple[str, Path | None]:
    """-> ("torch" | "onnx", the export folder for onnx). auto: onnx on a CPU when this world's
    export is cached already, else torch (an export takes a minute or two: --backend onnx makes it).
    `weights` int8 (quantised linear layers) is an ONNX Runtime export: it needs --backend onnx."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if weights != "auto" and backend != "onnx":
        raise ValueError(f"--weights {weights} plays an ONNX export: add --backend onnx (a CPU)")
    if backend == "torch":
        return "torch", None
    folder = onnx_cache(world, steps, window, weights)
    missing = _onnx_runtime_missing()
    if backend == "auto":
        ok = str(device) == "cpu" and missing is None and (folder / "manifest.json").is_file()
        return ("onnx", folder) if ok else ("torch", None)
    if str(device) != "cpu":
        raise ValueError(f"--backend onnx plays on the CPU; the device is {device} (use --device cpu, or the "
                         f"torch backend, which is the fast one on a GPU)")
    if missing:
        raise ValueError(f'--backend onnx needs {missing}: pip install "driftless[export]"')
    if not (folder / "manifest.json").is_file():
        from driftless.checkpoint import swap_in
        from driftless.export.onnx import export_onnx

        print(f"exporting the world to ONNX once ({steps} steps; a minute or two on a CPU), kept in {folder}",
              flush=True)
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        export_onnx(world, tmp, steps=steps, weights=weights, log=lambda *a: None,
                    **({"window": window} if window else {}))
        swap_in(tmp, folder)
    return "onnx", folder


def _run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401

        from driftless.serve.app import create_app, listen, make_server
    except ModuleNotFoundError as e:
        raise ValueError(f'`driftless play` needs the play extras ({e.name} is missing): '
                         f'pip install "driftless[play]"') from e
    import driftless
    from driftless.runtime import check_device, set_threads
    from driftless.world.threads import tune_threads

    host = args.host
    sock = listen(host, args.port)  # a busy port is an error now, before anything is loaded or printed
    device = check_device(args.device)
    threads = set_threads(device, args.threads)
    try:
        world = driftless.load(args.world, device=device)
    except FileNotFoundError as e:
        if args.world == "coinrun":
            raise FileNotFoundError(
                "the shipped `coinrun` world is not in this installation yet; pass a world folder "
                "(`driftless play path/to/world`, built with `driftless world build`)") from e
        raise
    if world.dynamics is None:
        raise ValueError(f"{args.world} has no dynamics model, so it cannot be played; pass a world folder "
                         f"built with `driftless world build --dynamics ...`")
    steps = int(args.denoise_steps or world.sampling.steps)
    # the dynamics' own bounds, checked before anything is exported; its trained window is the default
    window = None if args.window is None else world.dynamics.check_window(args.window)
    window = None if window == world.dynamics.cfg.context_window else window
    backend, onnx_folder = choose_backend(args.backend, device, world, steps, window, args.weights)
    onnx_threads = int(args.threads) if args.threads != "auto" else min(8, os.cpu_count() or 1)
    if backend == "onnx":
        threads = onnx_threads
    elif device == "cpu" and args.threads == "auto":
        sampling = {"steps": args.denoise_steps} if args.denoise_steps else {}
        if window:
            sampling["window"] = window
        threads, timings = tune_threads(world, sampling=sampling)
        print("CPU threads: " + ", ".join(f"{n}: {1000 * s:.0f} ms/frame" for n, s in sorted(timings.items()))
              + f" -> using {threads}")
        if args.backend == "auto" and _onnx_runtime_missing() is None:
            print("tip: --backend onnx plays about 1.7x faster on a CPU (the world is exported to ONNX once)")
    allowed = list(args.allow_host)
    if host not in LOOPBACK:  # reachable from the network: players may use this machine's name
        allowed.append(socket.gethostname())
    app = create_app(world, max_sessions=args.max_sessions, data=args.data, tick_fps=args.fps,
                     denoise_steps=args.denoise_steps, window=window, inference_workers=args.workers,
                     seed=args.seed,
                     max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), allowed_hosts=tuple(allowed),
                     onnx=str(onnx_folder) if onnx_folder else None, onnx_threads=onnx_threads)
    cfg = app.state.config
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    url = f"http://{shown}:{args.port}/"
    print(f"driftless play: world {world.meta.get('name', args.world)!r} on {device} "
          f"({'ONNX Runtime' if backend == 'onnx' else 'PyTorch'}, {threads} CPU threads), "
          f"{world.num_actions} actions, up to {cfg.max_sessions} tabs")
    if host not in LOOPBACK:
        print(f"warning: listening on {host}: anyone who can reach this machine can play (and use its CPU/GPU); "
              f"players use its IP address, {socket.gethostname()!r} or a name given with --allow-host",
              file=sys.stderr)
    print(f"open {url} in your browser (Ctrl+C to stop)", flush=True)
    make_server(app, log_level=args.log_level).run(sockets=[sock])
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "play", help="play a world in your browser (starts a local server and prints its URL)",
        description="Start a local web server that plays WORLD as a game: open the printed URL, press 1..N for "
                    "latent actions or the arrow keys and space (mapped to the closest CoinRun controls), start from "
                    "a random CoinRun test level, a dataset clip or your own image, record and download GIF/MP4.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  driftless play                       # the shipped coinrun world\n"
               "  driftless play runs/world --port 9000 --data data/coinrun-test\n"
               "  driftless play runs/world --host 0.0.0.0 --max-sessions 8   # reachable from the network")
    p.add_argument("world", nargs="?", default="coinrun", help="world folder or shipped name (default: coinrun)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: only this machine; 0.0.0.0: every interface)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name players may use in the URL besides localhost, IP addresses and (with a --host "
                        "other than loopback) this machine's name; repeatable; '*' allows any (requests naming "
                        "another host are refused, which stops DNS-rebinding pages)")
    p.add_argument("--data", help="an episode store: enables 'dataset clip' starts")
    p.add_argument("--max-sessions", type=int, default=4, help="browser tabs playing at once (default 4)")
    p.add_argument("--fps", type=float, default=15.0, help="target tick rate while playing (default 15)")
    p.add_argument("--denoise-steps", type=int, help="sampling steps per frame (default: the world's own)")
    p.add_argument("--window", type=int, metavar="FRAMES",
                   help="frames the dynamics attends to, the new one included (default: the world's own, e.g. 64 "
                        "for coinrun); fewer play faster on a CPU and remember less of the level")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: cuda when available)")
    p.add_argument("--threads", default="auto",
                   help="CPU threads for torch: a number, or auto (default: time 1 thread and all cores, keep the "
                        "faster)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="what runs the model: torch, or onnx (ONNX Runtime, CPU only: about 1.7x the frames/s of "
                        "torch on a CPU; the world is exported once into ~/.cache/driftless/onnx); auto (default): "
                        "onnx on a CPU when that export exists, else torch")
    p.add_argument("--weights", default="auto", choices=["auto", "int8"],
                   help="int8 (with --backend onnx): the step graph's linear layers quantised, about an eighth more "
                        "frames/s on a 2-core CPU for a little quality (docs/benchmarks.md 2.14); auto (default): "
                        "the world's float weights")
    p.add_argument("--workers", type=int, default=1,
                   help="model calls run at once for different tabs (default 1; raise on a GPU)")
    p.add_argument("--max-upload-mb", type=float, default=4.0, help="largest uploaded image in MB (default 4)")
    p.add_argument("--seed", type=int, help="base seed for sampling and levels (default: random)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_run)
