"""What several CLI verbs share: `--set KEY=VALUE` overrides and writing result JSON."""

from __future__ import annotations

import json


def parse_overrides(items: list[str] | None) -> dict:
    """["backbone.depth=8", "frame_model=mar"] -> {"backbone.depth": 8, "frame_model": "mar"}.
    Values are read as JSON where they parse (numbers, booleans, lists), else kept as text."""
    out = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set expects KEY=VALUE (e.g. backbone.depth=8), got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def write_json(obj: dict, path: str | None) -> None:
    """Write `obj` as strict JSON (non-finite floats as null) atomically, if a path is given."""
    if path:
        from driftless.checkpoint import atomic_write_json
        from driftless.runtime import clean_json

        atomic_write_json(path, clean_json(obj))
        print(f"wrote {path}")
