"""What several CLI verbs share: flags made from config dataclasses, `--set KEY=VALUE`
overrides, and writing result JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Iterable, Sequence, TypeVar

T = TypeVar("T")


def _flag_type(cls: type, name: str, tp: Any) -> type:
    """The argparse type of a field: int, float, str or bool; `X | None` counts as X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    if tp not in (int, float, str, bool):
        raise TypeError(f"{cls.__name__}.{name} ({tp}) has no flag form: leave it out and add its flag by hand")
    return tp


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, only: Sequence[str] | None = None,
                        exclude: Iterable[str] = (), help: dict[str, str] | None = None) -> None:
    """Add the fields of dataclass `cls` (those in `only`, in its order, else all but `exclude`,
    in field order) to `parser` as flags: field `batch_size` -> `--batch-size`, parsed into
    `args.batch_size`. Type and default come from the field (no default: a required flag;
    `X | None`: X, default None; bool: a switch, `--name` when False by default, else
    `--name/--no-name`, default None meaning "let the code decide"); help, choices and metavar from its metadata (`config.option`), help
    text from `help` where that names the field. `dataclass_from_args` builds `cls` back."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    skip = set(exclude)
    names = list(only) if only is not None else [n for n in fields if n not in skip]
    for name in names:
        if name not in fields:
            raise ValueError(f"{cls.__name__} has no field {name!r}")
        f = fields[name]
        tp = _flag_type(cls, name, hints[name])
        kw: dict[str, Any] = {"dest": name}
        text = (help or {}).get(name, f.metadata.get("help"))
        if text is not None:
            kw["help"] = text
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default"] = f.default_factory()
        elif tp is not bool:
            kw["required"] = True
        if tp is bool:
            # on by default, or undecided (None: the code chooses): --name/--no-name
            kw["action"] = argparse.BooleanOptionalAction if kw.get("default", False) in (True, None) else "store_true"
            kw.setdefault("default", False)
        else:
            if tp is not str:  # argparse's own default
                kw["type"] = tp
            for key in ("choices", "metavar"):
                if key in f.metadata:
                    kw[key] = list(f.metadata[key]) if key == "choices" else f.metadata[key]
        parser.add_argument("--" + name.replace("_", "-"), **kw)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """Build dataclass `cls` from parsed flags: each field takes the value parsed under its name
    (see `add_dataclass_flags`), `given` values win, and fields with neither keep their defaults."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.init and f.name not in given and hasattr(args, f.name)}
    return cls(**values, **given)


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
