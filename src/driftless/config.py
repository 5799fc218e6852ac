"""Dataclass configs to and from their other forms:

* plain JSON-able dicts, strictly (unknown keys are errors): `to_dict`, `from_dict`, and
  `override` with dotted keys ({"backbone.depth": 8});
* command-line flags: `option` is a field that documents itself (help, choices, metavar),
  `add_dataclass_flags` adds a dataclass's fields to an argparse parser and
  `dataclass_from_args` builds the dataclass back from the parsed flags;
* `--set KEY=VALUE` items: `parse_overrides` turns them into an overrides dict.

Every CLI (`driftless.cli` and the showcases' own `cli.py`) builds its flags and overrides with
these, so none of them imports another's CLI module.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Iterable, Sequence, TypeVar

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           choices: tuple | None = None, metavar: str | None = None, **metadata: Any) -> Any:
    """A dataclass field with its help text (and allowed values) in its metadata, e.g.
    `steps: int = option(20000, help="optimizer steps")`. `help` may use %(default)s; further
    keywords are kept in the metadata for whoever reads it."""
    meta = {"help": help, **metadata}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if metavar is not None:
        meta["metavar"] = metavar
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def to_dict(cfg: Any) -> dict:
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass config, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value)
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def from_dict(cls: type[T], data: dict) -> T:
    """Build dataclass `cls` from `data`; nested dataclasses are rebuilt from nested dicts."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def normalized(cls: type, data: dict) -> dict:
    """`data` (a saved config) as `cls` reads it today, back to a JSON-able dict: fields added
    since it was saved take their defaults, so an old checkpoint compares equal to the config
    it means. Returns `data` unchanged if `cls` cannot read it (the caller's comparison then
    fails with its own message)."""
    import json

    try:
        return json.loads(json.dumps(to_dict(from_dict(cls, data))))
    except (TypeError, ValueError):
        return data


def override(cfg: T, overrides: dict[str, Any]) -> T:
    """Return a copy of cfg with dotted-key overrides applied, e.g. {"backbone.depth": 8}."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ValueError(f"cannot set {key!r}: {p!r} is not a nested config of {type(cfg).__name__}")
            node = node[p]
        if parts[-1] not in node:
            raise ValueError(f"cannot set {key!r}: no such field in {type(cfg).__name__} "
                             f"(fields here: {sorted(node)})")
        if isinstance(node[parts[-1]], str) and isinstance(value, (bool, int, float)):
            value = json.dumps(value)  # --set action_source=true reads JSON `true`; the field is text
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


# ---- command-line flags and --set overrides ---------------------------------------------------------
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
    `--name/--no-name`, default None meaning "let the code decide"); help, choices and metavar from its metadata (`option`), help
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
