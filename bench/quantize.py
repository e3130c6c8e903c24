"""Benchmark: int8 Performance RNN generation vs fp32 and vs the deprecated torch.ao baseline.

Per-event sampling at batch 1 (what `generate` and the live mode do), every variant measured
alternately in the same run with pinned threads; the median of the rounds counts. Also single-matmul
probes of the kernels a GRU layer step could use (one layer's 3H x H gate projection).

    python bench/quantize.py                         # 3x512 Performance RNN, random weights
    python bench/quantize.py --sess save/performance_rnn.sess --threads 2   # a trained checkpoint

torch.ao.quantization.quantize_dynamic appears only here, as a baseline: it is deprecated
(docs/quantization.md) and its packed weights do not load with torch.load(weights_only=True).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from amadeus.hardware import machine
from amadeus.pipeline.quantize import generate_tokens
from amadeus.quant import calibrate, quantize_model, state_bytes
from amadeus.vocab import VOCAB_SIZE


def _model(args: argparse.Namespace) -> nn.Module:
    if args.sess:
        from amadeus.checkpoint import load_model
        return load_model(args.sess)[0].eval()
    from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
    torch.manual_seed(0)
    cfg = PerformanceRNNConfig(embed_dim=args.embed, input_size=args.hidden, hidden_size=args.hidden,
                               num_layers=args.layers)
    return PerformanceRNN(cfg).eval()


def _dynamic_ao(model: nn.Module) -> nn.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic
            return quantize_dynamic(copy.deepcopy(model), {nn.GRU, nn.Linear}, dtype=torch.qint8)
    except Exception as e:  # gone in a later torch: the baseline is optional
        print(f"torch.ao dynamic baseline unavailable: {e}")
        return None


def _time_us(fn, n: int = 300) -> float:
    for _ in range(20):
        fn()
    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(best)


def kernel_probes(hidden: int) -> None:
    x = torch.randn(1, hidden)
    w = torch.randn(3 * hidden, hidden)
    q = torch.randint(-128, 128, (3 * hidden, hidden), dtype=torch.int8)
    xq = torch.randint(-128, 128, (1, hidden), dtype=torch.int8)
    scales = torch.rand(3 * hidden, dtype=torch.bfloat16)
    xb = x.bfloat16()
    probes = {
        "F.linear fp32": lambda: F.linear(x, w),
        "_int_mm int8 x int8 (weight as transposed view)": lambda: torch._int_mm(xq, q.t()),
        "_int_mm, weight transposed contiguous": lambda: torch._int_mm(xq, q.t().contiguous()),
        "_weight_int8pack_mm, bf16 activations": lambda: torch.ops.aten._weight_int8pack_mm(xb, q, scales),
    }
    a, b = torch.randn(1, hidden), torch.randn(1, hidden)
    ah, bh = a.half(), b.half()
    probes["eltwise add+sigmoid fp32"] = lambda: torch.sigmoid(a + b)
    probes["eltwise add+sigmoid fp16"] = lambda: torch.sigmoid(ah + bh)
    probes["eltwise fp16 incl. casts in/out"] = lambda: torch.sigmoid(a.half() + b.half()).float()
    print(f"\nsingle ops, x [1, {hidden}] x W [{3 * hidden}, {hidden}] (one GRU layer's gates), µs:")
    for name, fn in probes.items():
        try:
            print(f"  {name:50s} {_time_us(fn):8.1f}")
        except RuntimeError as e:
            print(f"  {name:50s} unsupported: {str(e).splitlines()[0]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sess", help="an fp32 .sess (default: random 3x512 Performance RNN)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = _model(args)
    variants = {"fp32": model}
    for dtype in ("float32", "float16"):
        q = copy.deepcopy(model)
        quantize_model(q, None, eltwise_dtype=dtype)  # dynamic ranges: same kernels as static, + 2 ops
        variants[f"int8 amadeus, dynamic act, eltwise {dtype}"] = q
    # static ranges from a short calibration on random ids (speed does not depend on the values)
    ids = torch.randint(0, VOCAB_SIZE, (2, 65))
    stats = calibrate(model, ids, batch_size=2)
    q = copy.deepcopy(model)
    quantize_model(q, stats)
    variants["int8 amadeus, static act (product)"] = q
    ao = _dynamic_ao(model)
    if ao is not None:
        variants["torch.ao dynamic qint8 (deprecated baseline)"] = ao

    print(f"machine: {machine()}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"batch 1, {args.tokens} tokens x {args.rounds} rounds, median")
    for m in variants.values():
        generate_tokens(m, 50)
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, m in variants.items():
            runs[name].append(generate_tokens(m, args.tokens))
    base = statistics.median(runs["fp32"])
    fp32_bytes = state_bytes(model)
    print(f"{'variant':50s} {'tokens/s':>9s} {'x fp32':>7s} {'size':>6s}")
    for name, r in runs.items():
        tps = statistics.median(r)
        try:
            size = f"{state_bytes(variants[name]) / fp32_bytes:.3f}"
        except Exception:
            size = "n/a"
        print(f"{name:50s} {tps:9.1f} {tps / base:7.2f} {size:>6s}")
    kernel_probes(model.gru.hidden_size if hasattr(model.gru, "hidden_size") else args.hidden)


if __name__ == "__main__":
    main()
