"""Perceiver AR generation speed: cached vs uncached tokens/s at a 2,048-token context.

    .venv/bin/python bench/perceiver_ar.py [--context 2048] [--tokens 32] [--threads 1]

Both modes run side by side in one process with the same weights and prompt; the ratio is what to
read on a shared machine. Two phases of the documented schedule are measured, because the exact
cache behaves differently in them:
- growth: the latents are still growing (context + new tokens fit the window): a cached step runs
  one token through the network; an uncached step reruns the whole window;
- sliding: the window is full and slides every step: every latent attended to the token that left,
  so the exact cache recomputes all latents and saves only the prefix keys/values.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from amadeus.hardware import machine
from amadeus.models.perceiver_ar import PerceiverAR, PerceiverARConfig


@torch.no_grad()
def _tokens_per_second(model: PerceiverAR, prompt: torch.Tensor, num_latents: int, tokens: int,
                       use_cache: bool) -> float:
    logits, state = model.prefill(prompt, num_latents=num_latents, use_cache=use_cache)
    start = time.perf_counter()
    for _ in range(tokens):
        logits, state = model.step(logits[:, :388].argmax(-1), state)
    return tokens * prompt.shape[0] / (time.perf_counter() - start)


def bench_cached_vs_uncached(model: PerceiverAR | None = None, context: int = 2048, tokens: int = 32,
                             batch: int = 1, threads: int | None = 1, seed: int = 0) -> dict:
    """Tokens/s of greedy steps with and without the kv cache at a `context`-token window.

    `model` must have max_seq_len >= context; by default a random-weights model of the default small
    size with a 2,048-token window and 256 latents. Returns a dict with, per phase ("growth",
    "sliding"), cached and uncached tokens/s and their ratio, plus the machine and thread count.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if model is None:
        model = PerceiverAR(PerceiverARConfig(max_seq_len=context, max_latents=256))
    model.eval()
    cfg = model.config
    if cfg.max_seq_len < context:
        raise ValueError(f"model max_seq_len ({cfg.max_seq_len}) is shorter than the context ({context})")
    if tokens >= cfg.max_latents:
        raise ValueError(f"tokens ({tokens}) must be < max_latents ({cfg.max_latents}) to stay in the growth phase")
    gen = torch.Generator().manual_seed(seed)
    result = {"machine": machine(), "threads": torch.get_num_threads(), "context": context, "tokens": tokens,
              "batch": batch, "config": {k: getattr(cfg, k) for k in
                                         ("max_seq_len", "max_latents", "num_channels", "num_self_attention_layers")}}
    # growth: the window ends at `context` tokens after `tokens` steps, starting from one latent
    prompt = torch.randint(0, 388, (batch, context - tokens), generator=gen)
    phases = {"growth": (prompt, 1)}
    if cfg.max_seq_len == context:
        # sliding: a full window whose prefix and latents are at their maximum from the first step
        phases["sliding"] = (torch.randint(0, 388, (batch, context), generator=gen), cfg.max_latents)
    for name, (ids, k) in phases.items():
        _tokens_per_second(model, ids, k, 2, True)  # warm-up
        cached = _tokens_per_second(model, ids, k, tokens, True)
        uncached = _tokens_per_second(model, ids, k, tokens, False)
        result[name] = {"cached_tokens_per_second": round(cached, 2),
                        "uncached_tokens_per_second": round(uncached, 2), "speedup": round(cached / uncached, 2)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(json.dumps(bench_cached_vs_uncached(context=args.context, tokens=args.tokens, batch=args.batch,
                                              threads=args.threads), indent=2))


if __name__ == "__main__":
    main()
