"""Generation speed at batch 1: the 3x512 Performance RNN, fp32 against int8, in one run.

    python bench/generate.py [--tokens 1000] [--rounds 5] [--threads 1] [--json out.json]

Both models have the same random weights (speed does not depend on training); int8 is made by
`amadeus.quant` with static activation ranges calibrated on random windows, as the quantize stage
does with real ones. Each round times fp32 and int8 back to back (the median over rounds counts), so
load on a shared machine hits both alike. Two figures per model: the full sampler
(`amadeus.sampling.generate`, top-p 0.95, what the generate stage runs) and the bare model step
(argmax fed back), whose gap is the sampler's overhead, and the same loop through `model.run` (the
whole nn.GRU module per event, no step plan) as the plan's baseline. Also the rate at which a
matrix-vector product streams the fp32 weights in the two layouts (why the plan transposes them).
Target: fp32 >= 1,000 tokens/s on one thread.

Also the Perceiver AR's cached against uncached generation at batch 1 and a 2,048-token context
(bench/perceiver_ar.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from perceiver_ar import bench_cached_vs_uncached  # bench/perceiver_ar.py, beside this script

from amadeus.hardware import machine
from amadeus.models import build_model
from amadeus.quant import int8_with_random_calibration
from amadeus.sampling import generate

TARGET_FP32 = 1000.0


GRU_3X512 = {"embed_dim": 256, "input_size": 512, "hidden_size": 512, "num_layers": 3}


def gru_3x512() -> torch.nn.Module:
    """The Performance RNN from the registry with a 3-layer 512-wide GRU (other settings: defaults)."""
    torch.manual_seed(0)
    return build_model("performance_rnn", GRU_3X512).eval()


@torch.no_grad()
def bare_steps(model: torch.nn.Module, tokens: int) -> float:
    """tokens/s of prefill + `tokens` steps feeding back the argmax (no sampler)."""
    start = time.perf_counter()
    logits, state = model.prefill(torch.zeros(1, 0, dtype=torch.long))
    for _ in range(tokens):
        logits, state = model.step(logits.argmax(-1), state)
    return tokens / (time.perf_counter() - start)


@torch.no_grad()
def unplanned_steps(model: torch.nn.Module, tokens: int) -> float:
    """tokens/s of the same argmax loop through `model.run` (embedding, the whole GRU module, head):
    how generation stepped before amadeus.models.gru_step, the baseline for its step plan."""
    logits, h = model.run(torch.full((1, 1), model.config.start_id))
    start = time.perf_counter()
    for _ in range(tokens):
        logits, h = model.run(logits[:, -1].argmax(-1, keepdim=True), None, h)
    return tokens / (time.perf_counter() - start)


@torch.no_grad()
def gemv_layouts(model: torch.nn.Module, rounds: int = 200) -> dict[str, float]:
    """GB/s of one pass of matrix-vector products over the fp32 matrices a step reads (the GRU's and
    the head's), in F.linear's [out, in] layout and as addmm on a contiguous [in, out] copy."""
    mats = [p for n, p in model.named_parameters() if p.dim() == 2 and (n.startswith("gru.") or n.startswith("head."))]
    mats_t = [m.t().contiguous() for m in mats]
    xs = [torch.randn(1, m.shape[1]) for m in mats]
    size = sum(m.numel() * m.element_size() for m in mats)
    out = {}
    def linear() -> None:
        for x, m in zip(xs, mats, strict=True):
            torch.nn.functional.linear(x, m)

    def transposed() -> None:
        for x, m in zip(xs, mats_t, strict=True):
            torch.mm(x, m)

    for name, fn in (("F.linear [out,in]", linear), ("addmm [in,out]", transposed)):
        fn()
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        out[name] = round(size * rounds / (time.perf_counter() - start) / 1e9, 1)
    out["megabytes"] = round(size / 1e6, 1)
    return out


def sampled(model: torch.nn.Module, tokens: int, **kwargs) -> float:
    start = time.perf_counter()
    out = generate(model, None, tokens, do_sample=True, top_p=0.95, seed=0, **kwargs)
    return (out.shape[1]) / (time.perf_counter() - start)


def compare(models: dict[str, torch.nn.Module], tokens: int, rounds: int) -> dict[str, dict[str, float]]:
    for m in models.values():  # warm-up: allocator, first-call paths
        sampled(m, 50)
        bare_steps(m, 50)
    runs: dict[str, dict[str, list[float]]] = {k: {"sampled": [], "bare": [], "unplanned": []} for k in models}
    for _ in range(rounds):
        for name, m in models.items():
            runs[name]["sampled"].append(sampled(m, tokens))
            runs[name]["bare"].append(bare_steps(m, tokens))
            runs[name]["unplanned"].append(unplanned_steps(m, tokens))
    return {name: {kind: round(statistics.median(v), 1) for kind, v in r.items()} for name, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000, help="events per timed run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--perceiver-tokens", type=int, default=32, help="0 = skip the Perceiver AR figure")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    fp32 = gru_3x512()
    int8 = int8_with_random_calibration(fp32)
    how = "amadeus.quant, static ranges (clip avg) from 4 random windows"
    models = {"fp32": fp32, "int8": int8}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {machine()} ({os.cpu_count()} CPUs, load average {load:.1f}); torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}")
    print(f"model: Performance RNN {GRU_3X512}, random weights, batch 1; int8: {how}")
    print(f"timing: {args.rounds} interleaved rounds of {args.tokens} events, median")
    res = compare(models, args.tokens, args.rounds)
    for name, r in res.items():
        print(f"  {name}: {r['sampled']:8,.0f} tokens/s sampled (top-p 0.95)   {r['bare']:8,.0f} tokens/s bare step"
              f"   {r['unplanned']:8,.0f} tokens/s through model.run ({r['bare'] / r['unplanned']:.2f}x for the plan)")
    print(f"  int8 / fp32 (sampled): {res['int8']['sampled'] / res['fp32']['sampled']:.2f}x")
    layouts = gemv_layouts(fp32)
    print(f"  fp32 matrix-vector over the {layouts['megabytes']} MB a step reads: "
          + ", ".join(f"{k} {v} GB/s" for k, v in layouts.items() if k != "megabytes"))
    met = res["fp32"]["sampled"] >= TARGET_FP32
    print(f"  target fp32 >= {TARGET_FP32:,.0f} tokens/s: {'met' if met else 'NOT met'}")
    result = {"machine": machine(), "load_average": load, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "tokens": args.tokens, "rounds": args.rounds, "int8": how, "gru_3x512": res,
              "fp32_gemv_layouts": layouts}
    if args.perceiver_tokens:
        pc = bench_cached_vs_uncached(context=2048, tokens=args.perceiver_tokens, threads=args.threads)
        for phase in ("growth", "sliding"):
            r = pc[phase]
            print(f"Perceiver AR at a 2,048-token context, {phase} phase: cached "
                  f"{r['cached_tokens_per_second']:,.0f} tokens/s, uncached {r['uncached_tokens_per_second']:,.0f} "
                  f"tokens/s, {r['speedup']:.2f}x")
        result["perceiver_ar"] = pc
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
