"""Training windows over event arrays: sampling, augmentation, control features, batches.

A window is W+1 consecutive events of one piece, starting at a multiple of `stride`. Training
batches are drawn with replacement, uniformly over all windows of the train split, from a generator
seeded by (seed, step): the batch of a step depends on nothing else, so a resumed run sees exactly
the batches an uninterrupted run would (no data-loader state to save).

Augmentation, per window:
- pitch transposition by k semitones, k uniform in [-transpose, transpose] clipped so that the
  whole piece stays in the piano range 21..108 (note-on/off ids shift by k);
- time stretch by s uniform in [1 - stretch, 1 + stretch]: every event's absolute time is scaled and
  rounded to the 10 ms grid, and the time shifts are re-encoded from those times (no drift), as
  Magenta's pipeline stretches performances (docs/performance-rnn.md#magenta-performance-rnn).
Control features (`amadeus.controls`) are computed after augmentation, from the window's own events
and the events that follow it in the (augmented) piece.

Memory: the pieces may be memory-maps (`amadeus.data.MappedSplit`). Sampling keeps only a
`PieceIndex` (lengths, pitch range, and the absolute time every `CLOCK_EVERY` events) and builds each
window from a slice of its piece copied when the window is drawn, extended until it holds everything
the window needs (the events of a stretched window, the 2 s its controls look ahead), so the draws
are exactly those of the whole piece in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from amadeus.controls import WINDOW_STEPS, controls_for, piece_controls
from amadeus.data import piece_lengths
from amadeus.vocab import MAX_SHIFT_STEPS, NUM_PITCHES, SHIFT_1S, TIME_SHIFT, VOCAB_SIZE, event_times, shift_steps

PIANO_LOW, PIANO_HIGH = 21, 108


@dataclass
class Piece:
    """An event array with the indexes that windowing needs (computed once)."""

    ids: np.ndarray        # int64 [N]
    times: np.ndarray      # int64 [N], time of each event in 10 ms steps
    ns_idx: np.ndarray     # int64, positions of the non-shift events
    ns_time: np.ndarray    # int64, their times
    end_time: int          # time after the last event
    pitch_low: int         # lowest / highest pitch of any note event (for transposition limits)
    pitch_high: int

    @classmethod
    def of(cls, ids: np.ndarray, start_time: int = 0) -> Piece:
        """The piece of `ids`; `start_time` is the time of the first one (for a slice of a piece)."""
        ids = np.asarray(ids, dtype=np.int64)
        steps = shift_steps(ids)
        times = event_times(ids) + start_time
        ns_idx = np.flatnonzero(steps == 0)
        notes = ids[ids < TIME_SHIFT] % NUM_PITCHES
        low, high = (int(notes.min()), int(notes.max())) if len(notes) else (PIANO_LOW, PIANO_HIGH)
        end = int(times[-1] + steps[-1]) if len(ids) else 0
        return cls(ids, times, ns_idx, times[ns_idx], end, low, high)

    def transpositions(self, limit: int) -> tuple[int, int]:
        """The allowed range of semitone shifts, at most `limit` each way, keeping 21..108."""
        return _transpositions(self.pitch_low, self.pitch_high, limit)


def _transpositions(low: int, high: int, limit: int) -> tuple[int, int]:
    lo, hi = max(-limit, PIANO_LOW - low), min(limit, PIANO_HIGH - high)
    return (lo, hi) if lo <= hi else (0, 0)


def _shift_tokens(ev_ids: np.ndarray, ev_times: np.ndarray, t0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-encode events at absolute times (from t0) with time shifts: (ids, times, ordinals).

    Gaps are split into 1 s shifts plus the remainder (Magenta's canonical form). An event id < 0
    is a sentinel that only advances time (dropped). ordinals[t] = events emitted before token t.
    """
    prev = np.concatenate([[t0], ev_times[:-1]])
    gap = ev_times - prev
    full, rest = gap // MAX_SHIFT_STEPS, gap % MAX_SHIFT_STEPS
    n_shift = full + (rest > 0)
    lengths = n_shift + 1
    cum = np.cumsum(lengths)
    g = np.repeat(np.arange(len(ev_ids)), lengths)
    o = np.arange(cum[-1] if len(cum) else 0) - (cum - lengths)[g]
    tok = np.where(o == n_shift[g], ev_ids[g], np.where(o < full[g], SHIFT_1S, SHIFT_1S - MAX_SHIFT_STEPS + rest[g]))
    times = prev[g] + np.minimum(MAX_SHIFT_STEPS * o, gap[g])
    keep = tok >= 0
    return tok[keep], times[keep], g[keep]


def stretch_events(ids: np.ndarray, factor: float) -> np.ndarray:
    """A whole piece time-stretched by `factor` (absolute times scaled, shifts re-encoded)."""
    p = Piece.of(ids)
    ev = np.concatenate([p.ids[p.ns_idx], [-1]])
    t = np.rint(np.concatenate([p.ns_time, [p.end_time]]) * factor).astype(np.int64)
    return _shift_tokens(ev, t, 0)[0]


def make_window(piece: Piece, start: int, length: int, transpose: int = 0, stretch: float = 1.0,
                controls: bool = False) -> tuple[np.ndarray, np.ndarray | None] | None:
    """`length` events from `start` of the augmented piece, and their controls [length,24] if asked.

    Returns None when a stretch factor < 1 leaves too few events before the piece ends.
    """
    a = int(np.searchsorted(piece.ns_idx, start))  # first non-shift event at or after start
    if stretch == 1.0:
        tok = piece.ids[start:start + length].copy()
        if len(tok) < length:
            return None
        times = piece.times[start:start + length]
        nonshift = shift_steps(tok) == 0
        ordinals = np.concatenate([[0], np.cumsum(nonshift)[:-1]])
    else:
        stop = min(a + length, len(piece.ns_idx))  # `length` events are always enough
        ev = piece.ids[piece.ns_idx[a:stop]]
        t = np.rint(piece.ns_time[a:stop] * stretch).astype(np.int64)
        if stop == len(piece.ns_idx):  # the piece ends inside: keep its trailing silence
            ev = np.concatenate([ev, [-1]])
            t = np.concatenate([t, [np.rint(piece.end_time * stretch)]]).astype(np.int64)
        tok, times, ordinals = _shift_tokens(ev, t, int(np.rint(piece.times[start] * stretch)))
        if len(tok) < length:
            return None
        tok, times, ordinals = tok[:length], times[:length], ordinals[:length]
    if transpose:
        tok = np.where(tok < TIME_SHIFT, tok + transpose, tok)
    if not controls:
        return tok, None
    # The 2 s ahead of the last token may reach past the window: take the piece's events up to there.
    horizon = int(np.ceil((times[-1] + WINDOW_STEPS + 0.5) / stretch))
    b = int(np.searchsorted(piece.ns_time, horizon, side="left"))
    ev_ids = piece.ids[piece.ns_idx[a:b]]
    if transpose:
        ev_ids = np.where(ev_ids < TIME_SHIFT, ev_ids + transpose, ev_ids)
    ev_times = piece.ns_time[a:b] if stretch == 1.0 else np.rint(piece.ns_time[a:b] * stretch).astype(np.int64)
    return tok, controls_for(times, ordinals, ev_times, ev_ids)


CLOCK_EVERY = 1024  # events between the absolute times a PieceIndex keeps (8 bytes per 1024 events)
_CHUNK = 64 * CLOCK_EVERY  # events read at a time while indexing


class PieceIndex:
    """The pieces at least `min_length` long, indexed without holding their events.

    Per piece: its length, its pitch range (transposition limits are the whole piece's) and its
    absolute time every CLOCK_EVERY events (a window's times are absolute: stretching rounds them).
    `window()` copies only the slice of the piece the window needs.
    """

    def __init__(self, arrays: Sequence[np.ndarray], min_length: int):
        self.arrays = arrays
        lengths = piece_lengths(arrays)
        self.pieces = np.flatnonzero(lengths >= min_length)  # positions in `arrays`
        self.lengths = lengths[self.pieces]
        self.pitch = np.zeros((len(self.pieces), 2), dtype=np.int64)
        self.clock: list[np.ndarray] = []
        for j, i in enumerate(self.pieces):
            self.pitch[j], clock = _scan(arrays[int(i)])
            self.clock.append(clock)

    def __len__(self) -> int:
        return len(self.pieces)

    def transpositions(self, j: int, limit: int) -> tuple[int, int]:
        return _transpositions(int(self.pitch[j, 0]), int(self.pitch[j, 1]), limit)

    def piece(self, j: int, start: int, count: int) -> Piece:
        """Events start..start+count of piece j, with their absolute times (pitch range not set)."""
        ids = self.arrays[int(self.pieces[j])]
        k = start // CLOCK_EVERY
        t0 = int(self.clock[j][k]) + int(shift_steps(ids[k * CLOCK_EVERY:start]).sum())
        return Piece.of(ids[start:start + count], t0)

    def window(self, j: int, start: int, length: int, transpose: int = 0, stretch: float = 1.0,
               controls: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """make_window on piece j, unstretched where stretching runs past the piece's end."""
        total = int(self.lengths[j])
        count = min(total - start, 4 * length + 256)  # usually enough: doubled until it is
        while True:
            part = self.piece(j, start, count)
            if start + count == total or _covers(part, length, stretch, controls):
                made = make_window(part, 0, length, transpose, stretch, controls)
                if made is None:  # stretched past the end of the piece: this window unstretched
                    made = make_window(part, 0, length, transpose, 1.0, controls)
                return made
            count = min(total - start, 2 * count)


def _scan(ids: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    """A piece's pitch range and its time at events 0, CLOCK_EVERY, 2 * CLOCK_EVERY, ..., read in chunks."""
    low, high, now, clock = NUM_PITCHES, -1, 0, []
    for c in range(0, len(ids), _CHUNK):
        chunk = np.asarray(ids[c:c + _CHUNK], dtype=np.int64)
        notes = chunk[chunk < TIME_SHIFT] % NUM_PITCHES
        if len(notes):
            low, high = min(low, int(notes.min())), max(high, int(notes.max()))
        times = event_times(chunk) + now
        clock.append(times[::CLOCK_EVERY])
        now = int(times[-1] + shift_steps(chunk[-1:])[0])
    pitch = (low, high) if high >= 0 else (PIANO_LOW, PIANO_HIGH)
    return pitch, np.concatenate(clock) if clock else np.zeros(1, dtype=np.int64)


def _covers(part: Piece, length: int, stretch: float, controls: bool) -> bool:
    """Whether a slice that stops before its piece's end gives the window the whole piece gives.

    It must hold more than `length` non-shift events (so make_window neither runs out of events nor
    takes the slice's end for the piece's), and with controls an event at or after the 2 s horizon of
    the window's last token (bounded here by the time of the window's last possible event).
    """
    if len(part.ns_idx) <= length:
        return False
    if not controls:
        return True
    last = int(part.times[length - 1]) if stretch == 1.0 else int(np.rint(part.ns_time[length - 1] * stretch))
    horizon = int(np.ceil((last + WINDOW_STEPS + 0.5) / stretch))  # make_window's, at a later or equal time
    return int(part.ns_time[-1]) >= horizon


class WindowSampler:
    """Random training batches: windows of `window + 1` events, augmented, reproducible by step.

    `arrays` may be memory-maps: only a PieceIndex is kept, and each drawn window's slice is read.
    """

    def __init__(self, arrays: Sequence[np.ndarray], window: int, stride: int, *, transpose: int = 0,
                 stretch: float = 0.0, controls: bool = False, seed: int = 0):
        self.length = window + 1
        self.stride, self.transpose, self.stretch = stride, transpose, stretch
        self.controls, self.seed = controls, seed
        self.index = PieceIndex(arrays, self.length)
        counts = (self.index.lengths - self.length) // stride + 1
        self.bounds = np.cumsum(counts)
        self.n_windows = int(self.bounds[-1]) if len(counts) else 0

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch of training step `step`: ids [B, W+1] long, controls [B, W+1, 24] or None."""
        if self.n_windows == 0:
            raise ValueError("no piece is long enough for one window")
        rng = np.random.default_rng([self.seed, step])
        ids, ctrl = [], []
        for k in rng.integers(0, self.n_windows, size=batch_size):
            i = int(np.searchsorted(self.bounds, k, side="right"))
            start = int(k - (self.bounds[i - 1] if i else 0)) * self.stride
            lo, hi = self.index.transpositions(i, self.transpose)
            shift = int(rng.integers(lo, hi + 1))
            factor = float(rng.uniform(1 - self.stretch, 1 + self.stretch)) if self.stretch > 0 else 1.0
            made = self.index.window(i, start, self.length, shift, factor, self.controls)
            ids.append(made[0])
            ctrl.append(made[1])
        return _tensors(ids, ctrl if self.controls else None)


def evenly_spaced_windows(arrays: Sequence[np.ndarray], window: int, max_windows: int,
                          controls: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validation windows: non-overlapping, in order, evenly thinned to at most `max_windows`.

    ids [N, window+1] (and controls [N, window+1, 24] if asked); N = 0 when no piece is long enough.
    Only the chosen windows are read (`arrays` may be memory-maps).
    """
    length = window + 1
    index = PieceIndex(arrays, length)
    bounds = np.cumsum((index.lengths - length) // length + 1)  # windows at 0, length, 2 * length, ...
    total = int(bounds[-1]) if len(bounds) else 0
    chosen = np.arange(total)
    if total > max_windows:
        chosen = np.linspace(0, total - 1, max_windows).round().astype(int)
    made = []
    for g in chosen:
        j = int(np.searchsorted(bounds, g, side="right"))
        start = int(g - (bounds[j - 1] if j else 0)) * length
        made.append(index.window(j, start, length, controls=controls))
    return _tensors([m[0] for m in made], [m[1] for m in made] if controls else None)


def random_windows(arrays: Sequence[np.ndarray], count: int, window: int, seed: int,
                   controls: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`count` seeded random windows: each a uniformly chosen piece (long enough) and start.

    ids [count, window+1] (and controls [count, window+1, 24] if asked); the same arguments always
    give the same windows, and the first k of `count` windows are those of `count = k`. N = 0 when no
    piece is long enough. Only the drawn windows are read, and controls only for the drawn pieces.
    """
    lengths = piece_lengths(arrays)
    usable = np.flatnonzero(lengths >= window + 1)
    if not len(usable):
        return _tensors([], None)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(count):
        k = int(usable[int(rng.integers(len(usable)))])
        draws.append((k, int(rng.integers(int(lengths[k]) - window))))
    ids = [np.asarray(arrays[k][s:s + window + 1], dtype=np.int64) for k, s in draws]
    if not controls:
        return _tensors(ids, None)
    cs: list[np.ndarray | None] = [None] * count
    for k in dict.fromkeys(k for k, _ in draws):  # each drawn piece's controls once, one piece at a time
        ctrl = piece_controls(arrays[k])
        for n, (k2, s) in enumerate(draws):
            if k2 == k:
                cs[n] = ctrl[s:s + window + 1]
    out_ids, out_ctrl = _tensors(ids, cs)
    return out_ids, out_ctrl.float() if out_ctrl is not None else None


def _tensors(ids: list[np.ndarray], ctrl: list[np.ndarray] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not ids:
        return torch.zeros(0, 0, dtype=torch.long), None
    out_ids = torch.from_numpy(np.stack(ids).astype(np.int64))
    out_ctrl = torch.from_numpy(np.stack(ctrl)) if ctrl is not None else None
    return out_ids, out_ctrl


def token_counts(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """How often each of the 388 ids occurs."""
    counts = np.zeros(VOCAB_SIZE, dtype=np.int64)
    for a in arrays:
        counts += np.bincount(np.asarray(a, dtype=np.int64), minlength=VOCAB_SIZE)[:VOCAB_SIZE]
    return counts


def unigram_nll(train: Sequence[np.ndarray], targets: torch.Tensor) -> float:
    """NLL (nats/event) of `targets` under the train split's add-one-smoothed id frequencies."""
    counts = token_counts(train) + 1
    logp = np.log(counts / counts.sum())
    return float(-logp[targets.reshape(-1).numpy()].mean())


__all__ = ["Piece", "PieceIndex", "WindowSampler", "evenly_spaced_windows", "make_window", "random_windows",
           "stretch_events", "token_counts", "unigram_nll"]
