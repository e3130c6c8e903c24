"""What the Perceiver AR's latent block costs in prediction: NLL of held-out music under each block size.

    .venv/bin/python bench/perceiver_ar_blocks.py [--checkpoint save/perceiver_ar.sess] [--blocks 1,16,32,64,128]

Generation moves `latent_block` latents into the prefix at once when the latents are full (1 is
perceiver-io's schedule). A larger block recomputes less often, so it is faster, but right after a move
the newest tokens have fewer latents before them: they see that part of their context through the one
hybrid layer instead of the whole network. This measures that, exactly as generation runs: each
stretch of held-out music is fed through prefill/step with its own events instead of sampled ones
(teacher forcing), starting from a full prefix and one latent, and the NLL of every next event is averaged,
over the whole run and over the part past the window (where the block acts). With `--int8` the same
for the int8 checkpoint, so the two precisions' deltas are side by side. Tokens/s of that run is
printed too (batch 1, `--threads`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amadeus import data
from amadeus.checkpoint import load_model
from amadeus.hardware import machine
from amadeus.params import load_yaml
from amadeus.pipeline import paths


@torch.no_grad()
def teacher_forced(model, events: np.ndarray, block: int) -> tuple[list[float], int, float]:
    """Per predicted event, its NLL (nats), in order; the index of the first step past the window; seconds."""
    cfg = model.config
    ids = torch.as_tensor(events, dtype=torch.long)[None]
    start = cfg.max_seq_len - cfg.max_latents  # a full prefix and one latent, as generation from a prompt
    began = time.perf_counter()
    logits, state = model.prefill(ids[:, :start], num_latents=1, latent_block=block)
    nll = []
    for i in range(start, ids.shape[1]):
        nll.append(-F.log_softmax(logits.float(), -1)[0, ids[0, i]].item())
        if i + 1 < ids.shape[1]:
            logits, state = model.step(ids[:, i], state)
    return nll, cfg.max_latents - 1, time.perf_counter() - began


def measure(path: Path, pieces: list[np.ndarray], blocks: list[int]) -> dict:
    model, ckpt = load_model(path)
    out = {"precision": ckpt.get("precision", "fp32"), "by_block": {}}
    for block in blocks:
        every, past, seconds, tokens = [], [], 0.0, 0
        for events in pieces:
            nll, window_full, s = teacher_forced(model, events, block)
            every += nll
            past += nll[window_full:]
            seconds, tokens = seconds + s, tokens + len(nll)
        out["by_block"][block] = {"nll": round(float(np.mean(every)), 4),
                                  "nll_past_the_window": round(float(np.mean(past)), 4),
                                  "events": len(every), "tokens_per_second": round(tokens / seconds, 1)}
        print(f"{path.name} block {block}: {json.dumps(out['by_block'][block])}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=paths.checkpoint("perceiver_ar"))
    ap.add_argument("--int8", type=Path, default=None, help="its int8 checkpoint (default: the pipeline's, if there)")
    ap.add_argument("--split", default="test", choices=data.SPLITS)
    ap.add_argument("--pieces", type=int, default=8, help="stretches of held-out music to measure on")
    ap.add_argument("--events", type=int, default=1024, help="events past the prompt per piece (at most)")
    ap.add_argument("--blocks", default="1,16,32,64,128")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folders = [paths.processed_dir(name) for name in load_yaml(Path("params.yaml"))["datasets"]]
    split = data.load_split(folders, args.split)
    model, _ = load_model(args.checkpoint)
    prompt = model.config.max_seq_len - model.config.max_latents
    # consecutive, non-overlapping stretches of the held-out pieces (the default data holds one per split)
    size = prompt + args.events
    pieces = [np.asarray(split[i][s:s + size]) for i in range(len(split))
              for s in range(0, len(split[i]) - size + 1, size)][: args.pieces]
    blocks = [int(b) for b in args.blocks.split(",")]
    result = {"machine": machine(), "threads": args.threads, "split": args.split, "stretches": len(pieces),
              "events_per_stretch": args.events, "prompt_events": prompt, "checkpoints": {}}
    int8 = args.int8 or paths.checkpoint("perceiver_ar", "int8")
    for path in [args.checkpoint] + ([int8] if Path(int8).is_file() else []):
        result["checkpoints"][str(path)] = measure(Path(path), pieces, blocks)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
