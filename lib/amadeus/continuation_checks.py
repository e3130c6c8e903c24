"""Degenerate continuations, caught and said in one line each: loops, silence, stopping short.

A model can fall into repeating one event or a tiny cycle of them, go silent, or use up its event
budget before the music asked for is there. `continuation_warnings` names each such failure of one
continuation, so `amadeus generate` can print it and the pipeline can record it, instead of leaving
the user to find out by listening.
"""

from __future__ import annotations

import math

import numpy as np

from amadeus.playing_rules import note_name
from amadeus.vocab import NOTE_OFF, STEPS_PER_SECOND, TIME_SHIFT, VELOCITY, VOCAB_SIZE, event_seconds

DENSEST_EVENTS_PER_SECOND = 120  # about the densest real piano playing (fast, loud, pedalled passages)
LONG_SILENCE_SECONDS = 5.0       # a rest longer than this in a continuation is worth a word
REPEAT_FRACTION = 0.5            # a cycle covering this much of the continuation is a loop
MAX_CYCLE = 4                    # cycles of up to this many events count as "tiny"
MIN_EVENTS_FOR_LOOPS = 16        # shorter continuations are too short to call a loop


def event_cap(seconds: float | None, default: int = 1000) -> int:
    """Event budget for a continuation: `default`, or when `seconds` of music are asked for, enough
    events for that much of the densest real piano plus one second (a safety bound, not a target)."""
    if seconds is None:
        return default
    return math.ceil((seconds + 1.0) * DENSEST_EVENTS_PER_SECOND)


def describe_event(event: int) -> str:
    """E.g. "note-on C4", "note-off F#2", "time shift 0.25 s", "velocity bin 20"."""
    if event < NOTE_OFF:
        return f"note-on {note_name(event)}"
    if event < TIME_SHIFT:
        return f"note-off {note_name(event - NOTE_OFF)}"
    if event < VELOCITY:
        return f"time shift {(event - TIME_SHIFT + 1) / STEPS_PER_SECOND:.2f} s"
    if event < VOCAB_SIZE:
        return f"velocity bin {event - VELOCITY}"
    return f"id {event}"


def longest_cycle_run(ids: np.ndarray, max_cycle: int = MAX_CYCLE) -> tuple[int, int, int]:
    """(events covered, cycle length, start) of the longest stretch that repeats a cycle of at most
    `max_cycle` events (ids[i] == ids[i - p] throughout); (0, 0, 0) for fewer than two events."""
    ids = np.asarray(ids, dtype=np.int64)
    best = (0, 0, 0)
    for p in range(1, min(max_cycle, len(ids) - 1) + 1):
        same = np.concatenate([[False], ids[p:] == ids[:-p], [False]])
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        if len(edges):
            starts, ends = edges[::2], edges[1::2]
            k = int(np.argmax(ends - starts))
            covered = int(ends[k] - starts[k]) + p   # the run of matches, plus the cycle it repeats
            if covered > best[0]:
                best = (covered, p, int(starts[k]))
    return best


def continuation_warnings(new_ids: np.ndarray, prompt_ids: np.ndarray | None = None, *,
                          seconds: float | None = None, max_new_tokens: int | None = None,
                          max_note_seconds: float = 5.0, flavour: str = "magenta",
                          silence_seconds: float = LONG_SILENCE_SECONDS) -> list[str]:
    """One line per failure of a continuation `new_ids` of `prompt_ids`: it repeats one event or a
    tiny cycle for most of its length, plays no note or goes silent for more than `silence_seconds`,
    or stops short of the `seconds` asked for (naming the event cap `max_new_tokens`)."""
    from amadeus.codec import decode
    from amadeus.music_stats import longest_silence

    new = np.asarray(new_ids, dtype=np.int64).reshape(-1)
    prompt = np.zeros(0, np.int64) if prompt_ids is None else np.asarray(prompt_ids, np.int64).reshape(-1)
    warnings = []
    covered, cycle, start = longest_cycle_run(new)
    if len(new) >= MIN_EVENTS_FOR_LOOPS and covered >= REPEAT_FRACTION * len(new):
        what = (f"one event ({describe_event(int(new[start]))})" if cycle == 1 else
                f"a cycle of {cycle} events ({', '.join(describe_event(int(e)) for e in new[start:start + cycle])})")
        warnings.append(f"the continuation repeats {what} for {covered / len(new):.0%} of its {len(new)} events")
    got = event_seconds(new)
    if not (new < NOTE_OFF).any():
        warnings.append(f"the continuation plays no note in its {got:.1f} s")
    elif got > 0:
        pm = decode(np.concatenate([prompt, new]), flavour=flavour, max_note_seconds=max_note_seconds)
        notes = np.array([(n.start, n.end, n.pitch, n.velocity) for i in pm.instruments for n in i.notes],
                         dtype=np.float64).reshape(-1, 4)
        begin = event_seconds(prompt)
        rest = longest_silence(notes, start=begin, end=begin + got)
        if rest > silence_seconds:
            warnings.append(f"the continuation goes silent for {rest:.1f} s (more than {silence_seconds:g} s)")
    if seconds is not None and got < seconds - 0.5 / STEPS_PER_SECOND:
        why = (f"the event cap (max_new_tokens={max_new_tokens}, --length) was hit"
               if max_new_tokens is not None and len(new) >= max_new_tokens else "generation ended early")
        warnings.append(f"the continuation stopped at {got:.1f} s of the {seconds:g} s asked for: {why}")
    return warnings
