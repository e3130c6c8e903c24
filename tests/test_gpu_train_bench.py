"""bench/gpu_train.py's logic on the CPU: CI has no GPU, so what the GPU run relies on is checked here
(the peak table, device and precision choice, the FLOP count, MFU, one and two DDP processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pretty_midi
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import gpu_train  # noqa: E402


def test_peak_table_names_the_chips():
    assert gpu_train.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_train.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_train.peak_tflops("NVIDIA H200") == 989.4
    assert gpu_train.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_train.peak_tflops("Tesla T4") is None  # unknown: the script asks for --peak-tflops


def test_device_and_precision_choice(monkeypatch):
    assert gpu_train.pick_device("cpu", 3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert gpu_train.pick_device("auto", 0) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_train.pick_device("auto", 3) == torch.device("cuda", 3)  # one process per GPU: LOCAL_RANK
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert gpu_train.distributed() == (5, 8, 1)
    assert gpu_train.autocast_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert gpu_train.autocast_dtype(torch.device("cpu")) is None
    assert not isinstance(gpu_train.precision(torch.device("cpu")), torch.autocast)


def test_flops_are_counted_per_window_and_mfu_follows():
    model, window, _ = gpu_train.models(tiny=True)["performance_rnn"]
    ids = torch.randint(0, 388, (4, window + 1))
    flops = gpu_train.count_flops(model, ids)
    params = sum(p.numel() for p in model.parameters())
    assert 0.5 < flops / (6 * params * 4 * window) < 1.5  # about 6 x parameters x tokens, as for any dense model
    assert gpu_train.count_flops(model, ids[:2]) == pytest.approx(flops / 2)
    run = gpu_train.Run("m", params, 1000, 2e12, 0.01, 0)
    assert run.tokens_per_second == pytest.approx(1e5)
    assert run.mfu(400.0) == pytest.approx(0.5) and run.mfu(None) is None


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """A processed dataset made by the pipeline's own preprocessing from a few written MIDI files."""
    from amadeus import codec
    from amadeus.preprocess import PreprocessConfig, preprocess

    root = tmp_path_factory.mktemp("gpu-bench")
    for k in range(6):
        pm = pretty_midi.PrettyMIDI()
        piano = pretty_midi.Instrument(0)
        piano.notes += [pretty_midi.Note(60 + (i * 5 + k) % 24, 48 + (i * 7 + k) % 30, i * 0.15, i * 0.15 + 0.3)
                        for i in range(120)]
        pm.instruments.append(piano)
        pm.write(str(root / f"piece{k}.mid"))
    preprocess(root, root / "processed" / "tiny", PreprocessConfig(workers=0, split=[0.7, 0.15, 0.15]),
               codec.CodecConfig())
    return root / "processed"


def test_the_script_trains_alone_and_as_two_ddp_processes(processed):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--data", str(processed)]
    alone = subprocess.run([sys.executable, str(BENCH / "gpu_train.py"), *args], capture_output=True, text=True,
                           env=env, timeout=120)
    assert alone.returncode == 0, alone.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          str(BENCH / "gpu_train.py"), *args], capture_output=True, text=True, env=env, timeout=180)
    assert two.returncode == 0, two.stderr[-2000:]
    for out, processes in ((alone.stdout, 1), (two.stdout, 2)):
        assert f"x {processes} process(es)" in out
        rows = [line.split() for line in out.splitlines() if line.startswith(("perceiver_ar", "performance_rnn"))]
        assert len(rows) == 2 and all(float(r[2].replace(",", "")) > 0 for r in rows), out
