"""The player's own notes as they were played, with the model's continuation after them.

The model hears the prompt through the event codec, which re-bins velocities (60 -> 57), folds the
sustain pedal into note lengths and measures time in seconds. None of that should reach the files
a musician opens: `join` copies the prompt's MIDI messages as they are (tempo map, time signature,
velocities, pedal, ticks per beat) and appends the decoded continuation as a track of its own, its
seconds converted to ticks with the prompt's tempo map, starting where the model took over.

    full = join(read_prompt("phrase.mid"), continuation, start_seconds=boundary)
    full.save("full.mid")

Why a separate track: in a type-1 file every track keeps its own end, so the prompt's tracks stay
byte for byte what they were (a type-0 file becomes type 1 with its one track unchanged).

When the prompt is cut (`cut_seconds`, as `--prompt-seconds` does), its tracks keep the messages
before the cut; keys still down there are released where the model released them (`held_ends`), and
a pedal still down is lifted at the cut, since the model's note lengths already hold the pedal.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import mido
import pretty_midi

from amadeus.errors import UserError

PEDAL = 64  # sustain pedal controller
TRACK_NAME = "amadeus continuation"
DEFAULT_TEMPO = 500000  # microseconds per beat: 120 bpm, MIDI's default before any set_tempo


def read_prompt(midi: pretty_midi.PrettyMIDI | str | os.PathLike) -> mido.MidiFile:
    """The prompt's own MIDI messages (a PrettyMIDI is written out first: its notes, pedal and tempo)."""
    if isinstance(midi, pretty_midi.PrettyMIDI):
        buf = io.BytesIO()
        midi.write(buf)
        buf.seek(0)
        return mido.MidiFile(file=buf)
    path = Path(midi)
    try:
        return mido.MidiFile(file=io.BytesIO(path.read_bytes()))
    except OSError as e:
        raise UserError(f"{path}: prompt MIDI file cannot be read ({e.strerror or e})") from None
    except Exception as e:  # mido raises several kinds on corrupt files
        raise UserError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e})") from None


def _absolute(track: mido.MidiTrack) -> list[tuple[int, mido.Message]]:
    tick, out = 0, []
    for msg in track:
        tick += msg.time
        out.append((tick, msg))
    return out


def _relative(events: list[tuple[int, mido.Message]], name: str | None = None) -> mido.MidiTrack:
    track = mido.MidiTrack()
    if name is not None:
        track.append(mido.MetaMessage("track_name", name=name, time=0))
    last = 0
    for tick, msg in sorted(events, key=lambda e: e[0]):  # stable: same-tick messages keep their order
        track.append(msg.copy(time=tick - last))
        last = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


class TempoMap:
    """Seconds <-> ticks with a file's set_tempo messages (all tracks: type 0 and type 1 alike)."""

    def __init__(self, midi: mido.MidiFile):
        changes = sorted((tick, msg.tempo) for track in midi.tracks for tick, msg in _absolute(track)
                         if msg.type == "set_tempo")
        self.tpb = midi.ticks_per_beat
        self.segments: list[tuple[int, float, int]] = []  # (start tick, start seconds, tempo)
        tick, seconds, tempo = 0, 0.0, DEFAULT_TEMPO
        for at, new in changes:
            seconds += (at - tick) * tempo / 1e6 / self.tpb
            tick, tempo = at, new
            self.segments.append((tick, seconds, tempo))
        if not self.segments or self.segments[0][0] > 0:
            self.segments.insert(0, (0, 0.0, DEFAULT_TEMPO))

    def ticks(self, seconds: float) -> int:
        start_tick, start_seconds, tempo = next(s for s in reversed(self.segments) if s[1] <= seconds
                                                or s is self.segments[0])
        return start_tick + round((seconds - start_seconds) * 1e6 * self.tpb / tempo)

    def seconds(self, tick: int) -> float:
        start_tick, start_seconds, tempo = next(s for s in reversed(self.segments) if s[0] <= tick)
        return start_seconds + (tick - start_tick) * tempo / 1e6 / self.tpb


def last_sound_seconds(midi: mido.MidiFile) -> float:
    """When the prompt's last note-on/off or controller message happens (its musical end, not end_of_track)."""
    tempo = TempoMap(midi)
    last = 0
    for track in midi.tracks:
        for tick, msg in _absolute(track):
            if msg.type in ("note_on", "note_off", "control_change"):
                last = max(last, tick)
    return tempo.seconds(last)


def bar_seconds(midi: mido.MidiFile, at_seconds: float) -> tuple[float, str]:
    """How long one bar lasts at `at_seconds` of the prompt, and its meter in words ("3/4 at 90 bpm").

    The tempo and time signature in force there; before any, MIDI's defaults (120 bpm, 4/4). A beat of
    set_tempo is a quarter note, so a bar of n/d lasts n * 4/d quarter notes.
    """
    tempo = TempoMap(midi)
    at_tick = tempo.ticks(at_seconds)
    us_per_quarter = DEFAULT_TEMPO
    numerator, denominator, meter_tick = 4, 4, -1
    for track in midi.tracks:
        for tick, msg in _absolute(track):
            if tick > at_tick:
                break
            if msg.type == "time_signature" and tick >= meter_tick:
                numerator, denominator, meter_tick = msg.numerator, msg.denominator, tick
    for start_tick, _, value in tempo.segments:
        if start_tick <= at_tick:
            us_per_quarter = value
    quarters = numerator * 4 / denominator
    bpm = 6e7 / us_per_quarter
    return quarters * us_per_quarter / 1e6, f"{numerator}/{denominator} at {bpm:.4g} bpm"


def _is_note_off(msg: mido.Message) -> bool:
    return msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0)


def join(prompt: mido.MidiFile, continuation: pretty_midi.PrettyMIDI, start_seconds: float, *,
         cut_seconds: float | None = None, held_ends: dict[int, float] | None = None) -> mido.MidiFile:
    """The prompt's messages, then `continuation` (times from 0) from `start_seconds` on, in one file.

    `start_seconds` is where the model took over (it is raised to the prompt's last sound if the
    codec's 10 ms grid put it a little earlier). `cut_seconds`: keep only that much of the prompt;
    `held_ends`: pitch -> seconds at which a key still down at the cut is released.
    """
    if prompt.type == 2:
        raise UserError("prompt MIDI file is type 2 (independent sequences): save it as type 0 or 1")
    tempo = TempoMap(prompt)
    out = mido.MidiFile(type=1, ticks_per_beat=prompt.ticks_per_beat)
    channels: list[int] = []
    pedal: dict[int, int] = {}    # channel -> last CC64 value before the cut / the end
    program: dict[int, int] = {}  # channel -> last program change
    cut_tick = tempo.ticks(cut_seconds) if cut_seconds is not None else None
    for track in prompt.tracks:
        events = _absolute(track)
        kept, down, track_pedal = [], {}, {}
        for tick, msg in events:
            if cut_tick is not None and tick >= cut_tick and msg.type != "end_of_track":
                continue
            if msg.type == "end_of_track":
                continue
            kept.append((tick, msg))
            if msg.type == "note_on" and msg.velocity > 0:
                channels.append(msg.channel)
                down[(msg.channel, msg.note)] = msg
            elif _is_note_off(msg):
                down.pop((msg.channel, msg.note), None)
            elif msg.type == "control_change" and msg.control == PEDAL:
                pedal[msg.channel] = track_pedal[msg.channel] = msg.value
            elif msg.type == "program_change":
                program[msg.channel] = msg.program
        if cut_tick is None:
            out.tracks.append(track.copy())  # untouched, end_of_track included
            continue
        for (channel, note), _ in down.items():  # keys held across the cut: released where the model said
            end = (held_ends or {}).get(note, cut_seconds)
            kept.append((max(tempo.ticks(end), cut_tick), mido.Message("note_off", channel=channel, note=note)))
        for channel, value in track_pedal.items():
            if value >= 64:
                kept.append((cut_tick, mido.Message("control_change", channel=channel, control=PEDAL, value=0)))
        out.tracks.append(_relative(kept))

    channel = channels[0] if channels else 0
    start = max(start_seconds, last_sound_seconds(out)) if cut_tick is None else start_seconds
    start_tick = tempo.ticks(start)
    events: list[tuple[int, mido.Message]] = []
    if channel in program:  # pretty_midi and DAWs read program per track: say it again in ours
        events.append((start_tick, mido.Message("program_change", channel=channel, program=program[channel])))
    if cut_tick is None and pedal.get(channel, 0) >= 64:  # the model's lengths already hold the pedal
        events.append((start_tick, mido.Message("control_change", channel=channel, control=PEDAL, value=0)))
    notes = [n for inst in continuation.instruments if not inst.is_drum for n in inst.notes]
    for n in notes:
        on = tempo.ticks(start + n.start)
        off = max(tempo.ticks(start + n.end), on + 1)
        events.append((off, mido.Message("note_off", channel=channel, note=n.pitch, velocity=0)))
        events.append((on, mido.Message("note_on", channel=channel, note=n.pitch, velocity=n.velocity)))
    for inst in continuation.instruments:
        for cc in inst.control_changes:
            events.append((tempo.ticks(start + cc.time),
                           mido.Message("control_change", channel=channel, control=cc.number, value=cc.value)))
    # note-offs before note-ons on one tick, so a repeated pitch is not cut short
    events.sort(key=lambda e: (e[0], 0 if _is_note_off(e[1]) else 1))
    out.tracks.append(_relative(events, TRACK_NAME))
    return out


def midi_bytes(midi: mido.MidiFile) -> bytes:
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


def to_pretty_midi(midi: mido.MidiFile) -> pretty_midi.PrettyMIDI:
    """The joined file as pretty_midi reads it (for the WAV, the piano roll and the Python API)."""
    return pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes(midi)))
