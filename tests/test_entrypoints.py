"""Every command and stage main goes through amadeus.errors.main_entry: a new one without it fails here."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

from amadeus.errors import ENTRY_MARK

ROOT = Path(__file__).resolve().parents[1]


def _stage_mains() -> list[tuple[str, object]]:
    out = []
    for path in sorted((ROOT / "stages").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_stage_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out.append((f"stages/{path.name}", getattr(module, "main", None)))
    return out


def _script_mains() -> list[tuple[str, object]]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    out = []
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        out.append((f"[project.scripts] {name}", getattr(importlib.import_module(module), attr)))
    return out


def _module_mains() -> list[tuple[str, object]]:
    """Modules runnable as `python -m amadeus...` (they have an `if __name__ == "__main__"` block)."""
    out = []
    lib = ROOT / "lib"
    for path in sorted((lib / "amadeus").rglob("*.py")):
        if not re.search(r"^if __name__ == .__main__.:", path.read_text(), re.M):
            continue
        name = ".".join(path.relative_to(lib).with_suffix("").parts)
        out.append((name, getattr(importlib.import_module(name), "main", None)))
    return out


def test_the_lists_are_not_empty():
    assert len(_stage_mains()) >= 8 and _script_mains() and _module_mains()


@pytest.mark.parametrize("where,main", _stage_mains() + _script_mains() + _module_mains()
                         + [("amadeus.live.cli", importlib.import_module("amadeus.live.cli").main)])
def test_every_entry_point_is_wrapped(where, main):
    assert callable(main), f"{where}: no main()"
    assert getattr(main, ENTRY_MARK, False), f"{where}: main is not decorated with amadeus.errors.main_entry"


def test_a_bare_main_is_caught():
    def bare() -> None:
        pass

    assert not getattr(bare, ENTRY_MARK, False)
    assert sys.modules["amadeus.errors"].main_entry(bare).__amadeus_main_entry__ is True
