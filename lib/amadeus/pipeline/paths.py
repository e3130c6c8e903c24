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
    output/metrics/<stage>_<name>.json     every stage's full results (score_<family>.json: score@<family>;
                                           evaluate.json and evaluate.md: evaluate): DVC outputs
    metrics/<stage>_<name>.json            a few headline numbers of each: DVC metrics, tracked by git
    plots/<family>_{train_loss,val_nll}.csv  train@<family>'s curves: DVC plots, tracked by git
    timings/<stage>_<name>.json            seconds, tokens/s of the last run: neither DVC nor git tracks them
    runs/<family>/                         train@<family> (TensorBoard; not a DVC output)

Nothing DVC hashes holds a wall time, a host name or an absolute path (docs/dvc.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

Root = str | os.PathLike

# A source name becomes a folder name under dataset/: no separators, no `.`/`..`, nothing a shell quotes.
_SOURCE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_source_name(source: str) -> str:
    """`source` when it is a plain folder name, else a one-line UserError (it would write outside dataset/)."""
    if not isinstance(source, str) or not _SOURCE_NAME.fullmatch(source) or source in (".", ".."):
        from amadeus.errors import UserError

        raise UserError(f"params.yaml: sources: {source!r} is not a valid source name; "
                        f"allowed: letters, digits, '.', '_', '-' (not '.' or '..')")
    return source


def midi_dir(source: str, root: Root = ".") -> Path:
    """The MIDI files of one source, as the download stage leaves them."""
    return Path(root) / "dataset" / "midi" / check_source_name(source)


def downloads_dir(source: str, root: Root = ".") -> Path:
    """The download cache of one source, kept between runs (not a DVC output)."""
    return Path(root) / "dataset" / "downloads" / check_source_name(source)


def processed_dir(source: str, root: Root = ".") -> Path:
    """The `.data` event files and manifest of one source."""
    return Path(root) / "dataset" / "processed" / check_source_name(source)


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


def headline_file(stage: str, name: str | None = None, root: Root = ".") -> Path:
    """metrics/<stage>_<name>.json: the few numbers `dvc metrics show` / `dvc exp show` compare."""
    return Path(root) / "metrics" / (f"{stage}_{name}.json" if name else f"{stage}.json")


def timings_file(stage: str, name: str | None = None, root: Root = ".") -> Path:
    """timings/<stage>_<name>.json: how long the last run took here (a measurement, not a result)."""
    return Path(root) / "timings" / (f"{stage}_{name}.json" if name else f"{stage}.json")


def plots_file(family: str, root: Root = ".", curve: str = "train_loss") -> Path:
    """A training curve that `dvc plots` draws: `train_loss` (every log step) or `val_nll` (every validation)."""
    if curve not in ("train_loss", "val_nll"):
        raise ValueError(f"curve: {curve!r}; allowed: train_loss, val_nll")
    return Path(root) / "plots" / f"{family}_{curve}.csv"


def tensorboard_dir(family: str, root: Root = ".") -> Path:
    return Path(root) / "runs" / family
