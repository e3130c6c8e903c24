"""What the calibrate and quantize stages do with a model: fixed windows, statistics, NLL, speed.

fp32 and int8 are always measured on identical inputs: the same seeded validation windows for the
NLL, and the same seeded sampling for generation speed, interleaved in one run (REFERENCE.md §4.4:
the seed project compared different random batches).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from amadeus.errors import UserError
from amadeus.params import knob
from amadeus.quant.convert import calibration_model
from amadeus.quant.stats import StatsCollector


@dataclass
class CalibrateConfig:
    batches: int = knob(8, min=1, help="validation batches the hooks observe")
    batch_size: int = knob(4, min=1)
    window: int = knob(200, min=1, help="events per window (the model sees window+1 ids)")
    seed: int = knob(1234, help="which validation windows")
    threads: int = knob(1, min=1, help="torch threads: per-step ops are tiny, more threads only contend")


@dataclass
class QuantizeConfig:
    mode: str = knob("asymmetric_signed", choices=("asymmetric_signed", "asymmetric_unsigned", "symmetric"))
    clip: str = knob("avg", choices=("avg", "none", "n_std"), help="activation range from the stats")
    n_std: float = knob(3.0, gt=0, help="clip n_std: mean +- n_std * std")
    eltwise_dtype: str = knob("auto", choices=("auto", "float16", "float32"),
                              help="GRU gate arithmetic; auto = float16 on CUDA, float32 on CPU")
    eval_batches: int = knob(8, min=1, help="validation batches for val_nll_fp32/int8 (calibrate's size)")
    eval_seed: int = knob(4321, help="windows for the NLL; differs from calibrate.seed (no eval on calib data)")
    bench_tokens: int = knob(400, min=10, help="events generated per timing round, batch 1")
    bench_rounds: int = knob(5, min=1, help="interleaved fp32/int8 rounds; the median counts")
    threads: int = knob(1, min=1, help="torch threads while timing")


Batch = tuple[torch.Tensor, torch.Tensor | None]


def fixed_windows(pieces: Sequence[np.ndarray], batches: int, batch_size: int, window: int, seed: int,
                  controls: bool = False) -> list[Batch]:
    """`batches` batches of ids [B, window+1] (and controls [B, window+1, 24] if asked), seeded.

    Each window is a uniformly chosen piece (long enough) and start; the same arguments always
    give the same windows.
    """
    usable = [p for p in pieces if len(p) >= window + 1]
    if not usable:
        raise UserError(f"validation split: no piece has {window + 1} events; lower calibrate.window")
    ctrl = None
    if controls:
        from amadeus.controls import piece_controls
        ctrl = [piece_controls(p) for p in usable]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        ids, cs = [], []
        for _ in range(batch_size):
            k = int(rng.integers(len(usable)))
            s = int(rng.integers(len(usable[k]) - window))
            ids.append(usable[k][s:s + window + 1].astype(np.int64))
            if ctrl is not None:
                cs.append(ctrl[k][s:s + window + 1])
        out.append((torch.from_numpy(np.stack(ids)),
                    torch.from_numpy(np.stack(cs)).float() if ctrl is not None else None))
    return out


def _loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    ids, controls = batch
    return model.loss(ids, controls) if controls is not None else model.loss(ids)


@torch.no_grad()
def calibrate(model: nn.Module, windows: Sequence[Batch], threads: int | None = None) -> dict:
    """Statistics of every leaf module of `model` (GRUs decomposed) over teacher-forced windows."""
    cm = calibration_model(model)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with StatsCollector(cm) as sc:
            for batch in windows:
                _loss(cm, batch)
    finally:
        torch.set_num_threads(old)
    return sc.stats()


@torch.no_grad()
def mean_nll(model: nn.Module, windows: Sequence[Batch]) -> float:
    """Mean NLL (nats/event) over the windows (all batches have the same size)."""
    model.eval()
    return float(np.mean([_loss(model, b).item() for b in windows]))


@torch.no_grad()
def generate_tokens(model: nn.Module, tokens: int, seed: int = 0) -> float:
    """Per-event sampling at batch 1 (temperature 1) for `tokens` events; returns tokens/s."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.full((1, 1), 355, dtype=torch.long)  # a 1 s time shift: valid in every family
    logits, state = model.prefill(prompt)
    start = time.perf_counter()
    for _ in range(tokens):
        nxt = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen)[:, 0]
        logits, state = model.step(nxt, state)
    return tokens / (time.perf_counter() - start)


def compare_speed(fp32: nn.Module, int8: nn.Module, tokens: int, rounds: int, threads: int) -> dict:
    """Median tokens/s of both models, measured alternately in one run with pinned threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generate_tokens(fp32, min(tokens, 50))  # warm-up (allocator, first-call paths)
        generate_tokens(int8, min(tokens, 50))
        a, b = [], []
        for _ in range(rounds):
            a.append(generate_tokens(fp32, tokens))
            b.append(generate_tokens(int8, tokens))
    finally:
        torch.set_num_threads(old)
    return {"tokens_per_second_fp32": round(statistics.median(a), 1),
            "tokens_per_second_int8": round(statistics.median(b), 1),
            "speedup": round(statistics.median(b) / statistics.median(a), 3)}


def machine() -> str:
    """The CPU model name (lscpu's), for benchmark records."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
