"""DVC on a tiny copy of the project: the real dvc.yaml and stage scripts, a `local` source of a few
MIDI files, a tiny Performance RNN trained for a few steps. Two queued experiments are compared with
`dvc exp show --json`; the workspace is pushed to a local-folder remote and pulled into a fresh clone,
where nothing is left to run; `dvc exp run -S` changes only the line it sets in the real params.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]
TARGET = "train@performance_rnn"
TINY = {
    "sources": {"mine": {"kind": "local", "path": "PLACEHOLDER"}},
    "datasets": ["mine"],
    "codec": {"flavour": "magenta", "max_note_seconds": 5.0, "max_piece_seconds": 14400},
    "preprocess": {"workers": 0, "split": [0.6, 0.2, 0.2], "seed": 1},
    "models": {"performance_rnn": {"embed_dim": 8, "input_size": 16, "hidden_size": 16, "num_layers": 1,
                                   "dropout": 0.0, "controls": False}},
    "train": {"defaults": {"device": "cpu", "cpu_precision": "fp32", "threads": 1, "window": 24, "stride": 4,
                           "batch_size": 2, "max_steps": 4, "val_every": 2, "val_windows": 2, "log_every": 1,
                           "warmup_steps": 1, "release_prior_events": 50},
              "performance_rnn": {"lr": 0.002}},
}


def _run(args: list[str], cwd: Path, check: bool = True) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               PYTHONPATH=str(cwd / "lib"))
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _midi(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    t = 0.0
    for _ in range(80):
        piano.notes.append(pretty_midi.Note(int(rng.integers(40, 100)), int(rng.integers(48, 84)), t,
                                            t + float(rng.uniform(0.1, 0.6))))
        t += float(rng.uniform(0.05, 0.3))
    pm.instruments.append(piano)
    pm.write(str(path))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A git + DVC repository with the project's dvc.yaml, stages and library, tiny params, one
    `dvc repro` of the data and train stages committed (dvc.lock, metrics/, plots/)."""
    base = tmp_path_factory.mktemp("dvcexp")
    ws = base / "ws"
    ws.mkdir()
    for item in ("dvc.yaml", "stages", "lib", ".gitignore"):
        src = ROOT / item
        (shutil.copytree(src, ws / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
         if src.is_dir() else shutil.copy(src, ws / item))
    midi = base / "midi"
    midi.mkdir()
    for i in range(5):
        _midi(midi / f"p{i}.mid", i)
    params = json.loads(json.dumps(TINY))
    params["sources"]["mine"]["path"] = str(midi)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], ws)
    _run(DVC + ["init", "-q"], ws)
    _run(["git", "add", "-A"], ws)
    _run(["git", "commit", "-qm", "tiny project"], ws)
    _run(DVC + ["repro", TARGET], ws)
    _run(["git", "add", "-A"], ws)
    _run(["git", "commit", "-qm", "baseline run"], ws)
    return ws


def test_queued_experiments_compare_with_exp_show(workspace: Path):
    ws = workspace
    assert (ws / "metrics/train_performance_rnn.json").is_file() and (ws / "plots").is_dir()
    tracked = _run(["git", "ls-files", "metrics", "plots", "dvc.lock"], ws).split()
    assert {"metrics/train_performance_rnn.json", "plots/performance_rnn_val_nll.csv", "dvc.lock"} <= set(tracked)
    assert "timings" not in _run(["git", "status", "--porcelain", "--ignored"], ws).replace("!! timings/", "")
    assert _run(["git", "status", "--porcelain"], ws) == ""  # a run leaves git clean

    for lr in ("0.02", "0.05"):
        _run(DVC + ["exp", "run", "--queue", "-S", f"train.performance_rnn.lr={lr}", TARGET], ws)
    _run(DVC + ["queue", "start", "-j", "1"], ws)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = _run(DVC + ["queue", "status"], ws)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Failed" not in status, status
    shown = json.loads(_run(DVC + ["exp", "show", "--json"], ws))
    rows = {}
    for entry in shown:
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                lr = data["params"]["params.yaml"]["data"]["train"]["performance_rnn"]["lr"]
                rows[lr] = data["metrics"]["metrics/train_performance_rnn.json"]["data"]
    assert set(rows) == {0.02, 0.05}, shown
    for m in rows.values():  # headline numbers only, no timing
        assert m["stopped_by"] == "max_steps" and m["steps"] == 4 and m["val_nll"] > 0
        assert not {"seconds", "tokens_per_second"} & set(m)
    assert rows[0.02]["val_nll"] != rows[0.05]["val_nll"]  # the experiments really differ


def test_push_then_pull_into_a_fresh_clone_leaves_nothing_to_run(workspace: Path, tmp_path: Path):
    ws = workspace
    remote = tmp_path / "remote"
    _run(DVC + ["remote", "add", "-d", "--local", "shared", str(remote)], ws)
    _run(DVC + ["push", "--with-deps", TARGET], ws)  # the stages this tiny project ran
    assert any(remote.rglob("*"))
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(ws), str(clone)], tmp_path)
    _run(DVC + ["remote", "add", "-d", "--local", "shared", str(remote)], clone)
    _run(DVC + ["pull", "--with-deps", TARGET], clone)
    assert (clone / "save/performance_rnn.sess").read_bytes() == (ws / "save/performance_rnn.sess").read_bytes()
    assert "up to date" in _run(DVC + ["status", "--with-deps", TARGET], clone).lower()
    dry = _run(DVC + ["repro", "--dry", TARGET], clone)
    assert "Running stage" not in dry and "didn't change" in dry


def test_exp_run_set_param_changes_only_its_line_of_params_yaml(tmp_path: Path):
    ws = tmp_path / "s"
    ws.mkdir()
    shutil.copy(ROOT / "params.yaml", ws / "params.yaml")
    (ws / "dvc.yaml").write_text("stages:\n  echo:\n    cmd: python -c \"print(1)\"\n    params:\n"
                                 "      - generate.temperature\n      - train.defaults.max_seconds\n")
    _run(["git", "init", "-q"], ws)
    _run(DVC + ["init", "-q"], ws)
    _run(["git", "add", "-A"], ws)
    _run(["git", "commit", "-qm", "init"], ws)
    _run(DVC + ["exp", "run", "-S", "generate.temperature=0.9", "-S", "train.defaults.max_seconds=600"], ws)
    diff = _run(["git", "diff", "-U0", "params.yaml"], ws)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert sorted(changed, key=lambda s: s[1:]) == sorted([
        "-  temperature: 1.0", "+  temperature: 0.9",
        next(line for line in changed if line.startswith("-    max_seconds: 0")),
        next(line for line in changed if line.startswith("+    max_seconds: 600")),
    ], key=lambda s: s[1:]), diff
