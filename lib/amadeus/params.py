"""params.yaml: typed, validated configuration.

Every configurable part of amadeus declares its knobs as a dataclass whose fields use `knob()`:

    @dataclass
    class TrainConfig:
        lr: float = knob(1e-3, gt=0)
        device: str = knob("auto", choices=("auto", "cpu", "cuda"))

`build(TrainConfig, raw, "train")` turns the YAML mapping into that dataclass, or raises a UserError
naming the key and what is allowed: unknown keys, wrong types, NaN/inf, integers outside int64 and
out-of-range values never pass. A dataclass with rules between its fields defines `check(self)`, which
`build` calls on the result; it raises `Invalid("num_heads: 5 must divide num_channels (192)")`, the
key relative to the section, and `build` puts the section in front.

Messages start with `params.yaml: <section>`; a `where` that already names its file (it contains
": ", e.g. `"save/x.sess: config"`) is used as written (docs/params.md).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from amadeus.errors import UserError

T = TypeVar("T")
_MISSING = dataclasses.MISSING
PARAMS_FILE = "params.yaml"
INT64 = (-(2**63), 2**63 - 1)  # numpy and torch hold integers in 64 bits
SEED_MAX = 2**63 - 1          # torch.manual_seed and numpy's generators refuse larger seeds


class Invalid(Exception):
    """Raised by a config's `check()`: a rule between fields is broken; the message starts with the key."""


def knob(default: Any = _MISSING, *, min: float | None = None, max: float | None = None,
         gt: float | None = None, lt: float | None = None, choices: tuple | None = None,
         help: str = "") -> Any:
    """A dataclass field with validation metadata (inclusive min/max, exclusive gt/lt, choices)."""
    meta = {"min": min, "max": max, "gt": gt, "lt": lt, "choices": choices, "help": help}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def seed_knob(default: int, help: str = "", max: int = SEED_MAX) -> Any:
    """A seed: an integer in 0..2**63-1 (or less, where the code adds to it)."""
    return knob(default, min=0, max=max, help=help)


def located(where: str) -> str:
    """`where` with the file in front: `params.yaml: train`, or as written when it names a file."""
    return where if ": " in where else f"{PARAMS_FILE}: {where}"


def load_yaml(path: str | Path = "params.yaml") -> dict:
    """The sections of a params file, read but not validated: each stage builds the sections it reads."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found (run from the project root, or pass the params file)")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    _check_sections(data, path)
    return data


# Every top-level section of params.yaml; a misspelt one would otherwise be ignored silently.
SECTIONS = ("sources", "datasets", "codec", "preprocess", "models", "train", "calibrate", "quantize",
            "generate", "score", "evaluate")


def _check_sections(data: Mapping, path: Path) -> None:
    """What holds for the file as a whole: known sections, none left empty, datasets declared."""
    for name, value in data.items():
        if name not in SECTIONS:
            raise UserError(f"{path}: {name}: unknown section; allowed: {', '.join(SECTIONS)}")
        if value is None:  # an empty section would silently mean "all defaults"
            raise UserError(f"{path}: {name}: empty section; give its keys or remove it")
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise UserError(f"{path}: datasets: expected a list of source names, got {datasets!r}")
    sources = data.get("sources")
    if isinstance(sources, Mapping):
        for name in datasets:
            if name not in sources:
                declared = ", ".join(map(str, sources)) or "none"
                raise UserError(f"{path}: datasets: {name!r} is not a declared source; declared: {declared}")


def section(params: Mapping, name: str) -> Any:
    """`params[name]` for a dotted name, or a UserError saying which section is missing."""
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise UserError(f"{PARAMS_FILE}: missing section '{name}'")
        node = node[part]
    return node


def build(cls: type[T], raw: Any, where: str) -> T:
    """Validate the mapping `raw` against dataclass `cls`; `where` is the dotted key for messages
    (prefixed `params.yaml: ` unless it names its own file: see the module doc)."""
    where = located(where)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in raw:
            if f.default is _MISSING and f.default_factory is _MISSING:
                raise UserError(f"{key}: required")
            continue
        values[name] = _check(hints[name], raw[name], key, f.metadata)
    config = cls(**values)
    check = getattr(config, "check", None)
    if check is not None:
        try:
            check()
        except Invalid as e:
            raise UserError(f"{where}.{e}") from None
    return config


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
            raise UserError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_check(item, v, f"{key}[{i}]", meta) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    checked = _scalar(hint, value, key)
    _range(value, key, meta)  # the value as written, so the message quotes the user
    return checked


def _scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        if not INT64[0] <= value <= INT64[1]:
            raise UserError(f"{key}: {value} does not fit in 64 bits; must be in -2**63..2**63-1")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {value!r}")
        number = float(value) if not isinstance(value, int) or abs(value) < 2**1000 else math.inf
        if not math.isfinite(number):  # NaN passes every min/max comparison, inf every `gt`
            raise UserError(f"{key}: {value!r} is not a finite number")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"params: unsupported type {hint} for {key}")


def _range(value: Any, key: str, meta: Mapping) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(str(c) for c in choices)
        raise UserError(f"{key}: {value!r} is not allowed; choose one of: {allowed}")
    bounds = [("min", lambda v, b: v >= b, ">="), ("max", lambda v, b: v <= b, "<="),
              ("gt", lambda v, b: v > b, ">"), ("lt", lambda v, b: v < b, "<")]
    for name, ok, sign in bounds:
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            raise UserError(f"{key}: {value!r} is out of range; must be {sign} {bound}")


def as_dict(config: Any) -> dict:
    """A plain dict of a config dataclass (what checkpoints and metrics store)."""
    return dataclasses.asdict(config)
