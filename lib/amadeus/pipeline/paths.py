"""Where the pipeline keeps its files: every path a stage reads or writes, relative to the workspace
root (the folder with dvc.yaml and params.yaml). dvc.yaml spells the same paths for DVC; a test checks
that the two agree.

    dataset/midi/<source>/                 download@<source>
    dataset/processed/<source>/            preprocess@<source>
    save/<family>.sess                     train@<family>
    stats/<family>.yaml                    calibrate@<family>
    save/<family>.int8.sess                quantize@<family>
    output/<family>/<precision>/           generate@<family>
    output/<family>/<precision>/eval/      generate@<family>: continuations of the held-out prompts
    output/metrics/<stage>_<name>.json     every stage's metrics (score_<family>.json: score@<family>;
                                           evaluate.json and evaluate.md: evaluate)
    output/plots/train_<family>.csv        train@<family>
    runs/<family>/                         train@<family> (TensorBoard)
"""

from __future__ import annotations

import os
from pathlib import Path

Root = str | os.PathLike


def midi_dir(source: str, root: Root = ".") -> Path:
    """The MIDI files of one source, as the download stage leaves them."""
    return Path(root) / "dataset" / "midi" / source


def downloads_dir(source: str, root: Root = ".") -> Path:
    """The download cache of one source, kept between runs (not a DVC output)."""
    return Path(root) / "dataset" / "downloads" / source


def processed_dir(source: str, root: Root = ".") -> Path:
    """The `.data` event files and manifest of one source."""
    return Path(root) / "dataset" / "processed" / source


def checkpoint(family: str, precision: str = "fp32", root: Root = ".") -> Path:
    """save/<family>.sess (fp32, what training writes) or save/<family>.<precision>.sess."""
    name = f"{family}.sess" if precision == "fp32" else f"{family}.{precision}.sess"
    return Path(root) / "save" / name


def existing_checkpoint(family: str, precision: str, root: Root, stage: str) -> Path:
    """`checkpoint(...)`, or a one-line UserError saying how to make it or leave it out of `stage`."""
    from amadeus.errors import UserError

    path = checkpoint(family, precision, root)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; run `dvc repro` (train/quantize {family}) "
                        f"or drop {precision} from {stage}.precisions")
    return path


def stats_file(family: str, root: Root = ".") -> Path:
    """The activation statistics the calibrate stage writes and the quantize stage reads."""
    return Path(root) / "stats" / f"{family}.yaml"


def family_output_dir(family: str, root: Root = ".") -> Path:
    """Everything the generate stage makes for one family (one folder per precision): its DVC output."""
    return Path(root) / "output" / family


def pieces_dir(family: str, precision: str, root: Root = ".") -> Path:
    """The generated pieces of one checkpoint and their index.json."""
    return family_output_dir(family, root) / precision


def eval_dir(family: str, precision: str, root: Root = ".") -> Path:
    """The continuations of the held-out evaluation prompts (NAME.npy, index.json) of one checkpoint."""
    return pieces_dir(family, precision, root) / "eval"


def metrics_dir(root: Root = ".") -> Path:
    return Path(root) / "output" / "metrics"


def metrics_file(stage: str, name: str | None = None, root: Root = ".", suffix: str = ".json") -> Path:
    """output/metrics/<stage>_<name>.json for a stage run per source or family, <stage>.json without a name."""
    return metrics_dir(root) / (f"{stage}_{name}{suffix}" if name else f"{stage}{suffix}")


def plots_file(family: str, root: Root = ".") -> Path:
    """The training curve (step, train_loss, val_loss) that `dvc plots` draws."""
    return Path(root) / "output" / "plots" / f"train_{family}.csv"


def tensorboard_dir(family: str, root: Root = ".") -> Path:
    return Path(root) / "runs" / family
