"""Degenerate continuations are caught and said: loops, silence, stopping short."""

from __future__ import annotations

import numpy as np

from amadeus.continuation_checks import (
    DENSEST_EVENTS_PER_SECOND,
    continuation_warnings,
    describe_event,
    event_cap,
    longest_cycle_run,
)
from amadeus.vocab import NOTE_OFF, SHIFT_1S, VELOCITY, shift_id


def melody(notes: int, seed: int = 0) -> np.ndarray:
    """Varied playing: no cycle, no rest."""
    rng = np.random.default_rng(seed)
    ids = []
    for _ in range(notes):
        p = int(rng.integers(48, 84))
        ids += [VELOCITY + int(rng.integers(0, 32)), p, shift_id(int(rng.integers(5, 40))), NOTE_OFF + p]
    return np.array(ids)


def test_describe_event():
    assert describe_event(60) == "note-on C4" and describe_event(NOTE_OFF + 42) == "note-off F#2"
    assert describe_event(shift_id(25)) == "time shift 0.25 s" and describe_event(VELOCITY + 20) == "velocity bin 20"


def test_longest_cycle_run():
    assert longest_cycle_run(np.array([1, 2, 7, 7, 7, 7, 3])) == (4, 1, 2)
    assert longest_cycle_run(np.array([5, 1, 2, 3, 1, 2, 3, 1, 2, 9])) == (8, 3, 1)
    assert longest_cycle_run(np.array([4])) == (0, 0, 0)


def test_varied_playing_raises_no_warning():
    ids = melody(60)
    assert continuation_warnings(ids, melody(10, seed=1), seconds=1.0, max_new_tokens=len(ids)) == []


def test_a_loop_of_one_event_or_a_tiny_cycle_is_named():
    ons = np.array([60, 62, 64] * 30)
    [line] = [w for w in continuation_warnings(np.concatenate([melody(5), ons])) if "repeats" in w]
    assert "a cycle of 3 events (note-on C4, note-on D4, note-on E4)" in line and "%" in line
    shifts = np.concatenate([melody(3), [SHIFT_1S] * 40])
    warnings = continuation_warnings(shifts)
    assert any("repeats one event (time shift 1.00 s)" in w for w in warnings)
    assert any("goes silent for" in w for w in warnings)


def test_silence_and_no_notes_are_named():
    rest = np.concatenate([melody(5), [shift_id(100)] * 7, melody(5)])
    assert any("goes silent for 7.0 s" in w for w in continuation_warnings(rest))
    assert continuation_warnings(np.array([shift_id(50)] * 3)) == ["the continuation plays no note in its 1.5 s"]


def test_stopping_short_names_the_event_cap():
    ids = melody(10)
    [line] = continuation_warnings(ids, seconds=30.0, max_new_tokens=len(ids))
    assert line.startswith("the continuation stopped at ") and f"max_new_tokens={len(ids)}" in line
    assert "of the 30 s asked for" in line


def test_the_event_cap_leaves_room_for_the_densest_piano():
    assert event_cap(None) == 1000 and event_cap(None, 50) == 50
    assert event_cap(20.0) == 21 * DENSEST_EVENTS_PER_SECOND >= 20 * 120
