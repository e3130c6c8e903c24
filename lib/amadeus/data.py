"""The processed dataset: `.data` event files, the manifest beside them, and splits.

A `.data` file is a NumPy `.npy` array of uint16 event ids (no pickle: `np.load(allow_pickle=False)`
reads it), one per MIDI piece, in `dataset/processed/<source>/`. `manifest.json` in the same folder
lists every piece (source file, its sha256, split, events, notes, seconds), the skipped files with
their reasons, and the codec settings the ids were made with.

`load_split` returns a `MappedSplit`: the pieces stay on disk and are memory-mapped when indexed
(read-only, as `np.load(mmap_mode="r")` would map them), so a split of any size costs only its index
(paths and lengths) plus the pages a reader touches. A map holds an open file, so at most
`MappedSplit.MAX_OPEN` maps are kept open (least recently used closed first; ulimit -n is often 1024
and a corpus may hold 10,000 pieces).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import mmap
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
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
    """A .data file's ids, read whole (a split's pieces are mapped instead: `load_split`)."""
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .data file ({e}); rerun the preprocess stage") from None
    if ids.dtype != np.uint16 or ids.ndim != 1:
        raise UserError(f"{path}: expected a 1-D uint16 array, got {ids.dtype} {ids.shape}")
    return ids


def _header(path: Path) -> tuple[int, int]:
    """A .data file's length and where its ids start, from its .npy header alone (nothing left open)."""
    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .data file ({e}); rerun the preprocess stage") from None
    if dtype != np.uint16 or len(shape) != 1:
        raise UserError(f"{path}: expected a 1-D uint16 array, got {dtype} {shape}")
    return int(shape[0]), offset


class MappedSplit(Sequence[np.ndarray]):
    """The pieces of a split as a sequence of read-only memory maps, opened on demand.

    Holds only the paths, lengths and header sizes; `split[i]` maps piece i (a read-only uint16 array
    over an mmap) and keeps the map in a small LRU, so drawing windows reads only their pages. The
    header is read once, here: mapping at its known offset is ~10x cheaper than np.load(mmap_mode="r"),
    which matters when a draw maps a piece that is not in the LRU. A caller that keeps a map keeps its
    file open: iterate, or index one piece at a time, rather than listing them all.
    """

    MAX_OPEN = 64  # open maps (each holds a file descriptor) kept for reuse

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]
        headers = [_header(p) for p in self.paths]
        self.lengths = np.array([n for n, _ in headers], dtype=np.int64)
        self.offsets = np.array([o for _, o in headers], dtype=np.int64)
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indexes, IndexError
        ids = self._open.pop(i, None)
        if ids is None:
            ids = self._map(i)
            if len(self._open) >= self.MAX_OPEN:
                self._open.popitem(last=False)
        self._open[i] = ids
        return ids

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def _map(self, i: int) -> np.ndarray:
        path, count, offset = self.paths[i], int(self.lengths[i]), int(self.offsets[i])
        if count == 0:
            return np.zeros(0, dtype=np.uint16)
        try:
            with open(path, "rb") as f:  # the map keeps its own descriptor until it is released
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable .data file ({e}); rerun the preprocess stage") from None
        if len(mapped) < offset + 2 * count:
            raise UserError(f"{path}: truncated ({len(mapped)} bytes for {count} events); rerun the preprocess stage")
        return np.frombuffer(mapped, dtype=np.uint16, count=count, offset=offset)

    def select(self, indexes: Iterable[int]) -> MappedSplit:
        """The pieces at `indexes`, in that order, as another mapped split."""
        out = MappedSplit([])
        keep = np.asarray(list(indexes), dtype=np.int64)
        out.paths = [self.paths[i] for i in keep]
        out.lengths, out.offsets = self.lengths[keep], self.offsets[keep]
        return out


def piece_lengths(pieces: Sequence[np.ndarray]) -> np.ndarray:
    """Events per piece, without mapping a MappedSplit's files."""
    if isinstance(pieces, MappedSplit):
        return pieces.lengths
    return np.array([len(p) for p in pieces], dtype=np.int64)


def nonempty(pieces: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """The pieces with at least one event, lazily for a MappedSplit."""
    keep = np.flatnonzero(piece_lengths(pieces))
    return pieces.select(keep) if isinstance(pieces, MappedSplit) else [pieces[i] for i in keep]


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise UserError(f"{path}: not found; run `dvc repro` (the preprocess stage) first")
    return json.loads(path.read_text())


def load_split(folders: str | os.PathLike | Sequence[str | os.PathLike], split: str) -> MappedSplit:
    """The pieces of one split over one or more processed folders, in manifest order, memory-mapped.

    Only the index is read now (each file's .npy header); the events are read when a piece is used.
    """
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    files = []
    for folder in folders:
        for piece in read_manifest(folder)["pieces"]:
            if piece["split"] == split:
                files.append(Path(folder) / piece["file"])
    return MappedSplit(files)


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
