"""The processed dataset: `.data` event files, the manifest beside them, and splits.

A `.data` file is a NumPy `.npy` array of uint16 event ids (no pickle: `np.load(allow_pickle=False)`
reads it), one per MIDI piece, in `dataset/processed/<source>/`. `manifest.json` in the same folder
lists every piece (source file, its sha256, split, events, notes, seconds), the skipped files with
their reasons, and the codec settings the ids were made with.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from amadeus.errors import UserError
from amadeus.fileio import write_bytes

EXT = ".data"
MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")
SPLIT_FILE = "split.csv"  # written by sources that know their official split: header `path,split`


def save_events(path: str | os.PathLike, ids: np.ndarray, *, atomic: bool = True) -> None:
    """Write event ids as a uint16 .npy file (the same ids give the same bytes).

    `atomic=False` is for callers that write into a staging folder they swap in as a whole.
    """
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.uint16).max):
        raise ValueError("event ids out of uint16 range")
    buf = io.BytesIO()
    np.save(buf, ids.astype(np.uint16, copy=False), allow_pickle=False)
    if atomic:
        write_bytes(path, buf.getvalue())
    else:
        Path(path).write_bytes(buf.getvalue())


def load_events(path: str | os.PathLike) -> np.ndarray:
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .data file ({e}); rerun the preprocess stage") from None
    if ids.dtype != np.uint16 or ids.ndim != 1:
        raise UserError(f"{path}: expected a 1-D uint16 array, got {ids.dtype} {ids.shape}")
    return ids


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise UserError(f"{path}: not found; run `dvc repro` (the preprocess stage) first")
    return json.loads(path.read_text())


def load_split(folders: str | os.PathLike | Sequence[str | os.PathLike], split: str) -> list[np.ndarray]:
    """Event arrays of one split over one or more processed folders, in manifest order."""
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    arrays = []
    for folder in folders:
        for piece in read_manifest(folder)["pieces"]:
            if piece["split"] == split:
                arrays.append(load_events(Path(folder) / piece["file"]))
    return arrays


def split_pieces(names: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """A seeded split by file: the same names, fractions and seed always give the same split.

    Counts are rounded so that every split with a non-zero fraction gets at least one piece when
    there are enough pieces (10 pieces at 0.8/0.1/0.1 -> 8/1/1).
    """
    names = sorted(names)
    n = len(names)
    counts = [int(round(f * n)) for f in fractions]
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0 and n >= len(fractions):
            counts[i] = 1
    counts[0] = n - sum(counts[1:])  # the train split takes the rounding remainder
    order = np.random.default_rng(seed).permutation(n)
    result, start = {}, 0
    for split, count in zip(SPLITS, counts, strict=True):
        for i in order[start:start + count]:
            result[names[i]] = split
        start += count
    return result


def read_split_file(folder: str | os.PathLike) -> dict[str, str] | None:
    """The source's official split (`split.csv`: path relative to the folder, split), if it has one."""
    path = Path(folder) / SPLIT_FILE
    if not path.exists():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    split = {}
    for row in rows:
        if row.get("split") not in SPLITS:
            raise UserError(f"{path}: split {row.get('split')!r} for {row.get('path')} is not one of {SPLITS}")
        split[row["path"]] = row["split"]
    return split


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def midi_files(folder: str | os.PathLike) -> list[str]:
    """MIDI files under `folder`, as sorted relative POSIX paths."""
    folder = Path(folder)
    found = (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".mid", ".midi"))
    return sorted(p.relative_to(folder).as_posix() for p in found)


def data_name(rel_path: str) -> str:
    """The .data file name for a MIDI file: its relative path flattened, so names never collide."""
    stem = rel_path.rsplit(".", 1)[0]
    return stem.replace("/", "__") + EXT


def split_counts(pieces: Iterable[dict]) -> dict[str, int]:
    counts = dict.fromkeys(SPLITS, 0)
    for p in pieces:
        counts[p["split"]] += 1
    return counts
