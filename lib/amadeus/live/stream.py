"""The answer's token stream -> timed MIDI note on/off, one token at a time, as `codec.decode` reads it.

The session samples the answer event by event and pushes each into a `StreamDecoder`, which releases
note-ons and note-offs on the 10 ms step grid as soon as they can no longer change; the session then
gives each a monotonic due time for the scheduler. So that the live answer sounds exactly as
`amadeus generate` would write it, the decoder follows `codec.decode`'s rules, with the facts it needs
from `Codec` (the velocity of each velocity id, and how long a note may stay open).
tests/test_live.py checks event for event that the two agree.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amadeus.vocab import (
    NOTE_OFF,
    NOTE_ON,
    STEP_SECONDS,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    TIME_SHIFT_LAST,
    VELOCITY,
    VELOCITY_LAST,
)

if TYPE_CHECKING:
    import pretty_midi


class Codec:
    """The codec of the checkpoint's flavour, plus the facts of `codec.decode` the stream decoder follows.

    `velocity[id]`: the MIDI velocity of each velocity id; `default_velocity`: the velocity before any
    velocity id; `max_note_steps`: a note still open this many steps after its onset ends there
    (`max_note_seconds`, default the codec's, `CodecConfig.max_note_seconds`).
    """

    def __init__(self, flavour: str = "magenta", max_note_seconds: float | None = None):
        from amadeus import codec

        if flavour not in codec.FLAVOURS:
            raise ValueError(f"unknown codec flavour {flavour!r}; choose one of: {', '.join(codec.FLAVOURS)}")
        if max_note_seconds is None:
            max_note_seconds = codec.CodecConfig().max_note_seconds
        if not max_note_seconds > 0:
            raise ValueError(f"live: max_note_seconds must be > 0, got {max_note_seconds}")
        self.module, self.flavour, self.max_note_seconds = codec, flavour, max_note_seconds
        first_bin = 0 if flavour == "perceiver-io" else 1  # the bin of id VELOCITY, as codec.decode counts
        self.velocity = {tok: codec.velocity_of_bin(tok - VELOCITY + first_bin, flavour)
                         for tok in range(VELOCITY, VELOCITY_LAST + 1)}
        self.default_velocity = codec.DEFAULT_VELOCITY
        self.max_note_steps = round(max_note_seconds * STEPS_PER_SECOND)

    def encode(self, pm: pretty_midi.PrettyMIDI) -> list[int]:
        return [int(i) for i in self.module.encode(pm, flavour=self.flavour)]

    def decode(self, ids: Sequence[int]) -> pretty_midi.PrettyMIDI:
        import numpy as np

        return self.module.decode(np.asarray(ids, dtype=np.int64), flavour=self.flavour,
                                  max_note_seconds=self.max_note_seconds)


@dataclass
class Note:
    step: int  # 10 ms steps from the answer's start
    kind: str  # "on" | "off"
    pitch: int
    velocity: int = 0


class StreamDecoder:
    """Token stream -> timed MIDI note on/off, one token at a time, with `codec.decode`'s semantics.

    Time shifts accumulate; a velocity event sets the velocity of later note-ons (the codec's bin
    mapping); a note-off ends the oldest sounding note of its pitch; a note ending in the step it began
    is dropped, so a step's events are released only once the step is complete (at the next time shift);
    a note open longer than the codec's `max_note_seconds` ends there. MIDI cannot sound one pitch twice:
    a pitch struck while sounding is re-struck (off, then on) and released when its last note ends.
    """

    def __init__(self, codec: Codec):
        self.codec = codec
        self.step = 0
        self.velocity = codec.default_velocity
        self.stack: dict[int, deque[int]] = {}  # pitch -> start steps of its sounding notes, oldest first
        self.pending: list[tuple[str, int, int]] = []  # (kind, pitch, velocity) in the current step

    def push(self, tok: int) -> list[Note]:
        if NOTE_ON <= tok < NOTE_OFF:
            self.pending.append(("on", tok, self.velocity))
        elif NOTE_OFF <= tok < TIME_SHIFT:
            self.pending.append(("off", tok - NOTE_OFF, 0))
        elif TIME_SHIFT <= tok <= TIME_SHIFT_LAST:
            out = self._flush()
            new = self.step + tok - TIME_SHIFT + 1
            out += self._expire(new)
            self.step = new
            return out
        elif VELOCITY <= tok <= VELOCITY_LAST:
            self.velocity = self.codec.velocity[tok]
        return []

    def _flush(self) -> list[Note]:
        before = {p: len(s) for p, s in self.stack.items() if s}
        started: dict[int, int] = {}  # pitch -> velocity of its (last) surviving onset in this step
        ended: set[int] = set()
        for kind, pitch, vel in self.pending:
            starts = self.stack.setdefault(pitch, deque())
            if kind == "on":
                starts.append(self.step)
                started[pitch] = vel
            elif starts:
                if starts.popleft() < self.step:
                    ended.add(pitch)
                elif self.step not in starts:  # a zero-length note never sounds
                    started.pop(pitch, None)
        self.pending = []
        out = [Note(self.step, "off", p) for p in sorted(ended) if p not in started and not self.stack[p]]
        for p, vel in started.items():
            if before.get(p, 0):  # re-strike a sounding pitch
                out.append(Note(self.step, "off", p))
            out.append(Note(self.step, "on", p, vel))
        return out

    def _expire(self, until: int) -> list[Note]:
        """Offs for notes whose codec-imposed end (start + max) falls before step `until`."""
        limit = self.codec.max_note_steps
        out = []
        for pitch, starts in self.stack.items():
            last = None
            while starts and starts[0] + limit < until:
                last = starts.popleft() + limit
            if last is not None and not starts:
                out.append(Note(last, "off", pitch))
        return sorted(out, key=lambda n: n.step)

    def finish(self) -> list[Note]:
        """End the stream now: every sounding note ends at the current step.

        A note-on in this last step would have no length (codec.decode drops it), so it is not played;
        a pitch it re-struck has had its note-off already.
        """
        flushed = self._flush()
        struck = {n.pitch for n in flushed if n.kind == "on"}
        out = [n for n in flushed if n.kind == "off"]
        for pitch, starts in self.stack.items():
            if starts and pitch not in struck:
                out.append(Note(self.step, "off", pitch))
            starts.clear()
        return out



def notes_to_midi(notes: Iterable[Note], velocity_default: int = 64) -> pretty_midi.PrettyMIDI:
    """The answer as played (step times from its first note) as a one-piano PrettyMIDI."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    piano = pretty_midi.Instrument(program=0, name="amadeus")
    open_: dict[int, tuple[int, int]] = {}
    for n in notes:
        if n.kind == "on":
            if n.pitch in open_:
                s, v = open_.pop(n.pitch)
                piano.notes.append(pretty_midi.Note(v, n.pitch, s * STEP_SECONDS, n.step * STEP_SECONDS))
            open_[n.pitch] = (n.step, n.velocity or velocity_default)
        elif n.pitch in open_:
            s, v = open_.pop(n.pitch)
            if n.step > s:
                piano.notes.append(pretty_midi.Note(v, n.pitch, s * STEP_SECONDS, n.step * STEP_SECONDS))
    pm.instruments.append(piano)
    return pm
