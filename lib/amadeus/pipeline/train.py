"""Stage train@<family>: dataset/processed/<datasets>/ -> save/<family>.sess, metrics, plots, TensorBoard.

Reads params `train.defaults`, `train.<family>` (overrides), `models.<family>`, `codec.flavour` and
`datasets`. Resumes save/<family>.sess when it was made with the same params (amadeus.training);
`train.<family>.init_from` (relative to the workspace) fine-tunes from another checkpoint's weights.
With `train.<family>.nproc` > 1, stages/train.py starts itself under torchrun (docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amadeus.codec import CodecConfig
from amadeus.data import load_split
from amadeus.errors import UserError
from amadeus.fileio import write_json
from amadeus.models import FAMILIES
from amadeus.params import build, section
from amadeus.pipeline import paths
from amadeus.training import Outputs, TrainConfig, train

__all__ = ["TrainConfig", "run", "train_config"]


def train_config(train_params: Mapping[str, Any] | None, family: str) -> TrainConfig:
    """params `train`: `defaults` for every family, then `<family>` overriding any of its keys."""
    if train_params is not None and not isinstance(train_params, Mapping):
        raise UserError(f"params.yaml: train: expected a mapping (defaults, {', '.join(FAMILIES)}), "
                        f"got {type(train_params).__name__}")
    train_params = dict(train_params or {})
    unknown = sorted(set(train_params) - {"defaults", *FAMILIES})
    if unknown:
        raise UserError(f"params.yaml: train.{unknown[0]}: unknown key; allowed: defaults, {', '.join(FAMILIES)}")
    defaults = train_params.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise UserError(f"params.yaml: train.defaults: expected a mapping of train keys, got {type(defaults).__name__}")
    if build(TrainConfig, defaults, "train.defaults").init_from is not None:  # errors name the key where it is written
        # a checkpoint belongs to one family, and `dvc repro` trains every family in `models`
        raise UserError("params.yaml: train.defaults.init_from: a checkpoint belongs to one model family; set it "
                        "per family, e.g. train.performance_rnn.init_from")
    override = train_params.get(family) or {}
    if not isinstance(override, Mapping):
        raise UserError(f"params.yaml: train.{family}: expected a mapping of train keys")
    return build(TrainConfig, {**defaults, **override}, f"train.{family}")


def run(params: dict, root: Path, family: str) -> dict:
    """Train (or resume) `family` on the `datasets`; returns the metrics (`interrupted` set when stopped)."""
    cfg = train_config(section(params, "train"), family)
    datasets = section(params, "datasets")
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise UserError(f"params.yaml: datasets: expected a list of source names, got {datasets!r}")
    # the flavour is stored in the checkpoint: validated here, so generate and evaluate never meet a bad one
    flavour = build(CodecConfig, section(params, "codec"), "codec").flavour
    folders = [paths.processed_dir(name, root) for name in datasets]
    out = Outputs(checkpoint=paths.checkpoint(family, root=root), tensorboard=paths.tensorboard_dir(family, root),
                  plots=paths.plots_file(family, root), val_plots=paths.plots_file(family, root, "val_nll"),
                  metrics=paths.metrics_file("train", family, root), timings=paths.timings_file("train", family, root))
    result = train(family, section(params, f"models.{family}"), cfg, load_split(folders, "train"),
                   load_split(folders, "validation"), out,
                   params={"codec": {"flavour": flavour}, "datasets": list(datasets)}, root=root)
    if not result["interrupted"] and result.get("rank", 0) == 0:  # under torchrun rank 0 writes
        write_json(paths.headline_file("train", family, root), headline(result))
    return result


def headline(metrics: dict) -> dict:
    """What `dvc metrics show` prints for a trained model: its validation NLL (the training windows) and
    how training ended."""
    keys = ("val_nll", "val_nll_controls", "train_nll", "unigram_nll", "parameters", "steps", "stopped_by")
    return {k: metrics[k] for k in keys if k in metrics}
