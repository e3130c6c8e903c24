"""Which library files each dvc.yaml stage runs, and which of them its `deps:` miss.

A stage's code is the import closure of its script `stages/<stage>.py`: every `import` and `from`
inside the `amadeus` package, anywhere in a file (imports inside functions, which are only made on
some paths, count too), relative imports resolved, every parent package's `__init__.py` included,
and module names written as strings (`"amadeus.models.perceiver_ar:PerceiverAR"`, imported with
importlib) followed as well. A folder in `deps:` covers every file under it.

    python tools/dvc_deps.py          # each stage's gaps (none: prints nothing, exits 0)
    python tools/dvc_deps.py --list   # each stage's closure

`tests/test_dvc_deps.py` fails on any gap, naming the stage and the file.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
PACKAGE = "amadeus"
_DOTTED = re.compile(rf"^{PACKAGE}(\.[A-Za-z_]\w*)*(:\w+)?$")


def module_file(name: str) -> Path | None:
    """lib/amadeus/x/__init__.py or lib/amadeus/x.py for module `amadeus.x`, None if neither exists."""
    base = LIB / Path(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def imports_of(path: Path, module: str | None) -> set[str]:
    """The `amadeus` modules one file imports (module=None: a script outside the package)."""
    package = "" if module is None else module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                keep = len(parts) - node.level + 1
                if keep < 1:
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the package")
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            found.add(base)
            # `from amadeus.x import y` may import the submodule amadeus.x.y
            found |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}")}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.match(node.value):
            found.add(node.value.partition(":")[0])  # importlib.import_module("amadeus....")
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(m) is not None}


# Modules that can stop a stage but never change its outputs (params validation): listed as deps, their
# own imports not followed, so a stage does not rerun when code only the gate reads changes.
GATES = {f"{PACKAGE}.pipeline.params_check"}


def closure(script: Path) -> set[str]:
    """Every library file (relative to the root, posix) that running `script` can import."""
    seen: set[str] = set()
    todo = sorted(imports_of(script, None))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parents run their __init__ first
        if name not in GATES:
            todo += sorted(imports_of(module_file(name), name))
    return {module_file(m).relative_to(ROOT).as_posix() for m in seen}


def stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    """dvc.yaml's stage definitions by name (a `foreach` stage's `do` body, `${key}` left as written)."""
    out = {}
    for name, stage in (yaml.safe_load(dvc_yaml.read_text()).get("stages") or {}).items():
        out[name] = stage.get("do", stage)
    return out


def _paths(entries: list | None) -> set[str]:
    return {(next(iter(e)) if isinstance(e, dict) else e).rstrip("/") for e in entries or []}


def covered(file: str, deps: set[str]) -> bool:
    return any(file == d or file.startswith(d + "/") for d in deps)


def gaps(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, list[str]]:
    """stage -> the files of its closure (and its script) that its deps do not cover."""
    out = {}
    for name, stage in stages(dvc_yaml).items():
        script = ROOT / "stages" / f"{name}.py"
        deps = _paths(stage.get("deps"))
        want = closure(script) | {script.relative_to(ROOT).as_posix()}
        missing = sorted(f for f in want if not covered(f, deps))
        if missing:
            out[name] = missing
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print every stage's import closure")
    args = parser.parse_args(argv)
    if args.list:
        for name in stages():
            print(f"{name}:")
            for f in sorted(closure(ROOT / "stages" / f"{name}.py")):
                print(f"  - {f}")
        return 0
    found = gaps()
    for name, missing in found.items():
        print(f"dvc.yaml: stage {name}: deps miss {', '.join(missing)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
