"""The released Perceiver AR configuration (6,144 tokens, 2,048 latents, 134M parameters) generating
batch 1 on this CPU, past its window: sustained tokens/s, int8 vs fp32, the latent block's cost, and
perceiver-io 0.11.0's own generate() on the same weights.

    .venv/bin/python bench/perceiver_ar_long.py [--tokens 4000] [--block 1024] [--pio-python PIO/bin/python]
    python bench/perceiver_ar_long.py --device cuda      # on a GPU: bfloat16 weights, SDPA, the same runs

- sustained: int8, a 4,096-token prompt with 1 latent (perceiver-io's default), greedy, `--tokens` new
  tokens: the latents grow to 2,048 (the window fills after 2,048 tokens), then blocks of `--block`
  latents move into the prefix as the window slides. tokens/s over the whole run, and per phase.
  Threads 1, 2 and all of them (torch.set_num_threads).
- int8 vs fp32: both over the first `--compare-tokens` tokens of the same run, same threads; and int8
  without amadeus.native's kernels (PyTorch's ops), their baseline.
- blocks: int8 on 2 threads from a full window (6,144-token prompt, 2,048 latents), one rate per block size
  over 2,048 tokens (so each run holds the same number of block moves per token).
- perceiver-io: with `--pio-python` (its side environment, bench/perceiver_io_side.py) the random weights
  are made there and imported here, so both run the same model; its cached generate() is timed while the
  latents grow and from a full window, beside amadeus' fp32 and int8 over the same tokens.

Weights are random: speed does not depend on them. Everything is printed as JSON with the machine.
With `--device cuda` the model runs in bfloat16 on the GPU (int8 is a CPU format here: its weights would
be dequantized at every call) and only the sustained run is made, beside fp32 over the first tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from amadeus import data, native, vocab
from amadeus.hardware import machine
from amadeus.models import perceiver_ar
from amadeus.models.perceiver_ar import PerceiverAR, sam_giant_midi_config
from amadeus.quant.convert import int8_with_random_calibration

HERE = Path(__file__).parent
EVENTS = 388
RELEASED = sam_giant_midi_config()
GROWING = (RELEASED.max_seq_len - RELEASED.max_latents, 1)  # prompt length, latents: a full prefix, one latent
FULL = (RELEASED.max_seq_len, RELEASED.max_latents)  # a full window


@torch.no_grad()
def step_times(model: PerceiverAR, prompt_len: int, num_latents: int, tokens: int, block: int,
               seed: int = 0) -> list[float]:
    """Seconds of each of `tokens` greedy steps (the first one is the prefill's)."""
    device = next(model.parameters(), torch.empty(0)).device
    prompt = torch.randint(0, EVENTS, (1, prompt_len), generator=torch.Generator().manual_seed(seed)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, start = [], time.perf_counter()
    logits, state = model.prefill(prompt, num_latents=num_latents, latent_block=block)
    for _ in range(tokens):
        sync()
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        logits, state = model.step(logits[:, :EVENTS].argmax(-1), state)
    sync()
    return times[1:] + [time.perf_counter() - start]


def rate(times: list[float]) -> float:
    return round(len(times) / sum(times), 2) if times else 0.0


def sustained(model: PerceiverAR, tokens: int, block: int) -> dict:
    cfg = model.config
    times = step_times(model, cfg.max_seq_len - cfg.max_latents, 1, tokens, block)
    grow = cfg.max_latents - 1  # steps until the window is full
    return {"tokens": tokens, "tokens_per_second": rate(times), "growing": rate(times[:grow]),
            "past_the_window": rate(times[grow:]), "slowest_step_seconds": round(max(times), 3)}


@contextlib.contextmanager
def pytorch_ops_only(model: PerceiverAR):
    """The int8 model without amadeus.native's kernels (its PyTorch path): the kernels' baseline."""
    linears = [m for m in model.modules() if getattr(m, "packed", None) is not None]
    packed = [m.packed for m in linears]
    saved = perceiver_ar.layer_steps, native.attend_one
    try:
        for m in linears:
            m.packed = None
        perceiver_ar.layer_steps, native.attend_one = (lambda model: None), (lambda *args: None)
        yield model
    finally:
        for m, p in zip(linears, packed, strict=True):
            m.packed = p
        perceiver_ar.layer_steps, native.attend_one = saved


def music_event_rates(folder: Path) -> dict:
    """How many events per second real music needs: per piece of a processed folder, its events over its
    seconds (the range over pieces), and the most events in any one second of any piece."""
    pieces = [np.asarray(p) for split in data.SPLITS for p in data.load_split(folder, split)]
    means = [len(p) / vocab.event_seconds(p) for p in pieces if vocab.event_seconds(p) > 0]
    densest = max(int(np.bincount(vocab.event_times(p) // vocab.STEPS_PER_SECOND).max()) for p in pieces)
    return {"folder": str(folder), "pieces": len(pieces), "mean_events_per_second_min": round(min(means), 1),
            "mean_events_per_second_max": round(max(means), 1), "densest_second_events": densest}


def pio_side(python: str, args: list[str]) -> str:
    done = subprocess.run([python, str(HERE / "perceiver_io_side.py"), *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"perceiver-io side run failed: {done.stderr.strip().splitlines()[-1]}")
    return done.stdout


def on_gpu(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    fp32 = PerceiverAR(sam_giant_midi_config()).eval().to(args.device)
    bf16 = PerceiverAR(sam_giant_midi_config()).eval().to(args.device, torch.bfloat16)
    bf16.load_state_dict(fp32.state_dict())
    n = args.compare_tokens
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "block": args.block,
              "fp32_first_tokens": rate(step_times(fp32, *GROWING, n, args.block)),
              "bf16_first_tokens": rate(step_times(bf16, *GROWING, n, args.block)), "compare_tokens": n,
              "bf16_sustained": sustained(bf16, args.tokens, args.block)}
    print(json.dumps(result, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--block", type=int, default=1024, help="latent block of the sustained run")
    ap.add_argument("--compare-tokens", type=int, default=256)
    ap.add_argument("--blocks", default="1,128,512,1024,2048", help="block sizes to time ('' = skip)")
    ap.add_argument("--pio-python", default=None, help="perceiver-io's side environment's python")
    ap.add_argument("--pio-tokens", type=int, default=200)
    ap.add_argument("--threads", default=f"1,2,{os.cpu_count()}")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: bfloat16 on the GPU")
    ap.add_argument("--music", type=Path, default=Path("dataset/processed/maestro-sample"),
                    help="processed music to read the events/s real music needs from (skipped if absent)")
    args = ap.parse_args()
    if args.device != "cpu":
        return on_gpu(args)
    threads = sorted({int(t) for t in args.threads.split(",")})

    with tempfile.TemporaryDirectory() as tmp:
        if args.pio_python:
            from amadeus.perceiver_io_import import convert

            pio_side(args.pio_python, ["make", tmp])
            fp32, _ = convert(tmp)
        else:
            torch.manual_seed(0)
            fp32 = PerceiverAR(sam_giant_midi_config())
        fp32.eval()
        int8 = int8_with_random_calibration(fp32)
        result = {"machine": machine(), "cpus": os.cpu_count(), "native_kernels": native.available(),
                  "config": "released (sam_giant_midi_config)", "block": args.block, "threads": {}}
        if (args.music / "manifest.json").is_file():
            result["real_music"] = music_event_rates(args.music)
        for t in threads:
            torch.set_num_threads(t)
            n = args.compare_tokens
            f, q = rate(step_times(fp32, *GROWING, n, args.block)), rate(step_times(int8, *GROWING, n, args.block))
            with pytorch_ops_only(int8) as plain:
                p = rate(step_times(plain, *GROWING, n, args.block))
            row = {"fp32_first_tokens": f, "int8_first_tokens": q, "int8_over_fp32": round(q / f, 2),
                   "int8_without_native_kernels_first_tokens": p, "compare_tokens": n,
                   "int8_sustained": sustained(int8, args.tokens, args.block)}
            result["threads"][t] = row
            print(f"threads {t}: {json.dumps(row)}", file=sys.stderr, flush=True)
        if args.blocks:
            torch.set_num_threads(2)
            blocks = {}
            for b in (int(b) for b in args.blocks.split(",")):
                n = 4 if b == 1 else 2048  # block 1 recomputes every latent at every step
                blocks[b] = rate(step_times(int8, *FULL, n, b))
                print(f"block {b}: {blocks[b]} tokens/s", file=sys.stderr, flush=True)
            result["int8_2_threads_full_window_by_block"] = blocks
        if args.pio_python:
            n, side = args.pio_tokens, {}
            for t in threads:
                torch.set_num_threads(t)
                pio = json.loads(pio_side(args.pio_python, ["speed", tmp, "--threads", str(t), "--tokens", str(n)]))
                side[t] = {"perceiver_io_fp32": pio,
                           "amadeus_fp32": {"growing": rate(step_times(fp32, *GROWING, n, args.block)),
                                            "full_window": rate(step_times(fp32, *FULL, n, args.block))},
                           "amadeus_int8": {"growing": rate(step_times(int8, *GROWING, n, args.block)),
                                            "full_window": rate(step_times(int8, *FULL, n, args.block))}}
                print(f"side by side, threads {t}: {json.dumps(side[t])}", file=sys.stderr, flush=True)
            result["side_by_side"] = {"tokens": n, "block": args.block, "by_threads": side}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
