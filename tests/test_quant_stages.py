"""The calibrate and quantize stages on a tiny workspace: stats YAML, .int8.sess, metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from amadeus import checkpoint
from amadeus.data import save_events
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
from amadeus.params import as_dict
from amadeus.pipeline import paths

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"fp32_bytes", "int8_bytes", "size_ratio", "val_nll_fp32", "val_nll_int8", "nll_delta_rel", "mode",
               "clip"}
TIMING_KEYS = {"tokens_per_second_fp32", "tokens_per_second_int8", "speedup", "threads", "machine"}


def _workspace(tmp: Path) -> None:
    rng = np.random.default_rng(0)
    folder = paths.processed_dir("toy", tmp)
    folder.mkdir(parents=True)
    pieces = []
    for i in range(3):
        name = f"p{i}.data"
        save_events(folder / name, np.repeat(rng.integers(0, 388, 60), 2).astype(np.uint16))
        pieces.append({"name": name, "file": name, "source": f"p{i}.mid", "split": "validation", "events": 120})
    (folder / "manifest.json").write_text(json.dumps({"pieces": pieces}))
    torch.manual_seed(0)
    config = PerformanceRNNConfig(embed_dim=8, input_size=16, hidden_size=16, num_layers=2)
    model = PerformanceRNN(config)
    checkpoint.save(paths.checkpoint("performance_rnn", root=tmp), {
        "format": checkpoint.FORMAT, "family": "performance_rnn", "config": as_dict(config), "precision": "fp32",
        "model": model.state_dict(), "optimizer": None, "scheduler": None, "step": 0, "rng": {}, "params": {},
        "codec": {"flavour": "magenta"}})
    (tmp / "params.yaml").write_text(yaml.safe_dump({
        "datasets": ["toy"],
        "calibrate": {"batches": 2, "batch_size": 2, "window": 30, "seed": 1, "threads": 1},
        "quantize": {"mode": "asymmetric_signed", "clip": "avg", "n_std": 3.0, "eltwise_dtype": "auto",
                     "eval_batches": 2, "eval_seed": 2, "bench_tokens": 10, "bench_rounds": 1, "threads": 1}}))


def _run(tmp: Path, stage: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    return subprocess.run([sys.executable, str(ROOT / "stages" / stage), "performance_rnn"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)


def test_calibrate_and_quantize_stages(tmp_path):
    _workspace(tmp_path)
    bad = _run(tmp_path, "quantize.py")  # no stats yet: one clear line, no traceback
    assert bad.returncode == 2 and "calibrate" in bad.stderr and "Traceback" not in bad.stderr

    done = _run(tmp_path, "calibrate.py")
    assert done.returncode == 0, done.stderr
    stats = yaml.safe_load(paths.stats_file("performance_rnn", tmp_path).read_text())
    assert {"gru.cells.0.fc_gate_x", "gru.cells.1.mult_z", "head", "proj"} <= set(stats)
    assert set(stats["head"]["inputs"][0]) == {"min", "max", "avg_min", "avg_max", "mean", "std", "shape"}

    done = _run(tmp_path, "quantize.py")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(paths.metrics_file("quantize", "performance_rnn", tmp_path).read_text())
    assert set(metrics) >= METRIC_KEYS and not set(metrics) & TIMING_KEYS  # speed: timings/, untracked
    timings = json.loads(paths.timings_file("quantize", "performance_rnn", tmp_path).read_text())
    assert set(timings) >= TIMING_KEYS and timings["tokens_per_second_int8"] > 0
    headline = json.loads(paths.headline_file("quantize", "performance_rnn", tmp_path).read_text())
    assert headline == {k: metrics[k] for k in ("fp32_bytes", "int8_bytes", "size_ratio", "nll_delta_rel")}
    assert metrics["int8_bytes"] < metrics["fp32_bytes"]
    int8 = paths.checkpoint("performance_rnn", "int8", tmp_path)
    raw = torch.load(int8, weights_only=True)
    assert raw["precision"] == "int8" and raw["model"]["head.weight"].dtype == torch.int8
    assert raw["params"]["quantize"]["mode"] == "asymmetric_signed"
    model, _ = checkpoint.load_model(int8)
    logits, state = model.prefill(torch.tensor([[60, 300], [62, 301]]))
    logits, state = model.step(logits.argmax(-1), model.reorder_state(state, torch.tensor([1, 0])))
    assert logits.shape == (2, 388) and torch.isfinite(logits).all()
