"""Phrase players: play a MIDI file (or any messages) into a session's input as a player would.

`amadeus live --input-file` and the tests and benchmark drive sessions this way, through the
in-memory input of `amadeus.live.ports`, with no keyboard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import mido

from amadeus.errors import UserError
from amadeus.live.ports import SUSTAIN

if TYPE_CHECKING:
    import pretty_midi

    from amadeus.live.ports import MemoryInput
    from amadeus.live.session import LiveSession


def midi_file_messages(path: str | Path) -> list[tuple[float, mido.Message]]:
    """(seconds from the first message, message) for the notes and sustain pedal of a MIDI file."""
    from amadeus import codec

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: --input-file not found")
    pm = codec.read_midi(path)   # a bad file: codec.MidiError, one line naming it
    messages = phrase_messages(pm)
    if not messages:
        raise UserError(f"{path}: no notes to play into the session")
    return messages


def phrase_messages(pm: pretty_midi.PrettyMIDI) -> list[tuple[float, mido.Message]]:
    """The notes and sustain pedal of a PrettyMIDI (drums left out) as a player would send them.

    Times are seconds from the first message; at one time, pedal changes come first, then note-offs,
    then note-ons, so a key struck again at the moment it is released sounds again.
    """
    events: list[tuple[float, int, mido.Message]] = []
    for inst in pm.instruments:
        if inst.is_drum:
            continue
        for n in inst.notes:
            events.append((n.start, 2, mido.Message("note_on", note=n.pitch, velocity=max(1, n.velocity))))
            events.append((n.end, 1, mido.Message("note_off", note=n.pitch, velocity=0)))
        for c in inst.control_changes:
            if c.number == SUSTAIN:
                events.append((c.time, 0, mido.Message("control_change", control=SUSTAIN, value=c.value)))
    if not any(kind == 2 for _, kind, _ in events):
        return []
    events.sort(key=lambda e: (e[0], e[1]))
    t0 = events[0][0]
    return [(t - t0, msg) for t, _, msg in events]


def play_phrase(port: MemoryInput, messages: Sequence[tuple[float, mido.Message]], speed: float | None = 1.0,
                stop: threading.Event | None = None) -> None:
    """Play messages into an in-memory input as a player would.

    speed 1.0 = real time, 2.0 = twice as fast (the stamps are then compressed too); None = at once,
    stamped as though played in real time ending now (a phrase replayed from the past, for tests).
    """
    if speed is None:
        end = messages[-1][0]
        base = time.monotonic() - end
        for t, msg in messages:
            port.feed(msg, base + t)
        return
    start = time.monotonic()
    for t, msg in messages:
        delay = start + t / speed - time.monotonic()
        if delay > 0:
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                return
        port.feed(msg)


def file_player(session: LiveSession, port: MemoryInput, messages: Sequence[tuple[float, mido.Message]],
                repeat: int, speed: float | None) -> threading.Thread:
    """A thread that plays the phrase each time the session listens, `repeat` times, then ends it.

    With a hand-over controller (`--handover cc67`) it presses that controller after each phrase.
    """

    def play() -> None:
        for _ in range(repeat):
            while not session.listening.wait(0.05):
                if session.stopped.is_set():
                    return
            if session.stopped.is_set():
                return
            n = len(session.turns)
            play_phrase(port, messages, speed, session.stopped)
            cc = session.cfg.handover_cc
            if cc is not None and not session.stopped.is_set():
                # A file holds no hand-over pedal: press it after the phrase, as the player would.
                port.feed(mido.Message("control_change", control=cc, value=127))
                port.feed(mido.Message("control_change", control=cc, value=0))
            while len(session.turns) == n or session.responding:  # wait for the answer to be over
                if session.stopped.wait(0.02):
                    return
        session.stop()

    thread = threading.Thread(target=play, name="amadeus-live-file", daemon=True)
    thread.start()
    return thread
