"""What the player played since the last hand-over (`Phrase`), as MIDI, and how much of it is final.

Every message from the input port arrives stamped with `time.monotonic()`; the phrase keeps the notes
and the sustain pedal (CC64) with their stamps, and which keys and pedal are down, from which the
silence hand-over is timed.

While the player plays, the session primes the model with the phrase so far: it encodes the phrase
with keys and pedal still down given a far end (`FAR_SECONDS`, so the codec cannot end them early),
and feeds only the prefix of that encoding that nothing played later can change (`final_prefix`: the
events before "now", less `PRIME_MARGIN`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import mido

from amadeus.live.ports import SUSTAIN
from amadeus.vocab import STEP_SECONDS, TIME_SHIFT, TIME_SHIFT_LAST

if TYPE_CHECKING:
    import pretty_midi

FAR_SECONDS = 5.0  # end given to keys/pedal still down when priming: later than any event still to come
PRIME_MARGIN = 0.03  # events this close to "now" may still be reordered by a message in flight / rounding


class Phrase:
    """What the player played since the last hand-over: timestamped messages and the key/pedal state."""

    def __init__(self) -> None:
        self.events: list[tuple[float, mido.Message]] = []
        self.keys: set[int] = set()
        self.pedal = False
        self.start: float | None = None  # time of the first note-on
        self.quiet_since: float | None = None  # when the last key/pedal went up (None while any is down)

    def add(self, msg: mido.Message, t: float) -> None:
        if msg.type == "note_on" and msg.velocity > 0:
            if self.start is None:
                self.start = t
            self.keys.add(msg.note)
        elif msg.type in ("note_on", "note_off"):
            self.keys.discard(msg.note)
        elif msg.type == "control_change" and msg.control == SUSTAIN:
            self.pedal = msg.value >= 64
        else:
            return
        self.events.append((t, msg))
        self.quiet_since = None if (self.keys or self.pedal) else t

    @property
    def has_notes(self) -> bool:
        return self.start is not None

    def silence_deadline(self, silence: float) -> float | None:
        """When the hand-over happens if nothing more is played (None: keys or pedal still down)."""
        if not self.has_notes or self.quiet_since is None:
            return None
        return self.quiet_since + silence

    def to_midi(self, end: float, open_end: float | None = None) -> pretty_midi.PrettyMIDI:
        """The phrase as one piano, time 0 at the first note-on.

        Keys still down and the pedal still held end at `open_end` (default `end`), which priming sets
        far in the future so the codec cannot end them early.
        """
        import pretty_midi

        open_end = end if open_end is None else open_end
        origin = self.start if self.start is not None else 0.0
        pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)  # ~0.5 ms ticks in a saved file
        piano = pretty_midi.Instrument(program=0, name="player")
        down: dict[int, list[tuple[float, int]]] = {}
        pedal = False
        for t, msg in self.events:
            rel = max(0.0, t - origin)
            if msg.type == "note_on" and msg.velocity > 0:
                # A key struck again while it is still down (only possible with some controllers) ends
                # the earlier note there, as note_seq does.
                for start, vel in down.pop(msg.note, []):
                    piano.notes.append(pretty_midi.Note(vel, msg.note, start, max(rel, start)))
                down[msg.note] = [(rel, msg.velocity)]
            elif msg.type in ("note_on", "note_off"):
                for start, vel in down.pop(msg.note, []):
                    piano.notes.append(pretty_midi.Note(vel, msg.note, start, max(rel, start)))
            elif msg.type == "control_change" and (msg.value >= 64) != pedal:
                # Only the pedal's down/up changes: a continuous pedal sends many values on either side.
                pedal = msg.value >= 64
                piano.control_changes.append(pretty_midi.ControlChange(SUSTAIN, msg.value, rel))
        close = max(0.0, open_end - origin)
        for pitch, starts in down.items():
            for start, vel in starts:
                piano.notes.append(pretty_midi.Note(vel, pitch, start, max(close, start)))
        if pedal:
            piano.control_changes.append(pretty_midi.ControlChange(SUSTAIN, 0, close))
        piano.notes.sort(key=lambda n: (n.start, n.pitch))
        pm.instruments.append(piano)
        return pm

    def copy(self) -> Phrase:
        other = Phrase()
        other.events = list(self.events)
        other.keys, other.pedal = set(self.keys), self.pedal
        other.start, other.quiet_since = self.start, self.quiet_since
        return other


def final_prefix(ids: Sequence[int], cutoff: float) -> int:
    """Length of the prefix of `ids` whose events all lie before `cutoff` seconds (phrase time).

    Ends after the last non-shift event before the cutoff: trailing time shifts are left out because
    how the codec splits a gap into shifts is known only once the next event is.
    """
    step, end = 0, 0
    limit = cutoff / STEP_SECONDS
    for i, tok in enumerate(ids):
        if TIME_SHIFT <= tok <= TIME_SHIFT_LAST:
            step += tok - TIME_SHIFT + 1
        elif step < limit:
            end = i + 1
        else:
            break
    return end
