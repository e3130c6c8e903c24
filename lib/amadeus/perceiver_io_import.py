"""Import a krasserm/perceiver-io symbolic audio model (Hugging Face directory) into an amadeus `.sess`.

The directory holds `config.json` (perceiver-io's backend config under `model_config`) and the
weights as `pytorch_model.bin` (a plain state dict; loaded with `weights_only=True`, so no code from
the file runs) or `model.safetensors`. Layout facts: docs/perceiver-ar.md. The checkpoint records
codec flavour "perceiver-io": that model was trained on perceiver-io's own MIDI encoding
(docs/vocabulary.md#perceiver-io-encoding).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from amadeus.errors import UserError, main_entry
from amadeus.fileio import atomic_open
from amadeus.models import parameter_count
from amadeus.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from amadeus.params import as_dict

MODEL_TYPE = "perceiver-ar-symbolic-audio-model"

# perceiver-io config key -> ours (keys not listed are ignored: max_heads_parallel, checkpointing)
CONFIG_KEYS = {
    "vocab_size": "vocab_size", "max_seq_len": "max_seq_len", "max_latents": "max_latents",
    "num_channels": "num_channels", "num_heads": "num_heads",
    "num_self_attention_layers": "num_self_attention_layers",
    "num_self_attention_rotary_layers": "num_rotary_layers",
    "cross_attention_widening_factor": "cross_attention_widening_factor",
    "self_attention_widening_factor": "self_attention_widening_factor",
    "cross_attention_dropout": "cross_attention_dropout", "post_attention_dropout": "attention_dropout",
    "residual_dropout": "residual_dropout", "abs_pos_emb": "abs_pos_emb", "output_norm": "output_norm",
    "output_bias": "output_bias", "init_scale": "init_scale",
}

# perceiver-io parameter names (after the `backend_model.` prefix) -> ours, as regex substitutions
_MLP = {"0": "norm", "1": "fc1", "3": "fc2"}
NAME_RULES = [
    (r"input_adapter\.txt_embedding\.", "embed."),
    (r"input_adapter\.pos_embedding\.", "pos_embed."),
    (r"cross_attention\.0\.module\.(q_norm|kv_norm)\.", r"hybrid.\1."),
    (r"cross_attention\.0\.module\.attention\.", "hybrid.attn."),
    (r"cross_attention\.1\.module\.(\d)\.", lambda m: f"hybrid.mlp.{_MLP[m[1]]}."),
    (r"self_attention\.(\d+)\.0\.module\.norm\.", r"layers.\1.norm."),
    (r"self_attention\.(\d+)\.0\.module\.attention\.", r"layers.\1.attn."),
    (r"self_attention\.(\d+)\.1\.module\.(\d)\.", lambda m: f"layers.{m[1]}.mlp.{_MLP[m[2]]}."),
    (r"out_norm\.", "out_norm."),
    (r"output_adapter\.bias$", "out_bias"),
]
SKIPPED = re.compile(r"input_adapter\.frq_pos_encoding\.inv_freq$")  # recomputed from the config


def read_config(src: Path) -> PerceiverARConfig:
    path = src / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found (pass a perceiver-io Hugging Face model directory)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if raw.get("model_type") != MODEL_TYPE or not isinstance(raw.get("model_config"), dict):
        raise UserError(f"{path}: not a perceiver-io symbolic audio model (model_type {MODEL_TYPE!r} expected)")
    backend = raw["model_config"]
    values = {ours: backend[theirs] for theirs, ours in CONFIG_KEYS.items() if theirs in backend}
    return PerceiverARConfig(**values)


def read_weights(src: Path) -> dict[str, torch.Tensor]:
    bin_path, st_path = src / "pytorch_model.bin", src / "model.safetensors"
    if st_path.exists():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{st_path}: reading safetensors needs the 'safetensors' package "
                            "(pip install safetensors)") from None
        return load_file(str(st_path))
    if not bin_path.exists():
        raise UserError(f"{src}: no pytorch_model.bin or model.safetensors (pass a perceiver-io model directory)")
    try:
        state = torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, or a damaged file
        raise UserError(f"{bin_path}: not a plain state dict readable with weights_only=True ({e})") from None
    if not isinstance(state, dict):
        raise UserError(f"{bin_path}: expected a state dict, got {type(state).__name__}")
    return state


def rename(name: str) -> str | None:
    """Our parameter name for a perceiver-io one (None: a buffer we recompute)."""
    name = name.removeprefix("backend_model.")
    if SKIPPED.match(name):
        return None
    for pattern, repl in NAME_RULES:
        new, n = re.subn(pattern, repl, name, count=1)
        if n:
            return new
    raise UserError(f"unexpected perceiver-io parameter {name!r}: not a symbolic audio model of version 0.11")


def convert(src: str | Path) -> tuple[PerceiverAR, PerceiverARConfig]:
    """Build our model from a perceiver-io Hugging Face directory."""
    src = Path(src)
    config = read_config(src)
    state = {}
    for name, tensor in read_weights(src).items():
        ours = rename(name)
        if ours is not None:
            state[ours] = tensor.float()
    model = PerceiverAR(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{src}: weights do not match config.json (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return model.eval(), config


def import_perceiver_io(src_dir: str | Path, dst_sess: str | Path) -> dict:
    """Write `dst_sess`, an fp32 amadeus checkpoint of the perceiver-io model in `src_dir`; returns it."""
    model, config = convert(src_dir)
    ckpt = {
        "format": "amadeus.sess/1", "family": PerceiverAR.family, "config": as_dict(config),
        "precision": "fp32", "model": model.state_dict(), "optimizer": None, "scheduler": None,
        "step": 0, "rng": None, "params": {}, "codec": {"flavour": "perceiver-io"},
        "source": {"kind": "perceiver-io", "path": str(src_dir)},
    }
    with atomic_open(dst_sess, "wb") as f:
        torch.save(ckpt, f)
    return ckpt


@main_entry
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="amadeus import-perceiver-io", description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="perceiver-io Hugging Face model directory")
    ap.add_argument("dst", type=Path, help="the .sess file to write")
    args = ap.parse_args(argv)
    ckpt = import_perceiver_io(args.src, args.dst)
    n = parameter_count(ckpt["model"])
    print(f"{args.dst}: perceiver_ar, {n:,} parameters, codec flavour perceiver-io")


if __name__ == "__main__":
    main()
