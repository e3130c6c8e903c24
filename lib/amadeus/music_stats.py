"""Plain musical measures of one performance, and a bootstrap to put error bars on their means.

MGEval's overlap areas (amadeus.metrics) say how far a set of pieces is from the reference set, but
not what is wrong. These measures name the audible failures of a model's continuations directly
(docs/evaluation.md): a wall of held notes (polyphony, long and length-capped notes), notes out of
key, long silences, replayed training data, and which kind of event the model predicts badly.

Notes are arrays [N, 4] of (start, end, pitch, velocity) in seconds, as `amadeus.metrics.note_array`
returns them (sustain pedal already folded into note lengths by the codec). A measure over notes of a
piece with no notes is NaN (undefined), except where "nothing" has a natural value (0 notes sound).
Each function scores one item; `bootstrap_ci` turns the per-item values of a set into an estimate
with a confidence interval, so two settings can be told apart or not.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Sequence

import numpy as np

from amadeus.keys import Key, estimate_key, parse_key
from amadeus.vocab import (
    EVENT_CLASSES,
    NOTE_OFF,
    NOTE_ON,
    STEP_SECONDS,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    event_class,
    total_steps,
)

__all__ = [
    "DISCARD_KINDS", "EVENT_CLASSES", "SharedRunIndex", "bootstrap_ci", "bootstrap_ratio_ci", "capped_fraction",
    "discarded_events", "estimate_key", "in_key_fraction", "long_note_fraction", "longest_shared_run",
    "longest_silence", "mean_polyphony", "median_note_length", "nll_by_class",
]

# Note lengths within this of a threshold count as equal to it: times on the 10 ms grid are not exact
# in binary (4.15 - 1.15 > 3.0), and this is far below any audible difference.
_TIME_TOLERANCE = 1e-6


def _lengths(notes: np.ndarray) -> np.ndarray:
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    return notes[:, 1] - notes[:, 0]


def _sounding(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The piece as consecutive intervals (start time, length, notes sounding), first onset to last offset.

    A sweep over onsets (+1) and offsets (-1); notes of zero length sound for no time and are left out.
    """
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    notes = notes[notes[:, 1] > notes[:, 0]]
    times = np.concatenate([notes[:, 0], notes[:, 1]])
    change = np.concatenate([np.ones(len(notes), np.int64), -np.ones(len(notes), np.int64)])
    order = np.argsort(times, kind="stable")
    times, count = times[order], np.cumsum(change[order])
    # Between events at the same time the count is transient, but such intervals have zero length.
    return times[:-1], np.diff(times), count[:-1]


def mean_polyphony(notes: np.ndarray, include_silence: bool = False) -> float:
    """Time-weighted mean number of notes sounding, over the time at least one note sounds.

    Exact in continuous time: sum over notes of their lengths divided by the time covered by at least
    one note (so rests do not dilute a wall of held notes). `include_silence=True` divides by the
    whole span from the first onset to the last offset instead. 0.0 for no notes.
    """
    _, length, count = _sounding(notes)
    busy = length[count > 0].sum() if not include_silence else length.sum()
    return float((length * count).sum() / busy) if busy > 0 else 0.0


def long_note_fraction(notes: np.ndarray, seconds: float = 3.0) -> float:
    """Fraction of notes longer than `seconds` (real pedalled piano: a few percent over 2-3 s)."""
    lengths = _lengths(notes)
    return float(np.mean(lengths > seconds + _TIME_TOLERANCE)) if len(lengths) else float("nan")


def median_note_length(notes: np.ndarray) -> float:
    """Median note length in seconds (robust to the few very long notes a pedal makes)."""
    lengths = _lengths(notes)
    return float(np.median(lengths)) if len(lengths) else float("nan")


def capped_fraction(notes: np.ndarray, cap_seconds: float) -> float:
    """Fraction of notes whose length is the decoder's cap (within half a 10 ms step).

    `codec.decode` closes a note left open `max_note_seconds` after its onset, so these notes were
    never released by the model: it forgot them.
    """
    lengths = _lengths(notes)
    if not len(lengths):
        return float("nan")
    return float(np.mean(np.abs(lengths - cap_seconds) <= STEP_SECONDS / 2 + _TIME_TOLERANCE))


def in_key_fraction(notes: np.ndarray, key: Key | str) -> float:
    """Fraction of notes (each counts once) whose pitch class is in `key`'s scale.

    Major: the ionian scale; minor: natural minor plus the raised 7th (see amadeus.keys). `key` is a
    Key (e.g. `estimate_key(prompt_notes).key`) or a name such as "Bb minor".
    """
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    if not len(notes):
        return float("nan")
    mask = parse_key(key).pitch_class_mask()
    return float(np.mean(mask[notes[:, 2].astype(np.int64) % 12]))


def longest_silence(notes: np.ndarray, start: float | None = None, end: float | None = None) -> float:
    """Longest stretch in seconds with no note sounding.

    By default between the first onset and the last offset (0.0 for no notes). Give `start`/`end`
    (e.g. the continuation's window) to count a silent beginning or end too: notes are clipped to the
    window, and a window with no note in it is all silence.
    """
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4).copy()
    windowed = start is not None or end is not None
    if windowed and len(notes):
        start = notes[:, 0].min() if start is None else start
        end = notes[:, 1].max() if end is None else end
        notes[:, :2] = np.clip(notes[:, :2], start, end)
    time, length, count = _sounding(notes)
    if not len(count):  # nothing sounds: all silence if the window is known
        return float(max(end - start, 0.0)) if start is not None and end is not None else 0.0
    silences = length[count == 0]
    if windowed:
        silences = np.append(silences, [time[0] - start, end - (time[-1] + length[-1])])
    return float(silences.max(initial=0.0))


# --------------------------------------------------------------------------------------------------
# Sets of items


def _resamples(count: int, n: int, seed: int, level: float) -> np.ndarray:
    """[n, count] item indices, drawn with replacement (the same seed draws the same resamples)."""
    if not count:
        raise ValueError("bootstrap: needs at least one value")
    if not 0 < level < 1 or n < 1:
        raise ValueError(f"bootstrap: level must be in (0, 1) and n >= 1, got level={level}, n={n}")
    return np.random.default_rng(seed).integers(0, count, size=(n, count))


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError("bootstrap: values must be finite (drop items where the measure is undefined)")
    return values


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Callable[..., np.ndarray] = np.mean,
                 n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): `statistic` of the values and its percentile bootstrap interval.

    Resamples items (pieces or prompts, one value each) with replacement `n` times; the interval is
    the central `level` of the resampled statistics. Deterministic for a given seed. `statistic` is
    called once on all resamples with `axis=1`, as numpy's reductions take it (np.mean, np.median,
    functools.partial(np.quantile, q=0.9)). Raises on NaN: drop undefined items first, and say so.
    """
    values = _finite(values)
    resamples = values[_resamples(len(values), n, seed, level)]
    stats = np.asarray(statistic(resamples, axis=1), dtype=np.float64)
    return (float(statistic(values)), *_interval(stats, level))


def bootstrap_ratio_ci(numerator: Sequence[float] | np.ndarray, denominator: Sequence[float] | np.ndarray,
                       n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean(numerator) / mean(denominator), low, high) with a paired percentile bootstrap.

    Item i's two values (e.g. a generated and the real continuation of one prompt) are resampled
    together, so what the items share cancels. A ratio of means, not a mean of per-item ratios: one
    item with a near-zero denominator would dominate those. A zero denominator mean gives inf or NaN.
    """
    num, den = _finite(numerator), _finite(denominator)
    if num.shape != den.shape:
        raise ValueError(f"bootstrap_ratio_ci: {num.size} numerators for {den.size} denominators")
    draw = _resamples(len(num), n, seed, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = num[draw].mean(axis=1) / den[draw].mean(axis=1)
        estimate = num.mean() / den.mean()
    if not np.isfinite(stats).all():
        return float(estimate), float("nan"), float("nan")
    return (float(estimate), *_interval(stats, level))


# --------------------------------------------------------------------------------------------------
# Event sequences


def _powers(x: int, n: int) -> np.ndarray:
    """x^0 .. x^(n-1) mod 2^64 (numpy's uint64 arithmetic wraps around, which is the modulus)."""
    return np.concatenate([[np.uint64(1)], np.cumprod(np.full(max(n - 1, 0), x, dtype=np.uint64))])[:n]


class SharedRunIndex:
    """Training pieces prepared for `longest_shared_run`: build once, query with many continuations.

    A random table maps ids to 64-bit values and a polynomial hash mod 2^64 of any window is read off
    prefix sums, so the hashes of all length-L windows are a few numpy passes. The training windows
    of each length a query asks for are hashed and sorted once and kept (the last `keep_lengths`),
    so a query costs a binary search per step instead of a pass over the training data.
    """

    def __init__(self, training_pieces: Sequence[np.ndarray], keep_lengths: int = 24):
        pieces = [np.asarray(p, dtype=np.int64).ravel() for p in training_pieces]
        pieces = [p for p in pieces if len(p)]
        self.train = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        if len(self.train) and (self.train.min() < 0 or self.train.max() >= _HASHED_IDS):
            raise ValueError(f"SharedRunIndex: event ids must be in 0..{_HASHED_IDS - 1}")
        self.longest_piece = max((len(p) for p in pieces), default=0)
        # piece_end[i]: one past the last position of the piece holding position i (runs stay inside it)
        self.piece_end = np.repeat(np.cumsum([len(p) for p in pieces]), [len(p) for p in pieces])
        rng = np.random.default_rng(0)  # fixed: the result must not depend on the hash's luck anyway
        self.table = rng.integers(0, np.iinfo(np.uint64).max, size=_HASHED_IDS, dtype=np.uint64, endpoint=True)
        self.base = int(rng.integers(1, 2 ** 62)) * 2 + 1  # odd, so it has an inverse mod 2^64
        self.inverse_base = pow(self.base, -1, 2 ** 64)
        self.train_prefix = self._prefix(self.train)
        self.train_inverse = _powers(self.inverse_base, len(self.train))
        self.keep_lengths = keep_lengths
        self._windows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _prefix(self, ids: np.ndarray) -> np.ndarray:
        """prefix[i] = sum over j < i of table[ids[j]] * base^j, mod 2^64."""
        terms = self.table[ids] * _powers(self.base, len(ids))
        return np.concatenate([[np.uint64(0)], np.cumsum(terms, dtype=np.uint64)])

    @staticmethod
    def _hashes(prefix: np.ndarray, inverse: np.ndarray, length: int) -> np.ndarray:
        """Hash of ids[i:i+length] for every i (shifted back to position 0, so equal runs hash equal)."""
        count = len(prefix) - length
        return (prefix[length:] - prefix[:count]) * inverse[:count]

    def _training_windows(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted hashes, start positions) of the training windows of `length` inside one piece."""
        if length not in self._windows:
            if len(self._windows) >= self.keep_lengths:
                self._windows.pop(next(iter(self._windows)))  # the oldest
            hashes = self._hashes(self.train_prefix, self.train_inverse, length)
            starts = np.flatnonzero(self.piece_end[:len(hashes)] >= np.arange(len(hashes)) + length)
            order = np.argsort(hashes[starts], kind="stable")
            self._windows[length] = hashes[starts][order], starts[order]
        return self._windows[length]

    def longest(self, generated_ids: np.ndarray) -> int:
        """Length of the longest run of consecutive events of `generated_ids` found in one training piece.

        Galloping search on the length (a shared run of length L contains shared runs of every shorter
        length: try 1, 2, 4, ... until one fails, then bisect), so typical answers of 5-7 events take
        about six steps. A hash match is confirmed on the events themselves: the answer is exact.
        """
        gen = np.asarray(generated_ids, dtype=np.int64).ravel()
        limit = min(len(gen), self.longest_piece)
        if limit == 0:
            return 0
        if gen.min() < 0:
            raise ValueError(f"longest_shared_run: event ids must be in 0..{_HASHED_IDS - 1}")
        if gen.max() >= _HASHED_IDS:
            raise ValueError(f"longest_shared_run: event ids must be in 0..{_HASHED_IDS - 1}")
        prefix = self._prefix(gen)
        inverse = _powers(self.inverse_base, len(gen))

        def shared(length: int) -> bool:
            hashes = self._hashes(prefix, inverse, length)
            train_hashes, train_starts = self._training_windows(length)
            low = np.searchsorted(train_hashes, hashes, side="left")
            high = np.searchsorted(train_hashes, hashes, side="right")
            for g in np.flatnonzero(high > low):
                for k in range(low[g], high[g]):  # confirm: no hash collision
                    t = train_starts[k]
                    if np.array_equal(gen[g:g + length], self.train[t:t + length]):
                        return True
            return False

        low, step = 0, 1
        while step <= limit and shared(step):
            low, step = step, step * 2
        high = min(step - 1, limit)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if shared(mid) else (low, mid - 1)
        return low


_HASHED_IDS = 1 << 16  # event ids are stored as uint16


def longest_shared_run(generated_ids: np.ndarray, training_pieces: Sequence[np.ndarray] | SharedRunIndex) -> int:
    """Length of the longest run of consecutive events of `generated_ids` found in one training piece.

    A model that replays its training data shows it here: two different MAESTRO pieces share runs of
    about five events. Runs do not cross from one training piece into the next. Pass a SharedRunIndex
    instead of the pieces to check many continuations against the same training data quickly.
    """
    index = training_pieces if isinstance(training_pieces, SharedRunIndex) else SharedRunIndex(training_pieces)
    return index.longest(generated_ids)


def nll_by_class(token_nll: np.ndarray, targets: np.ndarray) -> dict[str, dict[str, float | int]]:
    """Mean NLL (nats) and count of the scored tokens of each event class, keyed by EVENT_CLASSES.

    One overall NLL hides where a model fails: timing (time shifts) and releases (note-offs) are what
    make a wall of held notes. Targets outside 0..VOCAB_SIZE-1 (PAD, ignore indices) are not counted;
    a class with no tokens has mean NaN.
    """
    nll = np.asarray(token_nll, dtype=np.float64).ravel()
    ids = np.asarray(targets, dtype=np.int64).ravel()
    if nll.shape != ids.shape:
        raise ValueError(f"nll_by_class: {nll.size} NLLs for {ids.size} targets")
    cls = event_class(ids)
    scored = cls >= 0
    cls = cls[scored]
    total = np.bincount(cls, weights=nll[scored], minlength=len(EVENT_CLASSES))
    count = np.bincount(cls, minlength=len(EVENT_CLASSES))
    return {name: {"mean_nll": float(total[k] / count[k]) if count[k] else float("nan"), "count": int(count[k])}
            for k, name in enumerate(EVENT_CLASSES)}


# --------------------------------------------------------------------------------------------------
# What the decoder fixes


DISCARD_KINDS = ("stray_note_off", "zero_length", "restrike", "capped", "invalid")


def discarded_events(ids: np.ndarray, max_note_seconds: float = 5.0, count_from: int = 0) -> dict[str, int]:
    """Events `codec.decode` does not take as written, by kind, plus their "total".

        stray_note_off  a note-off of a pitch with no open note: ignored
        zero_length     a note-off in the step of its note-on, or a note still open at the end in the
                        step it began: the note is dropped
        restrike        a note-on of a pitch already sounding: a second open note of that pitch (the
                        next note-off closes the older one; real encodings write note-off, note-on)
        capped          a note the decoder closed `max_note_seconds` after its onset: no note-off came
        invalid         an id outside 0..387 (PAD included): ignored

    Only events from index `count_from` on are counted (caps: those closing after the time there);
    the ones before are replayed, so a continuation may close its prompt's notes. Follows
    `codec.decode` step by step (note-offs close the oldest open note of their pitch).
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    max_steps = max_note_seconds * STEPS_PER_SECOND
    boundary = total_steps(ids[:count_from])
    counts = dict.fromkeys(DISCARD_KINDS, 0)
    open_notes: dict[int, deque[int]] = defaultdict(deque)  # pitch -> onset steps, oldest first
    step = 0

    def close_expired(onsets: deque[int], now: int) -> None:
        while onsets and now - onsets[0] > max_steps:
            counts["capped"] += onsets.popleft() + max_steps > boundary

    for i, event in enumerate(ids.tolist()):
        counted = i >= count_from
        if NOTE_ON <= event < NOTE_OFF:
            onsets = open_notes[event - NOTE_ON]
            close_expired(onsets, step)  # a note past the cap has ended: striking again is no restrike
            counts["restrike"] += counted and bool(onsets)
            onsets.append(step)
        elif NOTE_OFF <= event < TIME_SHIFT:
            onsets = open_notes[event - NOTE_OFF]
            close_expired(onsets, step)
            if not onsets:
                counts["stray_note_off"] += counted
            elif onsets.popleft() == step:
                counts["zero_length"] += counted
        elif TIME_SHIFT <= event < VELOCITY:
            step += event - (TIME_SHIFT - 1)
        elif not VELOCITY <= event < VOCAB_SIZE:
            counts["invalid"] += counted
    for onsets in open_notes.values():  # the end closes what is open
        close_expired(onsets, step)
        counts["zero_length"] += sum(onset == step for onset in onsets)
    counts["total"] = sum(counts.values())
    return counts
