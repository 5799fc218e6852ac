"""Dataclass configs to and from plain JSON-able dicts, strictly (unknown keys are errors), and
`option`, a field that documents itself (the CLI turns such fields into flags)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

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
        node[parts[-1]] = value
    return from_dict(type(cfg), data)
