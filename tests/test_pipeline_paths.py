"""amadeus.pipeline.paths and dvc.yaml name the same files, and a change of params reruns exactly the
stages that read them (and those downstream). Code deps: tests/test_dvc_deps.py."""

from __future__ import annotations

from pathlib import Path

import yaml

from amadeus.pipeline import paths

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("download", "preprocess", "train", "calibrate", "quantize", "generate", "score", "evaluate")


def _stages(key: str) -> dict[str, dict]:
    """dvc.yaml's stages with `${key}` replaced, as DVC expands `foreach` for that key."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        out[name] = yaml.safe_load(yaml.safe_dump(body).replace("${key}", key))
    return out


def _names(entries: list) -> set[str]:
    """Paths of a deps/outs/metrics/plots list (an entry may be a path or {path: options})."""
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}


def _posix(*ps: Path) -> set[str]:
    return {p.as_posix() for p in ps}


def test_dvc_outputs_are_the_paths_of_pipeline_paths():
    s = _stages("x")
    assert _names(s["download"]["outs"]) == _posix(paths.midi_dir("x"))
    assert _names(s["preprocess"]["outs"]) == _posix(paths.processed_dir("x"), paths.metrics_file("preprocess", "x"))
    assert _names(s["preprocess"]["metrics"]) == _posix(paths.headline_file("preprocess", "x"))
    assert paths.midi_dir("x").as_posix() in _names(s["preprocess"]["deps"])
    assert _names(s["train"]["outs"]) == _posix(paths.checkpoint("x"), paths.metrics_file("train", "x"))
    assert _names(s["train"]["metrics"]) == _posix(paths.headline_file("train", "x"))
    assert _names(s["train"]["plots"]) == _posix(paths.plots_file("x"), paths.plots_file("x", curve="val_nll"))
    assert _names(s["calibrate"]["outs"]) == _posix(paths.stats_file("x"))
    assert _names(s["quantize"]["outs"]) == _posix(paths.checkpoint("x", "int8"), paths.metrics_file("quantize", "x"))
    assert {paths.checkpoint("x").as_posix(), paths.stats_file("x").as_posix()} <= _names(s["quantize"]["deps"])
    assert _names(s["quantize"]["metrics"]) == _posix(paths.headline_file("quantize", "x"))
    assert _names(s["generate"]["outs"]) == _posix(paths.pieces_dir("x", "fp32").parent,
                                                   paths.metrics_file("generate", "x"))
    assert "metrics" not in s["generate"]  # counts and timings only: no headline number
    assert _names(s["score"]["outs"]) == _posix(paths.metrics_file("score", "x"))
    assert _names(s["score"]["metrics"]) == _posix(paths.headline_file("score", "x"))
    assert {paths.checkpoint("x").as_posix(), paths.checkpoint("x", "int8").as_posix()} <= _names(s["score"]["deps"])
    assert _names(s["evaluate"]["metrics"]) == _posix(paths.headline_file("evaluate"))
    assert _names(s["evaluate"]["outs"]) == _posix(paths.metrics_file("evaluate"),
                                                   paths.metrics_file("evaluate", suffix=".md"))
    for stage in s.values():  # git tracks metrics and plots (DVC's convention), DVC does not cache them
        for entry in (stage.get("metrics") or []) + (stage.get("plots") or []):
            assert next(iter(entry.values()))["cache"] is False, entry


def test_every_stage_depends_on_its_script_and_pipeline_module_and_every_code_dep_exists():
    s = _stages("x")
    assert set(s) == set(STAGES)
    for name, stage in s.items():
        deps = _names(stage["deps"])
        assert {f"stages/{name}.py", f"lib/amadeus/pipeline/{name}.py", "lib/amadeus/pipeline/paths.py"} <= deps, name
        assert stage["cmd"].startswith(f"python stages/{name}.py"), name
        for dep in deps:
            if dep.startswith(("lib/", "stages/")):
                assert (ROOT / dep).exists(), f"{name}: {dep} does not exist"


def _expanded() -> dict[str, dict]:
    """dvc.yaml's stages as DVC names them (generate@perceiver_ar, ...), foreach expanded over params.yaml."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        over = params[stage["foreach"].strip("${}")]
        for key in over:
            out[f"{name}@{key}"] = yaml.safe_load(yaml.safe_dump(stage["do"]).replace("${key}", key))
    return out


def _under(a: str, b: str) -> bool:
    """One path is the other or inside it (a dependency on a folder sees every file in it)."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def rerun_by(param: str) -> set[str]:
    """The stages `dvc repro` reruns after `param` (a dotted params.yaml key) changes: those that read it
    or a section holding it, and every stage that depends on their outputs."""
    stages = _expanded()
    outs = {name: _names(s.get("outs")) | _names(s.get("metrics")) | _names(s.get("plots"))
            for name, s in stages.items()}
    rerun = {name for name, s in stages.items()
             if any(param == p or param.startswith(f"{p}.") for p in _names(s.get("params")))}
    grew = True
    while grew:
        downstream = {name for name, s in stages.items() if name not in rerun and any(
            _under(dep, out) for dep in _names(s["deps"]) for r in rerun for out in outs[r])}
        rerun |= downstream
        grew = bool(downstream)
    return rerun


def test_a_sampling_setting_reruns_generate_and_evaluate_only():
    families = yaml.safe_load((ROOT / "params.yaml").read_text())["models"]
    generate = {f"generate@{f}" for f in families}
    assert rerun_by("generate.temperature") == generate | {"evaluate"}
    assert rerun_by("generate.eval_seconds") == generate | {"evaluate"}
    assert rerun_by("score.events_per_piece") == {f"score@{f}" for f in families}
    assert rerun_by("evaluate.bootstrap") == {"evaluate"}
    assert {f"score@{f}" for f in families} <= rerun_by("quantize.mode")  # a new int8 model is rescored
    for name, stage in _expanded().items():
        if name.startswith("score@"):
            assert not any(p.split(".")[0] == "generate" for p in _names(stage["params"])), name


def test_paths_are_relative_to_the_root():
    root = Path("/work/space")
    assert paths.checkpoint("performance_rnn", root=root) == root / "save/performance_rnn.sess"
    assert paths.checkpoint("performance_rnn", "int8", root) == root / "save/performance_rnn.int8.sess"
    assert paths.pieces_dir("perceiver_ar", "int8", root) == root / "output/perceiver_ar/int8"
    assert paths.metrics_file("evaluate", root=root, suffix=".md") == root / "output/metrics/evaluate.md"
    assert paths.downloads_dir("mine", root) == root / "dataset/downloads/mine"
