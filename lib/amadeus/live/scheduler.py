"""The scheduler thread: sends each answer message at its monotonic due time, and keeps what it sent.

The session's producer decodes the answer up to `lookahead` seconds ahead of playback and queues each
note on/off with its due time; this thread sleeps until shortly before it, then spins, so a message
leaves within about a millisecond of its time. A note-on already `drop_late` seconds late is skipped
(with its note-off). What was sent when (`log`) gives the timing-error figures; which notes are
sounding lets a barge-in or stop silence exactly those.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mido

if TYPE_CHECKING:
    from amadeus.live.ports import OutputPort


@dataclass
class Sent:
    due: float
    sent: float
    msg: mido.Message
    turn: int


class Scheduler(threading.Thread):
    """Sends queued messages at their monotonic due time: sleep until ~1.5 ms before, then spin.

    Keeps what it sent (due vs actual time) for the latency figures, and which notes are sounding so a
    flush (barge-in) or stop can silence exactly those.
    """

    SPIN = 0.0015

    def __init__(self, out: OutputPort, channel: int, drop_late: float):
        super().__init__(name="amadeus-live-scheduler", daemon=True)
        self.out, self.channel, self.drop_late = out, channel, drop_late
        self.items: deque[tuple[float, mido.Message, int]] = deque()
        self.cv = threading.Condition()
        self.closed = False
        self.log: deque[Sent] = deque(maxlen=200_000)  # what was sent when (the latest, for the figures)
        self.first_note: dict[int, float] = {}  # turn -> when its first note-on left
        self.sounding: set[int] = set()
        self.skipped: set[int] = set()  # pitches whose late note-on was dropped (their note-off is too)
        self.send_lock = threading.Lock()

    def put(self, due: float, msg: mido.Message, turn: int) -> None:
        with self.cv:
            if self.closed:
                return  # the session is over: nothing may follow its all-notes-off
            if not self.items and due <= time.monotonic():
                self._send(due, msg, turn)  # due now (an answer's first note): no hand-off to this thread
                return
            self.items.append((due, msg, turn))
            self.cv.notify()

    def pending(self) -> int:
        with self.cv:
            return len(self.items)

    def last_due(self) -> float | None:
        with self.cv:
            return self.items[-1][0] if self.items else None

    def run(self) -> None:
        while True:
            with self.cv:
                while not self.items and not self.closed:
                    self.cv.wait()
                if self.closed:
                    return
                due, msg, turn = self.items[0]
                wait = due - time.monotonic()
                if wait > self.SPIN:
                    self.cv.wait(wait - self.SPIN)  # woken early by put/flush: look again
                    continue
            while time.monotonic() < due:
                pass
            with self.cv:
                if not self.items or self.items[0][2] != turn or self.items[0][0] != due:
                    continue  # flushed meanwhile
                self.items.popleft()
                self._send(due, msg, turn)

    def _send(self, due: float, msg: mido.Message, turn: int) -> None:
        now = time.monotonic()
        if msg.type == "note_on":
            if now - due > self.drop_late:
                self.skipped.add(msg.note)
                return
            self.skipped.discard(msg.note)
            self.sounding.add(msg.note)
        elif msg.type == "note_off":
            if msg.note in self.skipped:
                self.skipped.discard(msg.note)
                return
            self.sounding.discard(msg.note)
        with self.send_lock:
            self.out.send(msg)
        sent = time.monotonic()
        self.log.append(Sent(due, sent, msg, turn))
        if msg.type == "note_on":
            self.first_note.setdefault(turn, sent)

    def flush(self) -> None:
        """Drop everything queued and end the answer's sounding notes now."""
        with self.cv:
            self.items.clear()
            for pitch in sorted(self.sounding):
                with self.send_lock:
                    self.out.send(mido.Message("note_off", channel=self.channel, note=pitch, velocity=0))
            self.sounding.clear()
            self.skipped.clear()
            self.cv.notify()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()
