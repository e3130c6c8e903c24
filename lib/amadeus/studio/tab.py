"""One browser tab's session (`TabSession`): the page's keys in, the answer's planned notes out.

The tab drives an ordinary `LiveSession`, so hand-over (silence, the CC67 pedal, or the page's button),
priming while the player plays, barge-in and recording are the same code as `amadeus live`. The page
schedules the sound itself: each answer note is sent to it when the session queues it, up to the
look-ahead before it sounds, with the time it must sound on the page's own clock. The session's
scheduler still "plays" every note at its time into a null port, so a take holds the answer as heard.

Clocks: the page stamps what it sends with `performance.now()`; `Clock` keeps the smallest difference
seen between arrival (time.monotonic) and that stamp, so page times map onto the server's clock up to
the smallest one-way delay (well under a millisecond on 127.0.0.1) and back again for the page.

Every method here is called from the event loop and returns at once: the session has its own thread,
and what the page must hear is handed to `emit`, which must be safe to call from any thread.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mido

from amadeus.errors import UserError
from amadeus.live.config import LEARN_FOLDER
from amadeus.live.ports import MemoryOutput
from amadeus.live.session import LiveSession, Watcher
from amadeus.live.stream import Codec
from amadeus.live.turn import Turn
from amadeus.studio.models import ModelShelf
from amadeus.studio.settings import StudioSettings

Emit = Callable[[dict[str, Any]], None]

MAX_FILE_BYTES = 1 << 20  # a phrase as a MIDI file: 1 MB is hours of piano
FILE_SECONDS = 30.0  # a long file: its last 30 s are the phrase


class Clock:
    """Maps the page's performance.now() (ms) onto time.monotonic() (s) and back."""

    def __init__(self) -> None:
        self.offset: float | None = None

    def arrived(self, page_ms: Any) -> float:
        """A message stamped `page_ms` arrived now: its time on the server's clock."""
        now = time.monotonic()
        if not isinstance(page_ms, int | float) or page_ms != page_ms:
            return now
        seen = now - page_ms / 1000.0
        if self.offset is None or seen < self.offset:
            self.offset = seen
        return page_ms / 1000.0 + self.offset

    def to_page(self, t: float) -> float | None:
        return None if self.offset is None else round((t - self.offset) * 1000.0, 3)


class PageWatcher(Watcher):
    """Tells the page what the session does, in page time."""

    def __init__(self, tab: TabSession):
        self.tab = tab

    def listening(self) -> None:
        self.tab.emit({"type": "listening"})

    def answering(self, turn: Turn) -> None:
        asked = turn.asked if turn.asked is not None else turn.handover
        self.tab.emit({"type": "answering", "turn": turn.index, "handover_t": self.tab.clock.to_page(asked)})

    def planned(self, turn: Turn, due: float, msg: mido.Message) -> None:
        kind = "on" if msg.type == "note_on" and msg.velocity > 0 else "off"
        note = {"t": self.tab.clock.to_page(due), "kind": kind, "pitch": msg.note, "velocity": msg.velocity}
        self.tab.emit({"type": "notes", "turn": turn.index, "notes": [note]})

    def cancelled(self, turn: Turn) -> None:
        self.tab.emit({"type": "cancel", "turn": turn.index})

    def done(self, turn: Turn) -> None:
        self.tab.turn_done(turn)  # the take first: "done" is the turn's last word
        self.tab.emit({"type": "done", "turn": turn.index})


class TabSession:
    """A tab's live session; `start` and `apply` load models (blocking: call them off the event loop)."""

    def __init__(self, shelf: ModelShelf, takes: Path, emit: Emit, soundfont: str | None = None,
                 log: Callable[[str], None] | None = None):
        self.shelf, self.emit, self.soundfont = shelf, emit, soundfont
        self.log = log or (lambda line: None)
        self.id = ""  # one per live session: a new model starts a new session, with its own takes folder
        self.takes_root = takes
        self.folder = takes
        self.settings = StudioSettings(model=shelf.default)
        self.clock = Clock()
        self.session: LiveSession | None = None
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one model switch at a time

    # --- the session's life (blocking) ------------------------------------------------------------

    def start(self) -> None:
        self._open(self.settings)

    def apply(self, values: Any) -> StudioSettings:
        """New settings from the page: from the next answer on; another model starts a new session."""
        settings = StudioSettings.from_page(values, self.settings)
        settings.live_config()  # refused here, before anything changes
        with self._lock:
            if settings.model != self.settings.model:
                self.shelf.load(settings.model)  # a bad checkpoint fails before the running session ends
                self._close_session()
                self._open(settings)
            elif self.session is not None:
                self.session.cfg = settings.live_config(self.session.cfg.seed)
            self.settings = settings
        return settings

    def close(self) -> None:
        with self._lock:
            self._close_session()

    def _open(self, settings: StudioSettings) -> None:
        from amadeus.take import TakeWriter

        loaded = self.shelf.load(settings.model or self.shelf.default)
        settings.model = settings.model or self.shelf.default
        # A new id and folder: the new session counts its turns (take-001 ...) from the start again.
        self.id = secrets.token_hex(3)
        self.folder = self.takes_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.id}"
        recorder = TakeWriter(self.folder, soundfont=self.soundfont, log=self._log_line, on_media=self._media)
        session = LiveSession(loaded.model, Codec(loaded.flavour), MemoryOutput(), settings.live_config(),
                              recorder=recorder, log=self._log_line, watcher=PageWatcher(self))
        thread = threading.Thread(target=self._run, args=(session,), name=f"amadeus-studio-{self.id}", daemon=True)
        self.session, self.thread, self.settings = session, thread, settings
        # Through the same queue as everything the last session said, so the page hears them in order.
        self.emit({"type": "ready", "session": self.id, "models": self.shelf.catalogue(),
                   "settings": dataclasses.asdict(settings)})
        thread.start()

    def _run(self, session: LiveSession) -> None:
        try:
            session.run()
        except Exception as e:  # the page hears of it; the server goes on
            self.emit({"type": "error", "message": f"the session stopped: {type(e).__name__}: {e}"})
            self.log(f"tab {self.id}: session failed: {type(e).__name__}: {e}")

    def _close_session(self) -> None:
        session, thread = self.session, self.thread
        self.session = self.thread = None
        if session is not None:
            session.stop()
            if thread is not None:
                thread.join(10.0)
            session.close()

    # --- what the page sends (quick) ------------------------------------------------------------------

    def midi(self, data: Any, page_ms: Any) -> None:
        t = self.clock.arrived(page_ms)
        try:
            msg = mido.Message.from_bytes(data)
        except (TypeError, ValueError):
            raise UserError(f"midi: {str(data)[:40]} is not a MIDI message (status, data bytes)") from None
        if self.session is not None:
            self.session.on_message(msg, t)

    def hand_over(self, page_ms: Any) -> None:
        t = self.clock.arrived(page_ms)
        if self.session is not None:
            self.session.hand_over(t)

    def stop_answer(self) -> None:
        if self.session is not None:
            self.session.stop_answer()

    def again(self) -> None:
        if self.session is not None:
            self.session.answer_again()

    def file(self, name: Any, data: Any, page_ms: Any) -> None:
        """A MIDI file dropped on the page: its notes are the phrase, played just now, and answered."""
        from amadeus import codec
        from amadeus.live.players import phrase_messages

        now = self.clock.arrived(page_ms)
        name = Path(str(name or "phrase.mid")).name
        if not isinstance(data, str) or len(data) > MAX_FILE_BYTES * 4 // 3 + 4:
            raise UserError(f"{name}: a MIDI file of at most {MAX_FILE_BYTES >> 20} MB, please")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise UserError(f"{name}: the upload is damaged (not base64)") from None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "upload.mid"
            path.write_bytes(raw)
            try:
                pm = codec.read_midi(path)
            except codec.MidiError as e:
                raise UserError(f"{name}: not a MIDI file the studio can read ({e.reason})") from None
            meter = self._meter_of(path, pm.get_end_time())
        messages = phrase_messages(pm)
        if not messages:
            raise UserError(f"{name}: no notes in it")
        end = messages[-1][0]
        cut = [(t, m) for t, m in messages if t >= end - FILE_SECONDS]
        if len(cut) < len(messages):
            self.emit({"type": "log", "message": f"{name}: its last {FILE_SECONDS:g} s are the phrase"})
        session = self.session
        if session is None:
            return
        if meter is not None:  # bars are counted at the file's own tempo and meter
            self.settings = dataclasses.replace(self.settings, bpm=meter[0], beats_per_bar=meter[1])
            session.cfg = self.settings.live_config(session.cfg.seed)
            self.emit({"type": "settings", "settings": dataclasses.asdict(self.settings)})
        for t, msg in cut:
            session.on_message(msg, now - (end - t))
        self._show_phrase(cut, now - end)
        session.hand_over(now)

    @staticmethod
    def _meter_of(path: Path, end: float) -> tuple[float, int] | None:
        """(beats per minute, beats per bar) where the file ends, beats in its time signature's unit
        (eighths in 6/8); None when the file says neither."""
        from amadeus.prompt_passthrough import bar_seconds, read_prompt

        midi = read_prompt(path)
        if not any(m.type in ("set_tempo", "time_signature") for track in midi.tracks for m in track):
            return None
        seconds, meter = bar_seconds(midi, end)
        beats = int(meter.split("/")[0])
        return round(beats * 60.0 / seconds, 3), beats

    def _show_phrase(self, messages: list[tuple[float, mido.Message]], origin: float) -> None:
        """The file's notes for the page's roll, in page time (it does not play them)."""
        notes, start = [], {}
        for t, msg in messages:
            if msg.type == "note_on" and msg.velocity > 0:
                start[msg.note] = (t, msg.velocity)
            elif msg.type in ("note_on", "note_off") and msg.note in start:
                t0, velocity = start.pop(msg.note)
                notes.append({"pitch": msg.note, "velocity": velocity, "start": self.clock.to_page(origin + t0),
                              "end": self.clock.to_page(origin + t)})
        self.emit({"type": "phrase", "notes": notes})

    # --- takes ------------------------------------------------------------------------------------

    def url(self, path: Path | None) -> str | None:
        if path is None or not path.is_file():
            return None
        return "/takes/" + path.relative_to(self.takes_root).as_posix()

    def turn_done(self, turn: Turn) -> None:
        """The take's MIDI file is saved by now; the phrase alone too, when the player keeps them."""
        session = self.session
        if session is not None and session.recorder is not None:
            path = session.recorder.folder / f"take-{turn.index + 1:03d}.mid"
            if path in session.recorder.saved:
                self._tell_take(turn.index, path)
        if self.settings.keep_phrases and turn.phrase.start is not None and turn.asked is None:  # not twice
            self._keep_phrase(turn)

    def _media(self, take: Any, path: Path) -> None:
        self._tell_take(take.index, path)

    def _tell_take(self, index: int, path: Path) -> None:
        self.emit({"type": "take", "turn": index, "title": f"take {index + 1}", "midi": self.url(path),
                   "wav": self.url(path.with_suffix(".wav")), "png": self.url(path.with_suffix(".png"))})

    def _keep_phrase(self, turn: Turn) -> None:
        from amadeus.fileio import write_bytes
        from amadeus.prompt_passthrough import midi_bytes
        from amadeus.take import phrase_file

        assert turn.phrase.start is not None
        path = self.takes_root / LEARN_FOLDER / f"{self.folder.name}-{turn.index + 1:03d}.mid"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, midi_bytes(phrase_file(turn.phrase.events, turn.phrase.start, turn.handover)))
        except (OSError, UserError) as e:
            self.emit({"type": "error", "message": f"your phrase was not kept ({path}: {e})"})

    def _log_line(self, line: str) -> None:
        self.emit({"type": "log", "message": line})
        self.log(f"tab {self.id}: {line}")
