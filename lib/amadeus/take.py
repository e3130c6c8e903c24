"""A take: what the player played and what the model answered, saved together.

    take-003.mid   one type-1 MIDI file: the player's track as played (velocities, every sustain pedal
                   value as a CC64 message, the phrase's tempo and time signature), then the answer's
                   own track after it (`amadeus.prompt_passthrough.join`)
    take-003.wav   the same file through fluidsynth (`amadeus.render`, its headroom limit)
    take-003.png   its piano roll, the hand-over marked

`TakeWriter` checks at the start that its folder can be written (so a session fails before its
first turn, not after), writes each take's MIDI at once and atomically, and its WAV and piano roll on
a background thread so the next phrase is not kept waiting. A take whose MIDI cannot be written (a
full disk) stays in memory and is tried again with the next take and at close.

`phrase_file` turns messages stamped on arrival into a MIDI file without passing them through the
codec, so nothing is re-binned or folded: it is what `amadeus generate`'s `--full` does for a prompt
file, for a phrase that never was a file.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mido

from amadeus.errors import UserError
from amadeus.prompt_passthrough import DEFAULT_TEMPO, TempoMap, join, midi_bytes, to_pretty_midi

if TYPE_CHECKING:
    import pretty_midi

TICKS_PER_BEAT = 960  # about 0.5 ms per tick at 120 bpm: arrival stamps survive to the millisecond
PLAYER_TRACK = "player"


def check_folder(folder: str | os.PathLike, what: str = "--record folder") -> Path:
    """`folder`, created if need be, after proving a file can be written there; else a one-line UserError
    naming it as `what`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: {what} cannot be written (it is a file, not a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".amadeus-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{folder}: {what} cannot be written ({e.strerror or e})") from None
    return folder


def phrase_file(events: Sequence[tuple[float, mido.Message]], origin: float, end: float | None = None,
                tempo: int = DEFAULT_TEMPO) -> mido.MidiFile:
    """The player's messages as they arrived, time 0 at `origin` (seconds, the stamps' clock).

    Keys still down and a pedal still held at `end` (the hand-over) are released there, so the file has
    no hanging notes; nothing else is added or changed. A live phrase has no tempo of its own: 120 bpm
    and 4/4, MIDI's defaults, unless `tempo` (microseconds per beat) says otherwise.
    """
    track = mido.MidiTrack([mido.MetaMessage("track_name", name=PLAYER_TRACK, time=0),
                            mido.MetaMessage("set_tempo", tempo=tempo, time=0),
                            mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0)])

    def tick(t: float) -> int:
        return max(0, round((t - origin) * 1e6 * TICKS_PER_BEAT / tempo))

    timed: list[tuple[int, mido.Message]] = []
    down: dict[tuple[int, int], bool] = {}
    pedal: dict[int, bool] = {}
    for t, msg in events:
        timed.append((tick(t), msg))
        if msg.type == "note_on" and msg.velocity > 0:
            down[(msg.channel, msg.note)] = True
        elif msg.type in ("note_on", "note_off"):
            down.pop((msg.channel, msg.note), None)
        elif msg.type == "control_change" and msg.control == 64:
            pedal[msg.channel] = msg.value >= 64
    last = max((k for k, _ in timed), default=0)
    close = max(last, tick(end)) if end is not None else last
    for channel, note in down:
        timed.append((close, mido.Message("note_off", channel=channel, note=note, velocity=0)))
    for channel, held in pedal.items():
        if held:
            timed.append((close, mido.Message("control_change", channel=channel, control=64, value=0)))
    now = 0
    for at, msg in sorted(timed, key=lambda e: e[0]):  # stable: same-tick messages keep arrival order
        track.append(msg.copy(time=at - now))
        now = at
    track.append(mido.MetaMessage("end_of_track", time=0))
    out = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    out.tracks.append(track)
    return out


def first_note_seconds(midi: mido.MidiFile) -> float:
    """When the file's first note-on (drum channel 10 left out) sounds, in seconds."""
    ticks = []
    for track in midi.tracks:
        at = 0
        for msg in track:
            at += msg.time
            if msg.type == "note_on" and msg.velocity > 0 and msg.channel != 9:
                ticks.append(at)
                break
    return TempoMap(midi).seconds(min(ticks)) if ticks else 0.0


@dataclass
class Take:
    """One take: the phrase as a MIDI file, the answer (time 0 at its first note), where it starts."""

    index: int  # 0-based; the file is take-<index + 1>
    phrase: mido.MidiFile
    answer: pretty_midi.PrettyMIDI
    start_seconds: float  # the answer's first note, in the phrase file's seconds
    title: str = ""

    def midi(self) -> mido.MidiFile:
        return join(self.phrase, self.answer, self.start_seconds)


class TakeWriter:
    """Saves takes in `folder` as take-NNN.mid now, and .wav and .png soon after (a background thread).

    `source`: the MIDI file the phrases were played from (`--input-file`), played `speed` times as
    fast; a whole phrase played from it is saved as that file, untouched (its tempo map and time
    signature included), rather than as the messages that arrived.
    """

    def __init__(self, folder: str | os.PathLike, *, source: mido.MidiFile | None = None, speed: float = 1.0,
                 wav: bool = True, png: bool = True, soundfont: str | os.PathLike | None = None,
                 log: Callable[[str], None] | None = None, on_media: Callable[[Take, Path], None] | None = None):
        self.folder = check_folder(folder)
        self.source, self.speed = source, speed
        self.source_start = first_note_seconds(source) if source is not None else 0.0
        self.wav, self.png, self.soundfont = wav, png, soundfont
        self.log = log or (lambda line: None)
        self.on_media = on_media  # called (on the writer's thread) once a take's WAV and piano roll are done
        self.saved: list[Path] = []  # MIDI files written, in order
        self.media: list[Path] = []  # WAV and PNG files written
        self.unsaved: list[Take] = []
        self._jobs: queue.Queue[tuple[Take, Path] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._media_error_told: set[str] = set()
        self._lock = threading.Lock()

    def take(self, index: int, events: Sequence[tuple[float, mido.Message]], origin: float, end: float,
             answer: pretty_midi.PrettyMIDI, answer_start: float, whole: bool, title: str = "") -> Take:
        """A take from a phrase's arrival-stamped `events` (phrase time 0 at `origin`) and its answer,
        whose first note sounded `answer_start` seconds after `origin`. `whole`: the phrase was played
        to its end (it can be saved as the source file)."""
        if self.source is not None and whole:
            return Take(index, self.source, answer, self.source_start + answer_start * self.speed, title)
        return Take(index, phrase_file(events, origin, end), answer, answer_start, title)

    def save(self, take: Take) -> Path | None:
        """Write take-NNN.mid (and any earlier take that could not be written); None if it failed."""
        with self._lock:
            self.unsaved.append(take)
            written = None
            while self.unsaved:
                pending = self.unsaved[0]
                path = self.folder / f"take-{pending.index + 1:03d}.mid"
                try:
                    data = midi_bytes(pending.midi())
                    from amadeus.fileio import write_bytes

                    write_bytes(path, data)
                except (OSError, UserError) as e:
                    cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                    self.log(f"take {pending.index + 1} not saved yet ({path}: {cause}); kept, tried again "
                             "after the next turn and at the end")
                    return None
                self.unsaved.pop(0)
                self.saved.append(path)
                written = path
                if self.wav or self.png:
                    self._start()
                    self._jobs.put((pending, path))
            return written

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._render, name="amadeus-take-writer", daemon=True)
            self._thread.start()

    def _render(self) -> None:
        from amadeus.render import piano_roll_png, render_wav

        while (job := self._jobs.get()) is not None:
            take, path = job
            try:
                pm = to_pretty_midi(take.midi())
            except Exception as e:  # the file just written is ours: say so rather than lose the thread
                self._tell("read", f"take {take.index + 1}: no WAV or piano roll ({type(e).__name__}: {e})")
                continue
            boundary = max(take.start_seconds, 0.0)
            if self.wav:
                try:
                    render_wav(pm, path.with_suffix(".wav"), soundfont=self.soundfont)
                    self.media.append(path.with_suffix(".wav"))
                except (OSError, UserError) as e:
                    self._tell("wav", f"take {take.index + 1}: no WAV ({e}); the MIDI file is saved")
            if self.png:
                try:
                    piano_roll_png(pm, path.with_suffix(".png"), boundary_seconds=boundary,
                                   title=take.title or f"take {take.index + 1}")
                    self.media.append(path.with_suffix(".png"))
                except (OSError, UserError) as e:
                    self._tell("png", f"take {take.index + 1}: no piano roll ({e}); the MIDI file is saved")
            if self.on_media is not None:
                self.on_media(take, path)

    def _tell(self, kind: str, line: str) -> None:
        if kind not in self._media_error_told:  # one line per kind of failure, not one per take
            self._media_error_told.add(kind)
            self.log(line)

    def close(self, timeout: float = 120.0) -> None:
        """Write what is still unsaved, then wait for the WAVs and piano rolls."""
        with self._lock:
            pending = list(self.unsaved)
            self.unsaved.clear()
        for take in pending:
            self.save(take)
        if self.unsaved:
            self.log(f"{len(self.unsaved)} take(s) could not be saved in {self.folder}")
        if self._thread is not None:
            self._jobs.put(None)
            with contextlib.suppress(RuntimeError):
                self._thread.join(timeout)
            self._thread = None
