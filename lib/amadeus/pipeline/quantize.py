"""Stage quantize@<family>: save/<family>.sess + stats/<family>.yaml -> save/<family>.int8.sess + metrics.

Real int8 post-training quantization (amadeus.quant): int8 weights per output channel, static int8
activations from the calibration ranges, GRU gate arithmetic in float. fp32 and int8 are always
measured on identical inputs, in this run: the same seeded validation windows for the NLL, and the
same seeded sampling for generation speed, interleaved (docs/quantization.md: the seed project
compared different random batches).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from amadeus.checkpoint import load_model, save
from amadeus.errors import UserError
from amadeus.fileio import write_json
from amadeus.hardware import machine
from amadeus.nll import mean_nll
from amadeus.params import as_dict, build, knob, section, seed_knob
from amadeus.pipeline import paths
from amadeus.pipeline.calibrate import CalibrateConfig, validation_windows
from amadeus.quant import quantize_model, state_bytes
from amadeus.sampling import draw
from amadeus.vocab import SHIFT_1S, VOCAB_SIZE


@dataclass
class QuantizeConfig:
    """params.yaml `quantize`: how the int8 model is made and how it is compared with fp32."""

    mode: str = knob("asymmetric_signed", choices=("asymmetric_signed", "asymmetric_unsigned", "symmetric"))
    clip: str = knob("avg", choices=("avg", "none", "n_std"), help="activation range from the stats")
    n_std: float = knob(3.0, gt=0, help="clip n_std: mean +- n_std * std")
    eltwise_dtype: str = knob("auto", choices=("auto", "float16", "float32"),
                              help="GRU gate arithmetic; auto = float16 on CUDA, float32 on CPU")
    eval_batches: int = knob(8, min=1, help="validation batches for val_nll_fp32/int8 (calibrate's size)")
    eval_seed: int = seed_knob(4321, help="windows for the NLL; differs from calibrate.seed (no eval on calib data)")
    bench_tokens: int = knob(400, min=10, help="events generated per timing round, batch 1")
    bench_rounds: int = knob(9, min=1, help="interleaved fp32/int8 rounds; the median counts")
    threads: int = knob(1, min=1, help="torch threads while timing")


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
    timings: dict


def quantize_checkpoint(params: dict, root: Path, family: str) -> Quantized:
    """save/<family>.sess + stats/<family>.yaml -> the int8 checkpoint and its metrics, nothing written."""
    calib = build(CalibrateConfig, section(params, "calibrate"), "calibrate")
    config = build(QuantizeConfig, section(params, "quantize"), "quantize")
    stats_path = paths.stats_file(family, root)
    try:
        with open(stats_path) as f:
            stats = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{stats_path}: not found; run the calibrate stage first") from None
    model, ckpt = load_model(paths.checkpoint(family, root=root))
    model.eval()
    ids, ctrl = validation_windows(params, root, config.eval_batches * calib.batch_size, calib.window,
                                   config.eval_seed, controls=getattr(model, "uses_controls", False))

    qmodel = copy.deepcopy(model)
    info = quantize_model(qmodel, stats, config.mode, config.clip, config.n_std, config.eltwise_dtype)
    nll_fp32 = mean_nll(model, ids, ctrl, batch_size=calib.batch_size)
    nll_int8 = mean_nll(qmodel, ids, ctrl, batch_size=calib.batch_size)
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
        "mode": config.mode, "clip": config.clip, "eltwise_dtype": config.eltwise_dtype,
    }
    # Speed is a measurement of this machine, not a result: timings/, which neither DVC nor git tracks.
    timings = {**speed, "threads": config.threads, "machine": machine(), "torch": torch.__version__,
               "timed_seconds": round(timed, 1)}
    return Quantized(out, metrics, nll_fp32, nll_int8, timed, timings)


def run(params: dict, root: Path, family: str) -> dict:
    """Write save/<family>.int8.sess and output/metrics/quantize_<family>.json; returns the metrics."""
    result = quantize_checkpoint(params, root, family)
    out = paths.checkpoint(family, "int8", root)
    save(out, result.checkpoint)
    write_json(paths.metrics_file("quantize", family, root), result.metrics)
    write_json(paths.headline_file("quantize", family, root), {k: result.metrics[k] for k in HEADLINE})
    write_json(paths.timings_file("quantize", family, root), result.timings)
    m, t = result.metrics, result.timings
    print(f"quantize {family}: size x{m['size_ratio']}, NLL {result.nll_fp32:.4f} -> {result.nll_int8:.4f} "
          f"({m['nll_delta_rel']:+.2%}), {t['tokens_per_second_fp32']} -> {t['tokens_per_second_int8']} tokens/s "
          f"({t['speedup']}x, {t['threads']} thread(s), timed in {result.timed_seconds:.0f} s) -> {out}")
    return {**m, **t}


# The int8 model's size and its NLL relative to fp32 (the absolute NLLs, on quantize's own seeded windows,
# stay in output/metrics/: the model's validation NLL in `dvc metrics show` is train's val_nll).
HEADLINE = ("fp32_bytes", "int8_bytes", "size_ratio", "nll_delta_rel")
