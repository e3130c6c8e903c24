"""Make the perceiver-io conformance fixture for tests/test_perceiver_ar.py.

Runs in a side environment with perceiver-io's own package, never in the project's .venv
(docs/perceiver-ar.md#running-perceiver-io-0110: perceiver-io 0.11.0 declares Python < 3.11):

    python3.11 -m venv /tmp/pio-env && echo torch==2.13.0 > /tmp/pio-constraints.txt
    /tmp/pio-env/bin/pip install -c /tmp/pio-constraints.txt torch==2.13.0
    /tmp/pio-env/bin/pip install -c /tmp/pio-constraints.txt perceiver-io==0.11.0 --ignore-requires-python --no-deps
    /tmp/pio-env/bin/pip install -c /tmp/pio-constraints.txt numpy==1.26.4 einops==0.4.1 transformers==4.30.2 \
        pretty_midi==0.2.10 pytorch-lightning==2.0.9.post0 torchmetrics==0.9.3 requests tqdm setuptools==80.9.0
    /tmp/pio-env/bin/pip install -c /tmp/pio-constraints.txt fairscale==0.4.13 --no-build-isolation --no-deps
    /tmp/pio-env/bin/python tools/make_perceiver_io_fixture.py tests/fixtures/perceiver_io

Writes into OUT:
- model/: a small random-weights PerceiverSymbolicAudioModel saved with save_pretrained (config.json +
  pytorch_model.bin, the released checkpoint's format);
- expected.pt: a dict of tensors (readable with torch.load(weights_only=True)):
  `ids`, `pad_mask`, `prefix_len`, `logits` of perceiver-io's forward over a left-padded batch (pads in the
  prefix only); `latent_pad_ids`/`latent_pad_logits` (pads among the latents too, prefix 4) and
  `unpadded_ids`/`unpadded_logits` (the same real tokens, no pads), for the documented divergence; and a
  greedy continuation (`prompt`, `num_latents`, `continuation`, per-step `prefix_lens`/`window_lens`)
  made by a loop that calls perceiver-io's forward with the documented schedule: the prompt's last
  num_latents tokens are latents; latents grow to max_latents, then the prefix to max_prefix_len,
  then the window slides. Not its generate(): both of its modes depart from that schedule
  (docs/perceiver-ar.md#generation-schedule-and-kv-cache).

Random weights are scaled up (and LayerNorm weights/biases perturbed, so q_norm != kv_norm) so that
greedy decoding does not collapse onto one token and layout mistakes change the output.
"""

from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path

import torch
from perceiver.model.audio.symbolic import (
    PerceiverSymbolicAudioModel,
    PerceiverSymbolicAudioModelConfig,
    SymbolicAudioModelConfig,
)

SEED = 7
CONFIG = dict(vocab_size=389, max_seq_len=64, max_latents=16, num_channels=48, num_heads=4,
              num_self_attention_layers=2, num_self_attention_rotary_layers=1, cross_attention_dropout=0.1,
              post_attention_dropout=0.0, residual_dropout=0.0, output_norm=True, output_bias=False,
              abs_pos_emb=False, init_scale=0.02)
WEIGHT_STD = 0.25  # N(0, 0.25) weights: peaked enough that greedy decoding keeps changing token
PROMPT_LEN, NUM_LATENTS, NEW_TOKENS = 12, 4, 160
PAD_ID = 388


def build_model() -> PerceiverSymbolicAudioModel:
    torch.manual_seed(SEED)
    backend = SymbolicAudioModelConfig(**CONFIG)
    config = PerceiverSymbolicAudioModelConfig(backend)
    config.is_decoder = True
    model = PerceiverSymbolicAudioModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".module.0." in name:  # LayerNorms (MLP norms are Sequential index 0)
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, WEIGHT_STD)
    return model


def greedy_documented(model: PerceiverSymbolicAudioModel, prompt: torch.Tensor, num_latents: int, steps: int):
    """Greedy decoding with perceiver-io's forward and the documented prefix/latent schedule."""
    backend = model.backend_model
    window, prefix_len = prompt.clone(), prompt.shape[1] - num_latents
    out, prefix_lens, window_lens = [], [], []
    for _ in range(steps):
        prefix_lens.append(prefix_len)
        window_lens.append(window.shape[1])
        with torch.no_grad():
            logits = model(input_ids=window, prefix_len=prefix_len, use_cache=False).logits[:, -1]
        token = logits[:, :PAD_ID].argmax(-1, keepdim=True)
        out.append(token)
        window = torch.cat([window, token], 1)
        if window.shape[1] - prefix_len > backend.max_latents:
            if prefix_len < backend.max_prefix_len:
                prefix_len += 1
            else:
                window = window[:, 1:]
    return torch.cat(out, 1), torch.tensor(prefix_lens), torch.tensor(window_lens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    model = build_model()
    model.save_pretrained(args.out / "model", safe_serialization=False)

    gen = torch.Generator().manual_seed(SEED + 1)
    # A left-padded batch: row 1 has 6 pads, all inside the prefix (perceiver-io masks pads only in the
    # hybrid layer, so pads among the latents would leak into its self-attention; we mask them there).
    n, pads = 40, 6
    prefix_len = n - CONFIG["max_latents"]
    ids = torch.randint(0, PAD_ID, (2, n), generator=gen)
    ids[1, :pads] = PAD_ID
    pad_mask = ids.eq(PAD_ID)
    with torch.no_grad():
        logits = model(input_ids=ids, prefix_len=prefix_len, attention_mask=(~pad_mask).long()).logits

    prompt = torch.randint(0, PAD_ID, (1, PROMPT_LEN), generator=gen)
    continuation, prefix_lens, window_lens = greedy_documented(model, prompt, NUM_LATENTS, NEW_TOKENS)

    # Pads among the latents: a 12-token sequence left-padded to 20 with a 4-token prefix (4 of the pads
    # are latents), and the same 12 tokens unpadded, all latents. perceiver-io lets the real latents attend
    # to the pad latents in its self-attention layers; amadeus masks them (docs/perceiver-ar.md).
    real = torch.randint(0, PAD_ID, (1, 12), generator=gen)
    latent_pad_ids = torch.cat([torch.full((1, 8), PAD_ID), real], 1)
    with torch.no_grad():
        latent_pad_logits = model(input_ids=latent_pad_ids, prefix_len=4,
                                  attention_mask=latent_pad_ids.ne(PAD_ID).long()).logits
        unpadded_logits = model(input_ids=real, prefix_len=0).logits

    expected = {"ids": ids, "pad_mask": pad_mask, "prefix_len": prefix_len, "logits": logits,
                "prompt": prompt, "num_latents": NUM_LATENTS, "continuation": continuation,
                "prefix_lens": prefix_lens, "window_lens": window_lens, "latent_pad_ids": latent_pad_ids,
                "latent_pad_logits": latent_pad_logits, "unpadded_ids": real, "unpadded_logits": unpadded_logits}
    torch.save(expected, args.out / "expected.pt")
    meta = {"perceiver-io": version("perceiver-io"), "torch": torch.__version__, "seed": SEED,
            "weight_std": WEIGHT_STD, "config": CONFIG, "distinct_tokens": len(set(continuation[0].tolist()))}
    (args.out / "provenance.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta), "\ncontinuation:", continuation[0].tolist())


if __name__ == "__main__":
    main()
