"""Control features of the conditional Performance RNN: what the next 2 seconds hold.

For every event position t, over the note-ons that come at or after t and start less than 2 s after
t's time (a forward-looking window, as in djosix/Performance-RNN-PyTorch and Magenta; docs/performance-rnn.md#controls,
docs/performance-rnn.md#magenta-performance-rnn), a 24-dim vector:
- [0:12]  pitch-class histogram of those note-ons (pitch mod 12), normalised; uniform if none;
- [12:24] note density: one-hot of the note-on count, bins [0-3], [4-6], ..., [34+) (djosix's
  edges 1, 4, ..., 34 notes per 2 s).
The layout is exactly what is declared here (the port declared histogram-first but stored
density-first, and its transposition rolled the density one-hot). We never roll: controls are
computed from the (transposed, stretched) events themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from amadeus.vocab import NOTE_OFF, event_times, shift_steps

CONTROL_DIM = 24
HISTOGRAM = slice(0, 12)
DENSITY = slice(12, 24)
WINDOW_STEPS = 200  # 2 s on the 10 ms grid
DENSITY_EDGES = np.arange(1, 35, 3)  # 1, 4, ..., 34 note-ons per 2 s (12 bins)

def density_bin(note_ons: np.ndarray | int) -> np.ndarray:
    """Density bin 0..11 of a note-on count in a 2 s window."""
    return np.clip(np.searchsorted(DENSITY_EDGES, note_ons, side="right") - 1, 0, len(DENSITY_EDGES) - 1)


def controls_for(query_times: np.ndarray, query_ordinals: np.ndarray,
                 ev_times: np.ndarray, ev_ids: np.ndarray) -> np.ndarray:
    """Controls [Q,24] at Q positions, given the non-shift events (in order) after the first query.

    `ev_times`/`ev_ids`: the non-shift events, non-decreasing times. Position q sees the events
    with index >= query_ordinals[q] (those not yet played) whose time < query_times[q] + 2 s.
    """
    ev_ids = np.asarray(ev_ids, dtype=np.int64)
    on = ev_ids < NOTE_OFF
    n = len(ev_ids)
    cum_on = np.zeros(n + 1, dtype=np.int64)
    cum_on[1:] = np.cumsum(on)
    onehot = np.zeros((n + 1, 12), dtype=np.float64)
    onehot[1:][on, ev_ids[on] % 12] = 1.0
    cum_pc = np.cumsum(onehot, axis=0)
    end = np.searchsorted(ev_times, np.asarray(query_times) + WINDOW_STEPS, side="left")
    begin = np.asarray(query_ordinals)
    count = cum_on[end] - cum_on[begin]
    hist = cum_pc[end] - cum_pc[begin]
    out = np.empty((len(begin), CONTROL_DIM), dtype=np.float32)
    out[:, HISTOGRAM] = np.where(count[:, None] > 0, hist / np.maximum(count, 1)[:, None], 1.0 / 12)
    out[:, DENSITY] = np.eye(12, dtype=np.float32)[density_bin(count)]
    return out


def piece_controls(ids: np.ndarray) -> np.ndarray:
    """Controls [N,24] for every position of a whole event array."""
    ids = np.asarray(ids, dtype=np.int64)
    times = event_times(ids)
    nonshift = shift_steps(ids) == 0
    ordinals = np.concatenate([[0], np.cumsum(nonshift)[:-1]]) if len(ids) else np.zeros(0, np.int64)
    return controls_for(times, ordinals, times[nonshift], ids[nonshift])


def control_vector(histogram: Sequence[float] | None = None, notes_per_2s: int | None = None) -> np.ndarray:
    """A user-chosen control [24]: pitch-class weights (C, C#, ..., B; normalised, default uniform)
    and a note-on count per 2 s (default 10, a moderate density), for conditioned generation."""
    out = np.zeros(CONTROL_DIM, dtype=np.float32)
    h = np.ones(12) if histogram is None else np.asarray(histogram, dtype=np.float64)
    if h.shape != (12,) or (h < 0).any() or h.sum() <= 0:
        raise ValueError("histogram: expected 12 non-negative weights, not all zero")
    out[HISTOGRAM] = h / h.sum()
    out[DENSITY.start + int(density_bin(10 if notes_per_2s is None else notes_per_2s))] = 1.0
    return out
