"""The 388-event performance vocabulary: the one place that defines event ids and their time arithmetic.

Magenta's performance representation (Oore et al. 2018; docs/vocabulary.md):

    ids   0..127  NOTE_ON of pitch p          -> p
    ids 128..255  NOTE_OFF of pitch p         -> 128 + p
    ids 256..355  TIME_SHIFT of k x 10 ms     -> 255 + k   (k = 1..100)
    ids 356..387  VELOCITY bin b              -> 355 + b   (magenta: b = 1..32; perceiver-io: 356 + b, b = 0..31)
    id  388       PAD (Perceiver AR only; never a musical event)

Time is counted in 10 ms steps; a sequence's time is the sum of its time shifts.
"""

from __future__ import annotations

import numpy as np

NOTE_ON = 0               # first id of each kind
NOTE_OFF = 128
TIME_SHIFT = 256          # the 10 ms shift
VELOCITY = 356
VOCAB_SIZE = 388          # musical events
PAD_ID = 388              # Perceiver AR's padding id (its vocab_size is 389)

NUM_PITCHES = 128
STEPS_PER_SECOND = 100
MAX_SHIFT_STEPS = 100
SHIFT_1S = TIME_SHIFT + MAX_SHIFT_STEPS - 1    # 355: the longest shift, one second
TIME_SHIFT_LAST = SHIFT_1S
NUM_VELOCITY_BINS = 32
VELOCITY_LAST = VELOCITY + NUM_VELOCITY_BINS - 1   # 387
VELOCITY_BIN_SIZE = 4     # note_seq: ceil(127 / 32)
STEP_SECONDS = 1.0 / STEPS_PER_SECOND


def shift_id(steps: int) -> int:
    """Id of a time shift of `steps` x 10 ms (1..100)."""
    if not 1 <= steps <= MAX_SHIFT_STEPS:
        raise ValueError(f"a time shift spans 1..{MAX_SHIFT_STEPS} steps, got {steps}")
    return TIME_SHIFT - 1 + steps


def shift_steps(ids: np.ndarray) -> np.ndarray:
    """10 ms steps each event advances time by (0 for everything but time shifts)."""
    ids = np.asarray(ids, dtype=np.int64)
    is_shift = (ids >= TIME_SHIFT) & (ids <= TIME_SHIFT_LAST)
    return np.where(is_shift, ids - (TIME_SHIFT - 1), 0)


def event_times(ids: np.ndarray) -> np.ndarray:
    """Time (10 ms steps) at which each event happens: the sum of the shifts before it."""
    steps = shift_steps(ids)
    return np.concatenate([[0], np.cumsum(steps)[:-1]]) if len(steps) else steps


def total_steps(ids: np.ndarray) -> int:
    """10 ms steps spanned by an id sequence (the sum of its time shifts)."""
    return int(shift_steps(ids).sum())


def event_seconds(ids: np.ndarray) -> float:
    """Seconds of music in an id sequence (PAD and non-shift events add nothing)."""
    return total_steps(ids) / STEPS_PER_SECOND


def cut_seconds(ids: np.ndarray, seconds: float) -> np.ndarray:
    """The events of the first `seconds` of music; a time shift crossing the cut is shortened to end on it.

    Notes still sounding at the cut stay open (no note-off is invented), so a model continuing the
    prompt sees it as the middle of a performance, as it was.
    """
    ids = np.asarray(ids, dtype=np.int64)
    limit = round(seconds * STEPS_PER_SECOND)
    steps = shift_steps(ids)
    before = event_times(ids)
    keep = before < limit
    out = ids[keep].copy()
    if out.size and steps[keep][-1] and before[keep][-1] + steps[keep][-1] > limit:
        out[-1] = (TIME_SHIFT - 1) + (limit - before[keep][-1])
    return out


def strip_pad(ids: np.ndarray) -> np.ndarray:
    """Ids without PAD (rows that stopped early at max_seconds are padded with it)."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids[ids < PAD_ID]



EVENT_CLASSES = {  # name -> [first id, last id + 1)
    "note_on": (NOTE_ON, NOTE_OFF),
    "note_off": (NOTE_OFF, TIME_SHIFT),
    "time_shift": (TIME_SHIFT, VELOCITY),
    "velocity": (VELOCITY, VOCAB_SIZE),
}
_CLASS_BOUNDS = np.array([lo for lo, _ in EVENT_CLASSES.values()] + [VOCAB_SIZE])


def event_class(ids: np.ndarray) -> np.ndarray:
    """Index into EVENT_CLASSES of each id (0 = note_on .. 3 = velocity); -1 for PAD and ids outside 0..387."""
    ids = np.asarray(ids, dtype=np.int64)
    cls = np.searchsorted(_CLASS_BOUNDS, ids, side="right") - 1
    return np.where((ids >= 0) & (ids < VOCAB_SIZE), cls, -1)
