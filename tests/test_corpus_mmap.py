"""The corpus is memory-mapped: the loader holds an index, reads only the windows it draws, and draws
exactly the windows that whole pieces in memory give."""

from __future__ import annotations

import json
import mmap
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from test_performance_rnn import SHIFT, synthetic_piece

from amadeus import data
from amadeus.controls import piece_controls
from amadeus.errors import UserError
from amadeus.windows import Piece, WindowSampler, evenly_spaced_windows, make_window, random_windows


def write_corpus(folder: Path, pieces: list[np.ndarray], split: str = "train") -> Path:
    """A processed folder as preprocess writes it: one .data per piece and the manifest listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, ids in enumerate(pieces):
        name = f"piece_{n:04d}.data"
        data.save_events(folder / name, ids, atomic=False)
        entries.append({"name": name, "file": name, "split": split, "events": len(ids)})
    (folder / data.MANIFEST).write_text(json.dumps({"pieces": entries}))
    return folder


def sparse_piece(n_notes: int, seed: int) -> np.ndarray:
    """Mostly 10 ms shifts between notes: a window's events lie far apart (the slices must grow)."""
    rng = np.random.default_rng(seed)
    events: list[int] = []
    for _ in range(n_notes):
        events += [SHIFT + 1] * int(rng.integers(5, 30))
        p = int(rng.integers(30, 100))
        events += [p, SHIFT + 1, 128 + p]
    return np.array(events, dtype=np.uint16)


def is_mapped(ids: np.ndarray) -> bool:
    """Whether an array's memory is a memory-mapped file (through its chain of bases)."""
    owner = ids
    while owner is not None and not isinstance(owner, mmap.mmap):
        owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
    return owner is not None


# ---- the reference: every piece whole in memory, as the loader did before it mapped them ----
def reference_batch(arrays, window, stride, transpose, stretch, controls, seed, step, batch_size):
    length = window + 1
    pieces = [Piece.of(np.load(a, allow_pickle=False)) for a in arrays]
    pieces = [p for p in pieces if len(p.ids) >= length]
    bounds = np.cumsum([(len(p.ids) - length) // stride + 1 for p in pieces])
    rng = np.random.default_rng([seed, step])
    ids, ctrl = [], []
    for k in rng.integers(0, int(bounds[-1]), size=batch_size):
        i = int(np.searchsorted(bounds, k, side="right"))
        start = int(k - (bounds[i - 1] if i else 0)) * stride
        lo, hi = pieces[i].transpositions(transpose)
        shift = int(rng.integers(lo, hi + 1))
        factor = float(rng.uniform(1 - stretch, 1 + stretch)) if stretch > 0 else 1.0
        made = make_window(pieces[i], start, length, shift, factor, controls)
        if made is None:
            made = make_window(pieces[i], start, length, shift, 1.0, controls)
        ids.append(made[0])
        ctrl.append(made[1])
    return np.stack(ids), np.stack(ctrl) if controls else None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    pieces = ([synthetic_piece(n, seed) for seed, n in enumerate((40, 300, 900, 2500, 700))]
              + [sparse_piece(400, 7), synthetic_piece(20, 9), synthetic_piece(1500, 11, low=21, high=40)])
    return write_corpus(tmp_path_factory.mktemp("corpus"), pieces)


@pytest.mark.parametrize("window,stride,transpose,stretch,controls", [
    (64, 3, 12, 0.3, True), (200, 10, 3, 0.05, True), (200, 1, 0, 0.0, False), (31, 7, 5, 0.45, True)])
def test_mapped_draws_equal_whole_pieces_in_memory(corpus, window, stride, transpose, stretch, controls):
    split = data.load_split(corpus, "train")
    assert is_mapped(split[0]) and not split[0].flags.writeable
    sampler = WindowSampler(split, window, stride, transpose=transpose, stretch=stretch, controls=controls, seed=3)
    files = [corpus / p["file"] for p in data.read_manifest(corpus)["pieces"]]
    for step in range(12):
        ids, ctrl = sampler.batch(step, 16)
        want_ids, want_ctrl = reference_batch(files, window, stride, transpose, stretch, controls, 3, step, 16)
        assert torch.equal(ids, torch.from_numpy(want_ids))
        assert (ctrl is None) == (want_ctrl is None)
        if controls:
            assert torch.equal(ctrl, torch.from_numpy(want_ctrl))


def test_mapped_validation_windows_equal_whole_pieces_in_memory(corpus):
    split = data.load_split(corpus, "train")
    whole = [np.load(corpus / p["file"], allow_pickle=False) for p in data.read_manifest(corpus)["pieces"]]
    for window, most in ((49, 1000), (49, 7), (130, 20)):
        places = [(p, s) for p in (Piece.of(a) for a in whole if len(a) > window)
                  for s in range(0, len(p.ids) - window, window + 1)]
        if len(places) > most:
            places = [places[i] for i in np.linspace(0, len(places) - 1, most).round().astype(int)]
        want = [make_window(p, s, window + 1, controls=True) for p, s in places]
        ids, ctrl = evenly_spaced_windows(split, window, most, controls=True)
        assert torch.equal(ids, torch.from_numpy(np.stack([w[0] for w in want])))
        assert torch.equal(ctrl, torch.from_numpy(np.stack([w[1] for w in want])))
    # calibration's random windows: the same draws, controls of the whole piece
    usable = [a for a in whole if len(a) >= 65]
    rng = np.random.default_rng(5)
    want_ids, want_ctrl = [], []
    for _ in range(20):
        k = int(rng.integers(len(usable)))
        s = int(rng.integers(len(usable[k]) - 64))
        want_ids.append(usable[k][s:s + 65].astype(np.int64))
        want_ctrl.append(piece_controls(usable[k])[s:s + 65])
    ids, ctrl = random_windows(split, 20, 64, 5, controls=True)
    assert torch.equal(ids, torch.from_numpy(np.stack(want_ids)))
    assert torch.equal(ctrl, torch.from_numpy(np.stack(want_ctrl)).float())


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_drawing_windows_reads_no_whole_piece(tmp_path):
    # 200 pieces of 40,000 events: 16 MB on disk; in memory as the old loader held them (the uint16
    # arrays plus int64 ids, times and indexes per piece) well over 60 MB.
    rng = np.random.default_rng(0)
    base = [synthetic_piece(12_000, seed) for seed in range(4)]
    pieces = [np.roll(base[n % 4], int(rng.integers(1000)))[:40_000] for n in range(200)]
    folder = write_corpus(tmp_path / "big", pieces)
    on_disk = sum(p.nbytes for p in pieces)
    del pieces, base
    fds = open_files()
    tracemalloc.start()
    try:
        split = data.load_split(folder, "train")
        sampler = WindowSampler(split, 200, 10, transpose=3, stretch=0.05, controls=True, seed=0)
        for step in range(10):
            ids, _ = sampler.batch(step, 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids.shape == (16, 201)
    assert all(is_mapped(split[i]) for i in (0, 199))
    assert not is_mapped(np.load(folder / 'piece_0000.data'))
    # The index and one piece's scan at a time, never the corpus.
    assert peak < on_disk / 8, f"peak {peak / 1e6:.1f} MB while drawing from {on_disk / 1e6:.1f} MB of pieces"
    # Maps hold files open: only a bounded number stay open (ulimit -n is often 1024).
    assert len(split._open) <= data.MappedSplit.MAX_OPEN
    assert open_files() - fds <= data.MappedSplit.MAX_OPEN


def test_a_bad_data_file_is_named_when_the_split_is_indexed(tmp_path):
    folder = write_corpus(tmp_path / "c", [synthetic_piece(50, 0), synthetic_piece(50, 1)])
    (folder / "piece_0001.data").write_bytes(b"not numpy")
    with pytest.raises(UserError, match="piece_0001.data: not a readable .data file"):
        data.load_split(folder, "train")
    np.save(folder / "piece_0001.data", np.zeros(5, dtype=np.int64))  # np.save adds .npy: write it by hand
    (folder / "piece_0001.data").write_bytes((folder / "piece_0001.data.npy").read_bytes())
    with pytest.raises(UserError, match="expected a 1-D uint16 array"):
        data.load_split(folder, "train")
    data.save_events(folder / "piece_0001.data", synthetic_piece(50, 1))
    split = data.load_split(folder, "train")
    (folder / "piece_0001.data").write_bytes((folder / "piece_0001.data").read_bytes()[:-10])
    with pytest.raises(UserError, match="piece_0001.data: truncated"):
        split[1]
