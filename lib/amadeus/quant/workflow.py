"""What the calibrate and quantize stages do with a model: fixed windows, statistics, NLL, speed.

`quantize_checkpoint` is the whole quantize stage short of writing its files.

fp32 and int8 are always measured on identical inputs: the same seeded validation windows for the
NLL, and the same seeded sampling for generation speed, interleaved in one run (REFERENCE.md §4.4:
the seed project compared different random batches).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from amadeus.errors import UserError
from amadeus.hardware import machine
from amadeus.params import as_dict, build, knob, section
from amadeus.quant.convert import calibration_model, quantize_model, state_bytes
from amadeus.quant.stats import StatsCollector
from amadeus.sampling import draw
from amadeus.vocab import PAD_ID, SHIFT_1S, VOCAB_SIZE


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


def mean_nll(model: nn.Module, windows: Sequence[Batch]) -> float:
    """Mean NLL (nats/event) over the windows, in eval mode: the evaluate stage's evaluator
    (amadeus.metrics.evaluate_nll), so val_nll_fp32/int8 and evaluate's val_nll are measured alike."""
    from amadeus.metrics import evaluate_nll

    return evaluate_nll(model, windows)


@torch.no_grad()
def generate_tokens(model: nn.Module, tokens: int, seed: int = 0) -> float:
    """Per-event sampling at batch 1 (temperature 1, the generate stage's sampler) for `tokens` events;
    returns tokens/s."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.full((1, 1), SHIFT_1S, dtype=torch.long)  # a 1 s time shift: valid in every family
    logits, state = model.prefill(prompt)
    start = time.perf_counter()
    for _ in range(tokens):
        nxt = draw(logits[:, :VOCAB_SIZE].float(), generator=gen)
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


@dataclass
class Quantized:
    """What the quantize stage writes (the int8 checkpoint, its metrics) and reports (unrounded NLLs, timing)."""

    checkpoint: dict
    metrics: dict
    nll_fp32: float
    nll_int8: float
    timed_seconds: float


def quantize_checkpoint(family: str, params: dict, root: Path = Path(".")) -> Quantized:
    """save/<family>.sess + stats/<family>.yaml -> the int8 checkpoint and the quantize_<family>.json metrics.

    fp32 and int8 are compared on the same seeded validation windows (NLL) and the same seeded
    sampling (speed, interleaved in this run).
    """
    from amadeus.checkpoint import checkpoint_path, load_model
    from amadeus.data import load_split

    calib = build(CalibrateConfig, section(params, "calibrate"), "calibrate")
    config = build(QuantizeConfig, section(params, "quantize"), "quantize")
    stats_path = root / "stats" / f"{family}.yaml"
    try:
        with open(stats_path) as f:
            stats = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{stats_path}: not found; run the calibrate stage first") from None
    model, ckpt = load_model(checkpoint_path(family, "fp32", root))
    model.eval()
    folders = [root / "dataset" / "processed" / name for name in section(params, "datasets")]
    windows = fixed_windows(load_split(folders, "validation"), config.eval_batches, calib.batch_size,
                            calib.window, config.eval_seed, controls=getattr(model, "uses_controls", False))

    qmodel = copy.deepcopy(model)
    info = quantize_model(qmodel, stats, config.mode, config.clip, config.n_std, config.eltwise_dtype)
    nll_fp32, nll_int8 = mean_nll(model, windows), mean_nll(qmodel, windows)
    start = time.perf_counter()
    speed = compare_speed(model, qmodel, config.bench_tokens, config.bench_rounds, config.threads)
    timed = time.perf_counter() - start
    fp32_bytes, int8_bytes = state_bytes(model), state_bytes(qmodel)

    out = dict(ckpt)
    out.update(precision="int8", model=qmodel.state_dict(), optimizer=None, scheduler=None, quant=info)
    out["params"] = {**(ckpt.get("params") or {}), "calibrate": as_dict(calib), "quantize": as_dict(config)}
    metrics = {
        "fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes, "size_ratio": round(int8_bytes / fp32_bytes, 4),
        "val_nll_fp32": round(nll_fp32, 5), "val_nll_int8": round(nll_int8, 5),
        "nll_delta_rel": round((nll_int8 - nll_fp32) / nll_fp32, 5),
        "tokens_per_second_fp32": speed["tokens_per_second_fp32"],
        "tokens_per_second_int8": speed["tokens_per_second_int8"],
        "speedup": speed["speedup"], "mode": config.mode, "clip": config.clip, "threads": config.threads,
        "eltwise_dtype": config.eltwise_dtype, "machine": machine(), "torch": torch.__version__,
    }
    return Quantized(out, metrics, nll_fp32, nll_int8, timed)


def int8_with_random_calibration(model: nn.Module, seed: int = 0) -> nn.Module:
    """An int8 copy of `model` with static ranges from 4 random windows: for speed benchmarks,
    where the weights are random too and only the arithmetic matters."""
    rng = np.random.default_rng(seed)
    windows = [(torch.from_numpy(rng.integers(0, PAD_ID, (4, 201))), None) for _ in range(4)]
    q = copy.deepcopy(model)
    quantize_model(q, calibrate(model, windows))
    return q.eval()
