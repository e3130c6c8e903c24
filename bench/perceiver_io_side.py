"""perceiver-io 0.11.0's own side of bench/perceiver_ar_long.py. Runs in the side environment with
perceiver-io installed (docs/perceiver-ar.md#running-perceiver-io-0110), never in amadeus' venv, and
imports nothing from amadeus:

    PIO/bin/python bench/perceiver_io_side.py make DIR [--seed 0]
        a random-weights model of the released configuration, saved with save_pretrained to DIR
    PIO/bin/python bench/perceiver_io_side.py speed DIR --threads 2 --tokens 200
        its cached generate(), greedy, batch 1: tokens/s while the latents grow (a 4,096-token prompt,
        num_latents 1) and once the window is full (a 6,144-token prompt, num_latents 2,048), the prompt's
        own pass left out; JSON
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from perceiver.model.audio.symbolic import (
    PerceiverSymbolicAudioModel,
    PerceiverSymbolicAudioModelConfig,
    SymbolicAudioModelConfig,
)

# the released krasserm/perceiver-ar-sam-giant-midi configuration (its config.json), eval-time dropout off
RELEASED = dict(vocab_size=389, max_seq_len=6144, max_latents=2048, num_channels=768, num_heads=8,
                num_self_attention_layers=18, num_self_attention_rotary_layers=1, cross_attention_dropout=0.1,
                post_attention_dropout=0.1, residual_dropout=0.1, output_norm=True, output_bias=False,
                abs_pos_emb=False, init_scale=0.02)


def make(out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    config = PerceiverSymbolicAudioModelConfig(SymbolicAudioModelConfig(**RELEASED))
    config.is_decoder = True
    PerceiverSymbolicAudioModel(config).save_pretrained(out, safe_serialization=False)


@torch.no_grad()
def seconds(model, prompt: torch.Tensor, num_latents: int, tokens: int) -> float:
    start = time.perf_counter()
    out = model.generate(input_ids=prompt, max_new_tokens=tokens, num_latents=num_latents, do_sample=False,
                         use_cache=True, pad_token_id=388)
    assert out.shape[1] == prompt.shape[1] + tokens
    return time.perf_counter() - start


def rate(model, prompt_len: int, num_latents: int, tokens: int, seed: int) -> float:
    """Tokens/s of the steps after the first (a run of 1 token, prompt pass included, is subtracted)."""
    prompt = torch.randint(0, 388, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    return (tokens - 1) / (seconds(model, prompt, num_latents, tokens) - seconds(model, prompt, num_latents, 1))


def speed(src: Path, threads: int, tokens: int, seed: int) -> dict:
    torch.set_num_threads(threads)
    model = PerceiverSymbolicAudioModel.from_pretrained(src).eval()
    rate(model, 64, 1, 2, seed)  # warm-up
    return {"threads": threads, "tokens": tokens,
            "growth_tokens_per_second": round(rate(model, 4096, 1, tokens, seed), 2),
            "full_window_tokens_per_second": round(rate(model, 6144, 2048, tokens, seed), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["make", "speed"])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=200)
    args = ap.parse_args()
    if args.what == "make":
        make(args.dir, args.seed)
    else:
        print(json.dumps(speed(args.dir, args.threads, args.tokens, args.seed)))


if __name__ == "__main__":
    main()
