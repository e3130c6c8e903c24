"""`amadeus quantize`: an int8 copy of any fp32 checkpoint (e.g. an imported perceiver-io model),
outside the pipeline: calibrate on music encoded for it, quantize, measure the NLL change, save.

The pipeline's calibrate and quantize stages do the same for their own checkpoints from params.yaml;
this takes a checkpoint and a folder of `.data` files (`amadeus preprocess`, in the checkpoint's codec
flavour). Calibration and NLL use different seeded windows of the folder's validation split (its train
split when it has no validation pieces).
"""

from __future__ import annotations

import copy
from pathlib import Path

from amadeus import data
from amadeus.checkpoint import load_model, save
from amadeus.errors import UserError
from amadeus.nll import mean_nll
from amadeus.quant import calibrate, quantize_model
from amadeus.quant.qtensor import MODES
from amadeus.windows import random_windows


def quantize_file(src: str | Path, dst: str | Path, data_dir: str | Path, windows: int = 16,
                  window: int | None = None, batch_size: int = 4, mode: str = "asymmetric_signed",
                  seed: int = 0) -> dict:
    """Write dst (int8) from src (fp32); returns the NLLs (nats/event) of both on the same windows."""
    if mode not in MODES:
        raise UserError(f"--mode: {mode!r} is not allowed; choose one of: {', '.join(MODES)}")
    model, ckpt = load_model(src)
    if ckpt.get("precision", "fp32") != "fp32":
        raise UserError(f"{src}: already {ckpt['precision']}; quantize an fp32 checkpoint")
    flavour = (ckpt.get("codec") or {}).get("flavour", "magenta")
    manifest = data.read_manifest(data_dir)
    data_flavour = (manifest.get("codec") or {}).get("flavour", "magenta")
    if flavour != data_flavour:
        raise UserError(f"{data_dir}: encoded with the {data_flavour} codec but {src} reads {flavour}; "
                        f"run `amadeus preprocess MIDI_DIR OUT_DIR --flavour {flavour}`")
    window = window or getattr(model, "context_length", None) or 512
    split = "validation" if any(p["split"] == "validation" for p in manifest["pieces"]) else "train"
    pieces = data.load_split(data_dir, split)
    controls = getattr(model, "uses_controls", False)
    ids, ctrl = random_windows(pieces, 2 * windows, window, seed, controls=controls)
    if len(ids) == 0:
        raise UserError(f"{data_dir}: no {split} piece has {window + 1} events; pass a smaller --window")
    half = len(ids) // 2  # calibrate on one half, measure on the other
    calib_ctrl, eval_ctrl = (ctrl[:half], ctrl[half:]) if ctrl is not None else (None, None)
    stats = calibrate(model, ids[:half], calib_ctrl, batch_size)
    qmodel = copy.deepcopy(model)
    info = quantize_model(qmodel, stats, mode)
    nll_fp32 = mean_nll(model, ids[half:], eval_ctrl, batch_size=batch_size)
    nll_int8 = mean_nll(qmodel, ids[half:], eval_ctrl, batch_size=batch_size)
    out = dict(ckpt)
    out.update(precision="int8", model=qmodel.state_dict(), optimizer=None, scheduler=None, quant=info)
    out["params"] = {**(ckpt.get("params") or {}),
                     "quantize": {"mode": mode, "data": str(data_dir), "windows": half, "window": window}}
    save(dst, out)
    return {"nll_fp32": nll_fp32, "nll_int8": nll_int8, "nll_delta_rel": (nll_int8 - nll_fp32) / nll_fp32,
            "windows": len(ids) - half, "window": window, "split": split}


def quantize_cli(args) -> None:
    r = quantize_file(args.src, args.dst, args.data, args.windows, args.window, mode=args.mode, seed=args.seed)
    print(f"{args.dst}: int8; NLL on {r['windows']} {r['split']} windows of {r['window']} events: "
          f"{r['nll_fp32']:.4f} (fp32) -> {r['nll_int8']:.4f} (int8), {r['nll_delta_rel']:+.2%}")
