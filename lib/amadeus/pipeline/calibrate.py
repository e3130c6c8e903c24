"""Stage calibrate@<family>: save/<family>.sess -> stats/<family>.yaml (activation statistics).

Forward hooks observe every leaf module (the GRU decomposed into Linears and one module per
element-wise op) over `calibrate.batches` seeded random validation windows (amadeus.quant.calibrate,
whose statistics amadeus.quant.stats describes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from amadeus.checkpoint import load_model
from amadeus.data import load_split
from amadeus.errors import UserError
from amadeus.fileio import write_yaml
from amadeus.params import build, knob, section, seed_knob
from amadeus.pipeline import paths
from amadeus.quant import calibrate
from amadeus.windows import random_windows


@dataclass
class CalibrateConfig:
    """params.yaml `calibrate` (the quantize stage reads its window size too)."""

    batches: int = knob(8, min=1, help="validation batches the hooks observe")
    batch_size: int = knob(4, min=1)
    window: int = knob(200, min=1, help="events per window (the model sees window+1 ids)")
    seed: int = seed_knob(1234, help="which validation windows")
    threads: int = knob(1, min=1, help="torch threads: per-step ops are tiny, more threads only contend")


def validation_windows(params: dict, root: Path, count: int, window: int, seed: int,
                       controls: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`count` seeded random windows of the `datasets`' validation split (calibrate and quantize)."""
    folders = [paths.processed_dir(name, root) for name in section(params, "datasets")]
    ids, ctrl = random_windows(load_split(folders, "validation"), count, window, seed, controls=controls)
    if len(ids) == 0:
        raise UserError(f"validation split: no piece has {window + 1} events; lower calibrate.window")
    return ids, ctrl


def run(params: dict, root: Path, family: str) -> dict:
    """Write stats/<family>.yaml from the fp32 checkpoint; returns the statistics."""
    config = build(CalibrateConfig, section(params, "calibrate"), "calibrate")
    model, _ = load_model(paths.checkpoint(family, root=root))
    ids, ctrl = validation_windows(params, root, config.batches * config.batch_size, config.window, config.seed,
                                   controls=getattr(model, "uses_controls", False))
    start = time.perf_counter()
    stats = calibrate(model, ids, ctrl, config.batch_size, config.threads)
    out = paths.stats_file(family, root)
    write_yaml(out, stats)
    print(f"calibrate {family}: {len(stats)} modules over {config.batches} x {config.batch_size} windows "
          f"of {config.window} events in {time.perf_counter() - start:.1f} s -> {out}")
    return stats
