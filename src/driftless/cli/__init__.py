"""The `driftless` command. Each verb group lives in its own module with a `register(sub)`
function that adds its sub-commands; this file only assembles them and dispatches.

The showcases register themselves: `driftless.<showcase>.cli.register(sub)` adds their verb and,
where they make data sets, `register_data(data_sub)` adds verbs under `driftless data`."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# module name under driftless.cli -> registers these verbs
VERB_MODULES = ["demo", "data", "train", "world", "evaluate", "bench", "play", "rollout"]
# showcase packages driftless.<name> whose cli module registers their verbs
SHOWCASES = ["plan", "forecast", "image"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftless",
        description="Learn playable worlds from unlabelled video, play them in a browser, plan in them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from driftless import __version__

    parser.add_argument("--version", action="version", version=f"driftless {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    groups = {}
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"driftless.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"driftless.cli.{name}":
                continue  # verb not built yet
            raise
        groups[name] = module.register(sub)
    for name in SHOWCASES:
        module = importlib.import_module(f"driftless.{name}.cli")
        module.register(sub)
        if hasattr(module, "register_data") and groups.get("data") is not None:
            module.register_data(groups["data"])  # its `driftless data ...` verbs
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    shown_as = warnings.formatwarning
    warnings.formatwarning = _format_warning  # (pytest.warns and other recorders still see every warning)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = shown_as
    return int(result or 0)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as a user reads it: the message, not the source line of driftless that raised it."""
    label = "warning" if category is UserWarning else f"warning ({category.__name__})"
    return f"{label}: {message}\n"
