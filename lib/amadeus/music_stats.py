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

from collections.abc import Callable, Sequence

import numpy as np

from amadeus.keys import Key, estimate_key, parse_key
from amadeus.vocab import NOTE_OFF, NOTE_ON, STEP_SECONDS, TIME_SHIFT, VELOCITY, VOCAB_SIZE

__all__ = [
    "EVENT_CLASSES", "bootstrap_ci", "capped_fraction", "estimate_key", "in_key_fraction",
    "long_note_fraction", "longest_shared_run", "longest_silence", "mean_polyphony", "median_note_length",
    "nll_by_class",
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


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Callable[..., np.ndarray] = np.mean,
                 n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): `statistic` of the values and its percentile bootstrap interval.

    Resamples items (pieces or prompts, one value each) with replacement `n` times; the interval is
    the central `level` of the resampled statistics. Deterministic for a given seed. `statistic` is
    called once on all resamples with `axis=1`, as numpy's reductions take it (np.mean, np.median,
    functools.partial(np.quantile, q=0.9)). Raises on NaN: drop undefined items first, and say so.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if not len(values):
        raise ValueError("bootstrap_ci needs at least one value")
    if not np.isfinite(values).all():
        raise ValueError("bootstrap_ci: values must be finite (drop items where the measure is undefined)")
    if not 0 < level < 1 or n < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1) and n >= 1, got level={level}, n={n}")
    rng = np.random.default_rng(seed)
    resamples = values[rng.integers(0, len(values), size=(n, len(values)))]
    stats = np.asarray(statistic(resamples, axis=1), dtype=np.float64)
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(statistic(values)), float(low), float(high)


# --------------------------------------------------------------------------------------------------
# Event sequences


def _powers(x: int, n: int) -> np.ndarray:
    """x^0 .. x^(n-1) mod 2^64 (numpy's uint64 arithmetic wraps around, which is the modulus)."""
    return np.concatenate([[np.uint64(1)], np.cumprod(np.full(n - 1, x, dtype=np.uint64))])


def longest_shared_run(generated_ids: np.ndarray, training_pieces: Sequence[np.ndarray]) -> int:
    """Length of the longest run of consecutive events of `generated_ids` found in one training piece.

    A model that replays its training data shows it here: two different MAESTRO pieces share runs of
    about five events. Runs do not cross from one training piece into the next.

    Binary search on the length (a shared run of length L contains shared runs of every shorter
    length), each step comparing hashes of all length-L windows: a random table maps ids to 64-bit
    values and a polynomial hash mod 2^64 is read off prefix sums, so each step is a few numpy passes.
    A hash match is confirmed by comparing the events themselves, so the answer is exact.
    """
    gen = np.asarray(generated_ids, dtype=np.int64).ravel()
    pieces = [np.asarray(p, dtype=np.int64).ravel() for p in training_pieces]
    pieces = [p for p in pieces if len(p)]
    if not len(gen) or not pieces:
        return 0
    train = np.concatenate(pieces)
    if min(gen.min(), train.min()) < 0:
        raise ValueError("longest_shared_run: event ids must be non-negative")
    piece_of = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])

    rng = np.random.default_rng(0)  # fixed: the result must not depend on the hash's luck anyway
    table = rng.integers(0, np.iinfo(np.uint64).max, size=int(max(gen.max(), train.max())) + 1,
                         dtype=np.uint64, endpoint=True)
    base = int(rng.integers(1, 2 ** 62)) * 2 + 1  # odd, so it has an inverse mod 2^64
    size = max(len(gen), len(train))
    powers, inverse = _powers(base, size), _powers(pow(base, -1, 2 ** 64), size)

    def prefix(ids: np.ndarray) -> np.ndarray:  # prefix[i] = sum_{j < i} table[ids[j]] * base^j mod 2^64
        return np.concatenate([[np.uint64(0)], np.cumsum(table[ids] * powers[:len(ids)], dtype=np.uint64)])

    gen_prefix, train_prefix = prefix(gen), prefix(train)

    def windows(pre: np.ndarray, length: int) -> np.ndarray:  # hash of ids[i:i+length], for every i
        count = len(pre) - length
        return (pre[length:] - pre[:count]) * inverse[:count]

    def shared(length: int) -> bool:
        gen_hash = windows(gen_prefix, length)
        order = np.argsort(gen_hash, kind="stable")
        sorted_hash = gen_hash[order]
        train_hash = windows(train_prefix, length)
        starts = np.arange(len(train_hash))
        in_one_piece = piece_of[starts] == piece_of[starts + length - 1]
        slot = np.minimum(np.searchsorted(sorted_hash, train_hash), len(sorted_hash) - 1)
        for t in np.flatnonzero(in_one_piece & (sorted_hash[slot] == train_hash)):
            k = slot[t]
            while k < len(sorted_hash) and sorted_hash[k] == train_hash[t]:  # confirm: no hash collision
                g = order[k]
                if np.array_equal(gen[g:g + length], train[t:t + length]):
                    return True
                k += 1
        return False

    low, high = 0, min(len(gen), max(len(p) for p in pieces))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if shared(mid) else (low, mid - 1)
    return low


EVENT_CLASSES = {  # name -> [first id, last id + 1), from amadeus.vocab
    "note_on": (NOTE_ON, NOTE_OFF),
    "note_off": (NOTE_OFF, TIME_SHIFT),
    "time_shift": (TIME_SHIFT, VELOCITY),
    "velocity": (VELOCITY, VOCAB_SIZE),
}


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
    bounds = np.array([lo for lo, _ in EVENT_CLASSES.values()] + [VOCAB_SIZE])
    scored = (ids >= bounds[0]) & (ids < bounds[-1])
    cls = np.searchsorted(bounds, ids[scored], side="right") - 1
    total = np.bincount(cls, weights=nll[scored], minlength=len(EVENT_CLASSES))
    count = np.bincount(cls, minlength=len(EVENT_CLASSES))
    return {name: {"mean_nll": float(total[k] / count[k]) if count[k] else float("nan"), "count": int(count[k])}
            for k, name in enumerate(EVENT_CLASSES)}
