"""`.sess` checkpoints (docs/contracts.md#sess-checkpoints): a dict that `torch.load(path, weights_only=True)` reads.

Keys: format ("amadeus.sess/1"), family, config (dict), precision ("fp32" | "int8"), model (state
dict), optimizer, scheduler, step, rng (torch generator states as uint8 tensors: weights_only
forbids numpy objects), params (the params.yaml sections the run used), codec (dict with flavour).
The training loop adds: seconds (training time so far), history ([step, train_loss, val_loss] rows).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from amadeus.errors import UserError
from amadeus.fileio import atomic_open
from amadeus.models import build_model, parameter_count, parameter_count_of
from amadeus.release_prior import ReleasePrior

FORMAT = "amadeus.sess/1"
PRECISIONS = ("fp32", "int8")


def save(path: str | os.PathLike, ckpt: dict) -> None:
    """Write a checkpoint atomically (a crash mid-write leaves the previous file intact)."""
    with atomic_open(path, "wb") as f:
        torch.save(ckpt, f)


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint with weights_only=True onto the CPU, checking its format."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found (train one with `dvc repro`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable .sess checkpoint ({reason}); retrain or pass another file") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: not an {FORMAT} checkpoint (format {found!r}); use a .sess made by amadeus")
    for key in ("family", "config", "model"):
        if key not in ckpt:
            raise UserError(f"{path}: checkpoint has no '{key}'; the file is incomplete, retrain")
    if ckpt.get("precision", "fp32") not in PRECISIONS:
        raise UserError(f"{path}: unknown precision {ckpt.get('precision')!r}; expected one of {PRECISIONS}")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model of a `.sess` (fp32 or int8), on `device`, in eval mode, and the checkpoint dict."""
    ckpt = load(path)
    model = build_model(ckpt["family"], ckpt["config"])
    if ckpt.get("precision", "fp32") == "int8":
        try:
            from amadeus.quant import load_quantized
        except ImportError as e:
            raise UserError(f"{path}: an int8 checkpoint needs amadeus.quant, which is unavailable ({e})") from None
        model = load_quantized(ckpt, model)
    else:
        try:
            model.load_state_dict(ckpt["model"], strict=True)
        except RuntimeError as e:
            raise UserError(f"{path}: weights do not fit the {ckpt['family']} config it names: "
                            f"{str(e).splitlines()[0]}") from None
    # Decoding applies the prior the training fitted (amadeus.release_prior); it travels with the model.
    try:
        model.release_prior = ReleasePrior.from_dict(ckpt.get("release_prior"))
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: its release_prior is malformed ({e}); retrain or pass another file") from None
    return model.to(device).eval(), ckpt


def rng_state() -> dict:
    """Torch generator states as uint8 tensors (CPU, and every CUDA device when present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def describe(path: str | os.PathLike) -> str:
    """What `amadeus info` prints: family, precision, step, parameter count, config, params used."""
    ckpt = load(path)
    try:
        n_params = f"{parameter_count_of(ckpt['family'], ckpt['config']):,}"
    except UserError:  # family code unavailable: count the stored tensors instead
        n_params = f"{parameter_count(ckpt['model']):,} (stored tensors)"
    lines = [
        f"file:        {path} ({Path(path).stat().st_size:,} bytes)",
        f"format:      {ckpt['format']}",
        f"family:      {ckpt['family']}",
        f"precision:   {ckpt.get('precision', 'fp32')}",
        f"step:        {ckpt.get('step', '?')}",
        f"parameters:  {n_params}",
    ]
    if "wall" in ckpt:
        lines.append(f"trained:     {ckpt['wall']:.0f} s ({ckpt.get('seconds', 0):.0f} s in steps)")
    history = ckpt.get("history") or []
    if history and history[-1][2] is not None:
        lines.append(f"val_nll:     {history[-1][2]:.4f} nats/event at step {history[-1][0]}")
    lines.append(f"codec:       {ckpt.get('codec')}")
    lines.append("config:")
    lines += ["  " + line for line in yaml.safe_dump(dict(ckpt["config"]), sort_keys=False).splitlines()]
    if ckpt.get("params"):
        lines.append("params:")
        lines += ["  " + line for line in yaml.safe_dump(_plain(ckpt["params"]), sort_keys=False).splitlines()]
    return "\n".join(lines)


def _plain(obj: Any) -> Any:
    """Containers as plain dict/list (tuples from the unpickler confuse yaml.safe_dump)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
