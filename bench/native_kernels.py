"""amadeus.native's batch-1 kernels beside PyTorch's ops, as GB/s of weights or cache read.

    .venv/bin/python bench/native_kernels.py [--threads 1,2]

- one-row int8 product, 768 x 3,072 and 3,072 x 768 (the 134M Perceiver AR's MLP), 60 distinct weight
  matrices in turn (140 MB, far beyond the caches, as in generation): `torch._int_mm` vs `int8_linear`;
  fp32 `F.linear` on the same shapes for scale;
- one-query attention over 18 layers' caches of L = 1,024 / 2,048 keys (8 heads x 96): SDPA over float32,
  SDPA over bfloat16, `attend_one` over bfloat16;
- a plain sum over 256 MB (what streaming can reach here);
- how many PyTorch ops one cached step of a 19-layer int8 Perceiver AR dispatches, with and without
  `layer_step` (each layer in one C call).
Each pair runs in one process, alternating, threads pinned with torch.set_num_threads.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from amadeus import native
from amadeus.hardware import machine
from amadeus.quant.modules import Int8Linear


def seconds_per_call(fn, items, repeats: int = 4) -> float:
    for item in items[:3]:
        fn(item)
    start = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            fn(item)
    return (time.perf_counter() - start) / (repeats * len(items))


def linear_rates(k: int, n: int) -> dict:
    torch.manual_seed(0)
    mods = [Int8Linear.from_linear(torch.nn.Linear(k, n, bias=False), input_range=(-3.0, 3.0)) for _ in range(60)]
    x8 = torch.randint(-128, 127, (1, k), dtype=torch.int8)
    x = torch.randn(1, k)
    gb = k * n / 1e9
    out = {"int_mm_gb_s": gb / seconds_per_call(lambda m: torch._int_mm(x8, m._wt), mods),
           "native_gb_s": gb / seconds_per_call(lambda m: m.packed(x), mods)}
    floats = [torch.randn(n, k) for _ in range(15)]
    out["fp32_linear_gb_s"] = 4 * gb / seconds_per_call(lambda w: F.linear(x, w), floats)
    return {key: round(v, 1) for key, v in out.items()}


def attention_rates(length: int) -> dict:
    torch.manual_seed(0)
    q = torch.randn(1, 8, 1, 96)
    caches = [(torch.randn(1, 8, length, 96), torch.randn(1, 8, length, 96)) for _ in range(18)]
    half = [(k.to(torch.bfloat16), v.to(torch.bfloat16)) for k, v in caches]
    gb = 2 * length * 768 / 1e9
    qh = q.to(torch.bfloat16)
    fp32 = seconds_per_call(lambda kv: F.scaled_dot_product_attention(q, *kv), caches)
    bf16 = seconds_per_call(lambda kv: F.scaled_dot_product_attention(qh, *kv), half)
    mine = seconds_per_call(lambda kv: native.attend_one(q, *kv, 96 ** -0.5), half)
    return {"sdpa_fp32_gb_s": round(4 * gb / fp32, 1), "sdpa_bf16_gb_s": round(2 * gb / bf16, 1),
            "native_bf16_gb_s": round(2 * gb / mine, 1)}


def ops_per_step() -> dict:
    """Top-level PyTorch ops (torch.profiler) in one cached step of an int8 Perceiver AR with the released
    model's 19 layers (narrow: the count does not depend on width), with and without layer_step."""
    from torch.profiler import profile

    from amadeus.models import perceiver_ar
    from amadeus.quant.convert import int8_with_random_calibration

    torch.manual_seed(0)
    cfg = perceiver_ar.PerceiverARConfig(max_seq_len=256, max_latents=64, num_channels=64, num_heads=4,
                                         num_self_attention_layers=18)
    model = int8_with_random_calibration(perceiver_ar.PerceiverAR(cfg).eval())

    def count() -> float:
        logits, state = model.prefill(torch.randint(0, 388, (1, 200)))
        with profile() as prof:
            for _ in range(10):
                logits, state = model.step(logits[:, :388].argmax(-1), state)
        return sum(1 for e in prof.events() if e.cpu_parent is None) / 10

    with_layer_step = count()
    saved, perceiver_ar.layer_steps = perceiver_ar.layer_steps, (lambda model: None)
    try:
        return {"with_layer_step": with_layer_step, "pytorch_path": count()}
    finally:
        perceiver_ar.layer_steps = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    if not native.available():
        raise SystemExit("amadeus.native's kernels are not available here (no AVX-512 VNNI or no C compiler)")
    result = {"machine": machine(), "by_threads": {}}
    big = torch.ones(64 * 1024 * 1024)
    for t in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(t)
        row = {"sum_gb_s": round(big.numel() * 4 / 1e9 / seconds_per_call(lambda a: a.sum(), [big]), 1),
               "linear_768x3072": linear_rates(768, 3072), "linear_3072x768": linear_rates(3072, 768),
               "attention_1024": attention_rates(1024), "attention_2048": attention_rates(2048)}
        result["by_threads"][t] = row
    result["perceiver_ar_step_pytorch_ops"] = ops_per_step()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
