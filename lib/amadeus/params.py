"""params.yaml: typed, validated configuration.

Every configurable part of amadeus declares its knobs as a dataclass whose fields use `knob()`:

    @dataclass
    class TrainConfig:
        lr: float = knob(1e-3, gt=0)
        device: str = knob("auto", choices=("auto", "cpu", "cuda"))

`build(TrainConfig, raw, "train")` turns the YAML mapping into that dataclass, or raises a UserError
naming the key and what is allowed: unknown keys, wrong types and out-of-range values never pass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from amadeus.errors import UserError

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def knob(default: Any = _MISSING, *, min: float | None = None, max: float | None = None,
         gt: float | None = None, lt: float | None = None, choices: tuple | None = None,
         help: str = "") -> Any:
    """A dataclass field with validation metadata (inclusive min/max, exclusive gt/lt, choices)."""
    meta = {"min": min, "max": max, "gt": gt, "lt": lt, "choices": choices, "help": help}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load_yaml(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found (run from the project root, or pass the params file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return data


def section(params: Mapping, name: str) -> Any:
    """`params[name]` for a dotted name, or a UserError saying which section is missing."""
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise UserError(f"params.yaml: missing section '{name}'")
        node = node[part]
    return node


def build(cls: type[T], raw: Any, where: str) -> T:
    """Validate the mapping `raw` against dataclass `cls`; `where` is the dotted key for messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise UserError(f"params.yaml: {where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"params.yaml: {where}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in raw:
            if f.default is _MISSING and f.default_factory is _MISSING:
                raise UserError(f"params.yaml: {key}: required")
            continue
        values[name] = _check(hints[name], raw[name], key, f.metadata)
    return cls(**values)


def _check(hint: Any, value: Any, key: str, meta: Mapping) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, key, meta)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"params.yaml: {key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_check(item, v, f"{key}[{i}]", meta) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"params.yaml: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    checked = _scalar(hint, value, key)
    _range(value, key, meta)  # the value as written, so the message quotes the user
    return checked


def _scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"params.yaml: {key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"params.yaml: {key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"params.yaml: {key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"params.yaml: {key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"params: unsupported type {hint} for {key}")


def _range(value: Any, key: str, meta: Mapping) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(str(c) for c in choices)
        raise UserError(f"params.yaml: {key}: {value!r} is not allowed; choose one of: {allowed}")
    bounds = [("min", lambda v, b: v >= b, ">="), ("max", lambda v, b: v <= b, "<="),
              ("gt", lambda v, b: v > b, ">"), ("lt", lambda v, b: v < b, "<")]
    for name, ok, sign in bounds:
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            raise UserError(f"params.yaml: {key}: {value!r} is out of range; must be {sign} {bound}")


def as_dict(config: Any) -> dict:
    """A plain dict of a config dataclass (what checkpoints and metrics store)."""
    return dataclasses.asdict(config)
