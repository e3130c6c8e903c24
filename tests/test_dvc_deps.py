"""dvc.yaml's deps are exactly the code each stage runs: the import closure of stages/<stage>.py
(tools/dvc_deps.py), lazy imports and modules named in strings included. A missing dep means stale
outputs after an edit; an extra one means needless reruns."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dvc_deps", ROOT / "tools" / "dvc_deps.py")
dvc_deps = importlib.util.module_from_spec(_spec)
sys.modules["dvc_deps"] = dvc_deps
_spec.loader.exec_module(dvc_deps)

LIBRARY = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "lib" / "amadeus").rglob("*.py"))


def test_every_stage_lists_every_file_it_imports():
    gaps = dvc_deps.gaps()
    assert not gaps, "; ".join(f"dvc.yaml: stage {s}: deps miss {', '.join(f)}" for s, f in gaps.items())


@pytest.mark.parametrize("name", list(dvc_deps.stages()))
def test_a_library_file_reruns_exactly_the_stages_that_import_it(name: str):
    """No extra library deps either: a folder dep must be imported whole, a file dep imported at all."""
    stage = dvc_deps.stages()[name]
    deps = dvc_deps._paths(stage["deps"])
    closure = dvc_deps.closure(ROOT / "stages" / f"{name}.py")
    assert stage["cmd"].split()[:2] == ["python", f"stages/{name}.py"]
    listed = {f for f in LIBRARY if dvc_deps.covered(f, deps)}
    assert listed == closure, f"stage {name}: deps cover files it never imports: {sorted(listed - closure)}"
    for dep in deps:
        if dep.startswith(("lib/", "stages/")):
            assert (ROOT / dep).exists(), f"dvc.yaml: stage {name}: dep {dep} does not exist"


def test_the_closure_follows_lazy_transitive_and_string_named_imports():
    files = dvc_deps.closure(ROOT / "stages" / "generate.py")
    assert "lib/amadeus/render.py" in files  # imported inside a function only
    assert "lib/amadeus/vocab.py" in files  # through amadeus.generation and others
    assert "lib/amadeus/models/perceiver_ar.py" in files  # "amadeus.models.perceiver_ar:PerceiverAR"
    assert {"lib/amadeus/__init__.py", "lib/amadeus/pipeline/__init__.py"} <= files  # parents run first
    assert "lib/amadeus/pipeline/score.py" not in files
    assert "lib/amadeus/live/session.py" not in files


def test_relative_imports_resolve_inside_the_package(tmp_path: Path):
    fake = tmp_path / "fake.py"
    fake.write_text("from .paths import checkpoint\nfrom .. import vocab\n\n"
                    "def f():\n    from ..quant import stats\n")
    found = dvc_deps.imports_of(fake, "amadeus.pipeline.fake")
    assert {"amadeus.pipeline.paths", "amadeus.vocab", "amadeus.quant", "amadeus.quant.stats"} <= found
    fake.write_text("from .... import x\n")
    with pytest.raises(ValueError, match="beyond the package"):
        dvc_deps.imports_of(fake, "amadeus.pipeline.fake")


def test_a_gap_is_named_with_its_stage_and_file(tmp_path: Path):
    text = (ROOT / "dvc.yaml").read_text()
    assert "        - lib/amadeus/models\n" in text
    broken = tmp_path / "dvc.yaml"
    broken.write_text(text.replace("        - lib/amadeus/checkpoint.py\n", "", 1))
    gaps = dvc_deps.gaps(broken)
    assert list(gaps) == ["train"] and gaps["train"] == ["lib/amadeus/checkpoint.py"]
