"""End to end: a real git + DVC workspace in a temp dir, a `local` source of MIDI files the test
writes, `dvc repro` of the data stages, then the no-op and the param-change behaviour."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import yaml

from amadeus.pipeline import paths

ROOT = Path(__file__).resolve().parents[1]


def _write_midi(path: Path, seed: int, notes: int = 60) -> None:
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    t = 0.0
    for _ in range(notes):
        t += float(rng.uniform(0.05, 0.4))
        piano.notes.append(pretty_midi.Note(int(rng.integers(30, 90)), int(rng.integers(20, 120)),
                                            t, t + float(rng.uniform(0.1, 1.0))))
    pm.instruments.append(piano)
    pm.write(str(path))


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    for item in ("dvc.yaml", "stages", "lib"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, ws / item)
    midi = tmp_path / "my-midi"
    (midi / "sub").mkdir(parents=True)
    for i in range(10):
        _write_midi(midi / ("sub" if i % 2 else "") / f"piece{i}.mid", seed=i)
    (midi / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sources"] = {"mine": {"kind": "local", "path": str(midi)}}
    params["datasets"] = ["mine"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], ws)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init"], ws)
    _run([sys.executable, "-m", "dvc", "init", "-q"], ws)
    return ws


def test_data_stages_run_once_then_only_what_changed(workspace: Path) -> None:
    dvc = [sys.executable, "-m", "dvc"]
    out = _run(dvc + ["repro", "preprocess@mine"], workspace)
    assert "Running stage 'download@mine'" in out and "Running stage 'preprocess@mine'" in out

    processed = paths.processed_dir("mine", workspace)
    manifest = json.loads((processed / "manifest.json").read_text())
    assert len(manifest["pieces"]) == 10
    assert [s["source"] for s in manifest["skipped"]] == ["broken.mid"]
    assert sorted(p["split"] for p in manifest["pieces"]).count("train") == 8
    for piece in manifest["pieces"]:
        ids = np.load(processed / piece["file"], allow_pickle=False)
        assert ids.dtype == np.uint16 and len(ids) == piece["events"] > 0
    metrics = json.loads(paths.metrics_file("preprocess", "mine", workspace).read_text())
    assert metrics["files_total"] == 11 and metrics["files_ok"] == 10 and metrics["files_skipped"] == 1
    assert metrics["notes"] == 600
    before = {p.name: p.read_bytes() for p in processed.glob("*.data")}

    out = _run(dvc + ["repro", "preprocess@mine"], workspace)
    assert "Running stage" not in out

    shown = _run(dvc + ["metrics", "show"], workspace)
    assert "preprocess_mine.json" in shown and "music_seconds" in shown and "notes_per_second" not in shown

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["preprocess"]["seed"] = 99
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(dvc + ["repro", "preprocess@mine"], workspace)
    assert "Running stage 'preprocess@mine'" in out and "Running stage 'download@mine'" not in out
    after = {p.name: p.read_bytes() for p in processed.glob("*.data")}
    assert after == before  # a new split seed changes the manifest, never the event bytes
