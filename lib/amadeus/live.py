"""Live mode: play a phrase on a MIDI keyboard, hear the model continue it, play again.

    amadeus live --checkpoint save/performance_rnn.int8.sess --in "Digital Piano" --out "Digital Piano"
    amadeus live --checkpoint save/performance_rnn.int8.sess --input-file phrase.mid --synth

How a turn goes (REFERENCE.md §8 describes Aria-Duet, the peer this follows where it can):

1. Listen. Every message from the input port is stamped with `time.monotonic()` on arrival and kept
   (notes, the sustain pedal CC64).
2. Prime while the player plays. Several times a second the phrase so far is encoded with the codec
   (keys still down and a pedal still held are given a far end) and the events that can no longer change
   (those before "now", less a margin) are stepped into the model, so its state is warm; Aria-Duet does
   the same with its KV cache. Should the final encoding disagree with what was fed (it should not),
   the phrase is primed again in one batched `prefill`.
3. Hand-over: all keys and the pedal have been up for `--silence` ms, or the chosen controller (e.g. CC67,
   the soft pedal, as Aria-Duet uses) is pressed. Aria-Duet has no phrase-end detection; silence is ours.
4. Respond. The rest of the phrase is fed, then the producer (the session's thread) samples events and
   decodes them with the codec's semantics into timed note on/off messages, running up to `lookahead`
   seconds ahead of playback; a scheduler thread sends each one at its time (sleep until shortly before,
   then spin). Playback starts at the first note-on: the model's leading time shifts are not waited out,
   so the answer comes right after the hand-over. The answer lasts `--seconds` of music; notes still open
   then are closed. Playing a key during the answer interrupts it (barge-in) and starts the next phrase.
5. Listen again. Ctrl-C ends with all notes off (note-offs for sounding notes, CC123, CC64 = 0).

Latency is measured per turn (hand-over moment -> first response note-on sent, and each message's send
time vs its scheduled time); `bench/live.py` and tests/test_live.py drive whole sessions through the
in-memory ports of `amadeus.ports`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mido

from amadeus.errors import UserError
from amadeus.vocab import (
    NOTE_OFF,
    NOTE_ON,
    STEP_SECONDS,
    TIME_SHIFT,
    TIME_SHIFT_LAST,
    VELOCITY,
    VELOCITY_LAST,
    VOCAB_SIZE,
)

if TYPE_CHECKING:
    import pretty_midi
    import torch

    from amadeus.ports import Backend, MemoryInput, OutputPort

SUSTAIN = 64
FAR_SECONDS = 5.0  # end given to keys/pedal still down when priming: later than any event still to come
PRIME_MARGIN = 0.03  # events this close to "now" may still be reordered by a message in flight / rounding


# ------------------------------------------------------------------------------------------------ config

@dataclass
class LiveConfig:
    silence: float = 0.8  # seconds all keys and the pedal must be up before the model answers
    handover: str = "silence"  # "silence", or "ccN" (e.g. "cc67"): pressing controller N hands over
    seconds: float = 10.0  # length of each answer (seconds of music from its first note)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    channel: int = 0  # MIDI channel of the answer
    echo: bool = False  # also send the player's input to the output (for --input-file with --synth)
    barge_in: bool = True  # a key pressed during the answer stops it and starts the next phrase
    warm: bool = True  # prime while the player plays (else one prefill at the hand-over)
    prime_interval: float = 0.05  # seconds between priming passes while listening
    lookahead: float = 1.0  # how far (seconds) generation may run ahead of playback
    drop_late: float = 0.1  # a note-on this late (s) is skipped, as Aria-Duet drops > 100 ms late messages
    max_prompt_events: int = 0  # 0 = whole phrase; else only the last N events prime the model (one prefill)
    turns: int = 0  # stop after this many answers (0 = until Ctrl-C / stop())

    def __post_init__(self) -> None:
        self.handover_cc = parse_handover(self.handover)
        from amadeus import sampling

        sampling.check_args(max_new_tokens=1, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                            do_sample=True)
        if not self.silence > 0:
            raise UserError(f"live: --silence must be > 0 ms, got {self.silence * 1000:g}")
        if not self.seconds > 0:
            raise UserError(f"live: --seconds must be > 0, got {self.seconds:g}")
        if not 0 <= self.channel <= 15:
            raise UserError(f"live: --channel must be 0..15, got {self.channel}")


def parse_handover(text: str) -> int | None:
    """"silence" -> None; "cc67" / "67" -> 67. CC64 (sustain) cannot be the hand-over pedal."""
    text = text.strip().lower()
    if text == "silence":
        return None
    number = text[2:] if text.startswith("cc") else text
    if not number.isdigit() or not 0 <= int(number) <= 127 or int(number) in (SUSTAIN, 123):
        raise UserError(f"live: --handover {text!r} is invalid; use 'silence' or 'ccN' with N in 0..127 other "
                        "than 64 (sustain) and 123, e.g. cc67 (soft pedal)")
    return int(number)


# ------------------------------------------------------------------------------------------------ phrase

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


# ------------------------------------------------------------------------------------------ codec bridge

class Codec:
    """The codec of the checkpoint's flavour, plus the few facts the stream decoder needs from it."""

    def __init__(self, flavour: str = "magenta"):
        from amadeus import codec

        self.module, self.flavour = codec, flavour
        # What the stream decoder must agree on with `codec.decode`, read off tiny decodes so the live
        # answer sounds exactly as `amadeus generate` would write it: the velocity of each velocity id
        # (and before any), and how long a note may stay open.
        self.default_velocity = self._probe([])[0]
        self.velocity = {tok: self._probe([tok])[0] for tok in range(VELOCITY, VELOCITY_LAST + 1)}
        probe_steps = 20 * 100  # 20 s
        held = self._probe([], shifts=probe_steps // 100)[1]
        self.max_note_steps = held if held < probe_steps else 10**9

    def _probe(self, prefix: list[int], shifts: int = 1) -> tuple[int, int]:
        """(velocity, length in steps) of the one note in `prefix` + on(60) + shifts x 1 s + off(60)."""
        pm = self.decode(prefix + [60] + [TIME_SHIFT_LAST] * shifts + [NOTE_OFF + 60])
        notes = [n for inst in pm.instruments for n in inst.notes]
        if not notes:
            return 64, shifts * 100
        return int(notes[0].velocity), round((notes[0].end - notes[0].start) / STEP_SECONDS)

    def encode(self, pm: pretty_midi.PrettyMIDI) -> list[int]:
        return [int(i) for i in self.module.encode(pm, flavour=self.flavour)]

    def decode(self, ids: Sequence[int]) -> pretty_midi.PrettyMIDI:
        import numpy as np

        return self.module.decode(np.asarray(ids, dtype=np.int64), flavour=self.flavour)


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


# --------------------------------------------------------------------------------------------- scheduler

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


# ----------------------------------------------------------------------------------------------- session

@dataclass
class Turn:
    """One phrase and its answer, with the figures the latency report needs."""

    index: int
    handover: float  # monotonic time of the hand-over (silence timer expiry, or controller press)
    phrase: Phrase
    prompt_ids: list[int] = field(default_factory=list)
    warm_ids: int = 0  # events already in the model's state at the hand-over
    reprimed: bool = False  # the warm prefix disagreed with the final encoding (should not happen)
    answer_ids: list[int] = field(default_factory=list)
    origin: float | None = None  # monotonic time of the answer's step 0 (its first note-on)
    first_step: int = 0  # the step of the first note-on (leading time shifts are not waited out)
    notes: list[Note] = field(default_factory=list)
    first_note_sent: float | None = None
    interrupted: bool = False
    # Where the hand-over latency goes (monotonic times): the listener wakes, the phrase is fed, the first
    # note-on is decoded and queued, then the scheduler sends it (first_note_sent).
    woke: float | None = None
    primed: float | None = None
    first_queued: float | None = None
    first_tokens: int = 0  # events sampled until the first note-on could be released (its step complete)

    @property
    def latency(self) -> float | None:
        return None if self.first_note_sent is None else self.first_note_sent - self.handover


class LiveSession:
    """One live session: connect an input port's callback to `on_message`; answers go to `out`.

    `run()` blocks (listen, answer, repeat) until `stop()` from any thread, Ctrl-C, or `config.turns`
    answers; it always ends with all notes off. `turns` and `timing_errors()` hold the figures.
    """

    def __init__(self, model: torch.nn.Module, codec: Codec, out: OutputPort, config: LiveConfig,
                 record_dir: str | Path | None = None, log: Callable[[str], None] | None = None):
        import torch

        self.model, self.codec, self.out, self.cfg = model, codec, out, config
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.log = log or (lambda line: None)
        self.model.eval()
        self.generator = torch.Generator().manual_seed(config.seed if config.seed is not None
                                                       else int(time.time_ns() % 2**31))
        self.cv = threading.Condition()
        self.phrase = Phrase()
        self.responding = False
        self.version = 0  # bumped by every input message, so priming knows when to look again
        self.interrupt = threading.Event()
        self.stopped = threading.Event()
        self.turns: list[Turn] = []
        self.scheduler = Scheduler(out, config.channel, config.drop_late)
        self.listening = threading.Event()  # set while waiting for a phrase (file players wait on it)
        self._handover_at: float | None = None  # set by the input callback when the hand-over pedal is pressed
        self._reset_warm()
        self._closed = False

    # --- input (called from the port's thread) ------------------------------------------------------

    def on_message(self, msg: mido.Message, t: float) -> None:
        """The input port's callback: `t` is the message's arrival time (time.monotonic())."""
        if msg.type not in ("note_on", "note_off", "control_change"):
            return
        if self.cfg.echo and (msg.type != "control_change" or msg.control == SUSTAIN):
            with self.scheduler.send_lock:
                self.out.send(msg.copy(channel=self.cfg.channel))
        with self.cv:
            cc = self.cfg.handover_cc
            if cc is not None and msg.type == "control_change" and msg.control == cc:
                if msg.value >= 64 and not self.responding and self.phrase.has_notes:
                    self._handover_at = t
                    self.cv.notify_all()
                return
            if self.responding and not self.interrupt.is_set():
                if not (self.cfg.barge_in and msg.type == "note_on" and msg.velocity > 0):
                    return  # keys and pedal left over from the phrase, during the answer
                self.interrupt.set()  # the player cuts in: the answer stops, this note starts a phrase
            self.phrase.add(msg, t)
            self.version += 1
            self.cv.notify_all()

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> list[Turn]:
        """Listen, answer, repeat until stop() or `config.turns` answers; always ends with all notes off."""
        import torch

        if not self.scheduler.is_alive():
            self.scheduler.start()
        # Python hands the GIL to a waiting thread only every "switch interval" (5 ms by default); the
        # scheduler must get it within a millisecond of a note's time while the producer computes.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.0005))
        try:
            with torch.inference_mode():
                self._warm_up()
                while not self.stopped.is_set():
                    handover, phrase = self._listen()
                    if phrase is None:
                        break
                    self._answer(handover, phrase)
                    if self.cfg.turns and len(self.turns) >= self.cfg.turns:
                        break
        finally:
            sys.setswitchinterval(switch)
            self.close()
        return self.turns

    def _warm_up(self) -> None:
        """Run every code path once (first calls allocate and pick kernels), so turn 1 is as quick as turn 9."""
        import torch

        from amadeus import sampling

        logits, state = self.model.prefill(torch.full((1, 8), TIME_SHIFT_LAST, dtype=torch.long))
        for _ in range(4):
            logits, state = self.model.step(torch.tensor([TIME_SHIFT_LAST]), state)
        probs = sampling.warp(logits[:, :VOCAB_SIZE].float(), self.cfg.temperature, self.cfg.top_k,
                              self.cfg.top_p).softmax(-1)
        torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0))
        self.codec.encode(Phrase().to_midi(end=0.0))

    def stop(self) -> None:
        self.stopped.set()
        self.interrupt.set()
        with self.cv:
            self.cv.notify_all()

    def _listen(self) -> tuple[float, Phrase | None]:
        """Wait for the hand-over, priming the model as the phrase grows. Returns (moment, phrase)."""
        self.listening.set()
        primed_version = -1
        next_prime = 0.0
        prime_again: float | None = None  # when the last pass's unfed events become final
        while True:
            with self.cv:
                if self.stopped.is_set():
                    return 0.0, None
                now = time.monotonic()
                deadline = None
                if self._handover_at is not None:
                    deadline = self._handover_at
                elif self.cfg.handover_cc is None:
                    deadline = self.phrase.silence_deadline(self.cfg.silence)
                if deadline is not None and now >= deadline:
                    phrase, self.phrase = self.phrase, Phrase()
                    self._handover_at = None
                    self.responding = True
                    self.interrupt.clear()
                    self.listening.clear()
                    return deadline, phrase
                want_prime = self.cfg.warm and self.phrase.has_notes and (
                    self.version != primed_version or prime_again is not None)
                timeout = 0.5
                if deadline is not None:
                    timeout = min(timeout, deadline - now)
                if want_prime:
                    again = next_prime if self.version != primed_version else max(next_prime, prime_again)
                    timeout = min(timeout, max(0.0, again - now))
                if timeout > 0:
                    self.cv.wait(timeout)
                    continue
                snapshot, version = self.phrase.copy(), self.version
            primed_version = version
            next_prime = time.monotonic() + self.cfg.prime_interval
            prime_again = self._prime(snapshot, time.monotonic())

    # --- priming ------------------------------------------------------------------------------------

    def _reset_warm(self) -> None:
        self._encoded: tuple[int, list[int]] | None = None  # (events in the phrase, their final encoding)
        self.fed: list[int] = []
        self.state: Any = None
        self.logits: Any = None

    def _feed(self, ids: Sequence[int]) -> None:
        """Extend the model state by `ids`: one batched prefill from nothing, else one step per event."""
        import torch

        if not ids:
            return
        if self.state is None:
            self.logits, self.state = self.model.prefill(torch.tensor([list(ids)], dtype=torch.long))
        else:
            for tok in ids:
                self.logits, self.state = self.model.step(torch.tensor([tok], dtype=torch.long), self.state)
        self.fed.extend(ids)

    def _prime(self, phrase: Phrase, now: float) -> float | None:
        """Feed the events of the phrase so far that can no longer change.

        Returns when another pass would find more to feed without new input (None: only new input can).
        """
        if self.cfg.max_prompt_events:
            return None  # a windowed prompt changes at every event: only the one prefill at hand-over applies
        assert phrase.start is not None
        ids = self.codec.encode(phrase.to_midi(end=now, open_end=now + FAR_SECONDS))
        n = final_prefix(ids, now - phrase.start - PRIME_MARGIN)
        if n > len(self.fed):
            if ids[:len(self.fed)] != self.fed:
                self._reset_warm()  # cannot happen with a well-behaved codec; start over rather than drift
            self._feed(ids[len(self.fed):n])
        if not phrase.keys and not phrase.pedal:
            self._encoded = (len(phrase.events), ids)  # already the final encoding, unless more is played
        if n == len(ids):
            return None
        # The next event's time (phrase seconds): once the cutoff passes it, it can be fed.
        step = sum(t - TIME_SHIFT + 1 for t in ids[:n] if TIME_SHIFT <= t <= TIME_SHIFT_LAST)
        for t in ids[n:]:
            if not TIME_SHIFT <= t <= TIME_SHIFT_LAST:
                break
            step += t - TIME_SHIFT + 1
        due = phrase.start + step * STEP_SECONDS + PRIME_MARGIN + 0.005
        return due if due < now + FAR_SECONDS / 2 else None  # a far end: a key or the pedal is still down

    # --- answering ----------------------------------------------------------------------------------

    def _prompt(self, turn: Turn) -> None:
        """Bring the model state to the end of the whole phrase; `self.logits` then predicts the answer."""
        if self._encoded is not None and self._encoded[0] == len(turn.phrase.events):
            ids = self._encoded[1]  # nothing played since the last priming pass, all keys and pedal up
        else:
            ids = self.codec.encode(turn.phrase.to_midi(end=turn.handover))
        if self.cfg.max_prompt_events and len(ids) > self.cfg.max_prompt_events:
            ids = ids[-self.cfg.max_prompt_events:]
        turn.prompt_ids = ids
        if self.fed and ids[:len(self.fed)] != self.fed:
            turn.reprimed = True
            self._reset_warm()
        turn.warm_ids = len(self.fed)
        if len(ids) == len(self.fed) and self.fed:
            return
        if len(ids) == len(self.fed):  # an empty encoding (cannot happen: the phrase has a note-on)
            ids = [TIME_SHIFT]
        self._feed(ids[len(self.fed):])

    def _sample(self) -> int:
        import torch

        from amadeus import sampling

        logits = self.logits[0, :VOCAB_SIZE].float()
        probs = sampling.warp(logits[None], self.cfg.temperature, self.cfg.top_k, self.cfg.top_p).softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _answer(self, handover: float, phrase: Phrase) -> None:
        import torch

        turn = Turn(len(self.turns), handover, phrase, woke=time.monotonic())
        self.turns.append(turn)
        try:
            self._prompt(turn)
            turn.primed = time.monotonic()
            decoder = StreamDecoder(self.codec)
            limit = round(self.cfg.seconds / STEP_SECONDS)
            max_events = int(self.cfg.seconds * 200) + 200  # far above real piano's density (REFERENCE §8)
            first: int | None = None
            while not self.interrupt.is_set():
                tok = self._sample()
                turn.answer_ids.append(tok)
                notes = decoder.push(tok)
                end = first is not None and decoder.step - first >= limit or len(turn.answer_ids) >= max_events
                if end:
                    notes += decoder.finish()
                if first is None:
                    notes = [n for n in notes if n.kind == "on"]  # before the first note-on nothing sounds
                    if notes:
                        # The answer's clock starts at its first note, now: leading time shifts are skipped.
                        first = turn.first_step = notes[0].step
                        turn.first_queued = time.monotonic()
                        turn.first_tokens = len(turn.answer_ids)
                        turn.origin = turn.first_queued - first * STEP_SECONDS
                for n in notes:
                    assert first is not None and turn.origin is not None
                    rel = n.step - first
                    if rel >= limit and n.kind == "on":
                        continue
                    rel = min(rel, limit)
                    turn.notes.append(Note(rel, n.kind, n.pitch, n.velocity))
                    msg = (mido.Message("note_on", channel=self.cfg.channel, note=n.pitch, velocity=n.velocity)
                           if n.kind == "on" else
                           mido.Message("note_off", channel=self.cfg.channel, note=n.pitch, velocity=0))
                    self.scheduler.put(turn.origin + (first + rel) * STEP_SECONDS, msg, turn.index)
                if end:
                    break
                self.logits, self.state = self.model.step(torch.tensor([tok], dtype=torch.long), self.state)
                if turn.origin is not None:
                    # Stay at most `lookahead` ahead of playback: the CPU is shared with the scheduler.
                    ahead = turn.origin + decoder.step * STEP_SECONDS - time.monotonic()
                    if ahead > self.cfg.lookahead:
                        self.interrupt.wait(ahead - self.cfg.lookahead)
            # Wait for the answer to finish playing (or for the player to cut in).
            while not self.interrupt.is_set() and self.scheduler.pending():
                last = self.scheduler.last_due()
                self.interrupt.wait(max(0.001, (last or time.monotonic()) - time.monotonic() + 0.002))
        except BaseException:  # Ctrl-C or an error: the answer is over
            self.interrupt.set()
            raise
        finally:
            turn.interrupted = self.interrupt.is_set()
            if turn.interrupted:
                self.scheduler.flush()
            turn.first_note_sent = self.scheduler.first_note.get(turn.index)
            self._reset_warm()
            with self.cv:
                self.responding = False
                self.cv.notify_all()
            self.log(describe_turn(turn))
            if self.record_dir is not None:
                self._record(turn)

    # --- recording and stopping -------------------------------------------------------------------------

    def _record(self, turn: Turn) -> None:
        from amadeus.fileio import atomic_open

        assert self.record_dir is not None
        base = self.record_dir / f"turn-{turn.index + 1:03d}"
        phrase = turn.phrase.to_midi(end=turn.handover)
        with atomic_open(f"{base}-phrase.mid", "wb") as f:
            phrase.write(f)
        with atomic_open(f"{base}-response.mid", "wb") as f:
            notes_to_midi(turn.notes).write(f)

    def close(self) -> None:
        """Stop the answer and silence everything: note-offs for sounding notes, CC123, CC64 = 0."""
        if self._closed:
            return
        self._closed = True
        self.stopped.set()
        self.interrupt.set()
        self.scheduler.flush()
        self.scheduler.close()
        ch = self.cfg.channel
        with self.scheduler.send_lock:
            if self.cfg.echo:  # keys the player holds, echoed to the output
                for pitch in sorted(self.phrase.keys):
                    self.out.send(mido.Message("note_off", channel=ch, note=pitch, velocity=0))
            self.out.send(mido.Message("control_change", channel=ch, control=123, value=0))
            self.out.send(mido.Message("control_change", channel=ch, control=SUSTAIN, value=0))
        if self.scheduler.is_alive():
            self.scheduler.join(timeout=1.0)

    # --- figures ------------------------------------------------------------------------------------

    def timing_errors(self) -> list[float]:
        """Send time minus scheduled time (s) of every message the scheduler sent."""
        return [s.sent - s.due for s in self.scheduler.log]


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


def describe_turn(turn: Turn) -> str:
    lat = "no note" if turn.latency is None else f"first note {turn.latency * 1000:.1f} ms after hand-over"
    ons = sum(1 for n in turn.notes if n.kind == "on")
    extra = ", interrupted" if turn.interrupted else ""
    return (f"turn {turn.index + 1}: phrase {len(turn.prompt_ids)} events ({turn.warm_ids} primed while "
            f"playing), answer {len(turn.answer_ids)} events / {ons} notes, {lat}{extra}")


# ---------------------------------------------------------------------------------------- phrase players

def midi_file_messages(path: str | Path) -> list[tuple[float, mido.Message]]:
    """(seconds from the first message, message) for the notes and sustain pedal of a MIDI file."""
    import pretty_midi

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: --input-file not found")
    try:
        pm = pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # mido/pretty_midi raise many kinds of errors on corrupt files
        raise UserError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e})") from None
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
    """A thread that plays the phrase each time the session listens, `repeat` times, then ends it."""

    def play() -> None:
        for _ in range(repeat):
            while not session.listening.wait(0.05):
                if session.stopped.is_set():
                    return
            if session.stopped.is_set():
                return
            n = len(session.turns)
            play_phrase(port, messages, speed, session.stopped)
            while len(session.turns) == n or session.responding:  # wait for the answer to be over
                if session.stopped.wait(0.02):
                    return
        session.stop()

    thread = threading.Thread(target=play, name="amadeus-live-file", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------- the CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `amadeus live` (argparse only: building the parser must not import torch)."""
    p.add_argument("--checkpoint", help="a .sess or .int8.sess file (any model family)")
    p.add_argument("--in", dest="in_port", default=None, metavar="PORT",
                   help="MIDI input port, full name or a unique part (default: the first)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", dest="out_port", default=None, metavar="PORT",
                     help="MIDI output port (default: the first); 'null' discards the answer (with --record)")
    out.add_argument("--synth", action="store_true", help="play the answer through fluidsynth to the sound card")
    p.add_argument("--soundfont", default=None, help="an .sf2 file for --synth (default: pretty_midi's)")
    p.add_argument("--driver", default=None, help="fluidsynth audio driver for --synth (alsa, pulseaudio, ...)")
    p.add_argument("--silence", type=float, default=800.0, metavar="MS",
                   help="hand over after all keys and the sustain pedal are up this long (default 800 ms)")
    p.add_argument("--handover", default="silence", metavar="{silence,cc67,ccN}",
                   help="'silence' (default), or a controller whose press hands over, e.g. cc67 (soft pedal)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each answer (default 10 s)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely events (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--channel", type=int, default=1, help="MIDI channel of the answer, 1..16 (default 1)")
    p.add_argument("--input-file", default=None, metavar="PHRASE.MID",
                   help="play this file into the session as if a player played it (no keyboard needed)")
    p.add_argument("--input-speed", type=float, default=1.0,
                   help="speed of --input-file playback (1 = real time)")
    p.add_argument("--repeat", type=int, default=1, help="with --input-file: play it this many times, then end")
    p.add_argument("--echo", action="store_true", help="also send the player's notes to the output")
    p.add_argument("--no-barge-in", dest="barge_in", action="store_false",
                   help="keys played during an answer do not interrupt it")
    p.add_argument("--record", default=None, metavar="DIR", help="save each phrase and answer as MIDI here")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: best for batch 1)")
    p.add_argument("--list-ports", action="store_true", help="list MIDI input and output ports and exit")


def config_from_args(args: argparse.Namespace) -> LiveConfig:
    if not 1 <= args.channel <= 16:
        raise UserError(f"live: --channel must be 1..16, got {args.channel}")
    return LiveConfig(silence=args.silence / 1000.0, handover=args.handover, seconds=args.seconds,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                      channel=args.channel - 1, echo=args.echo, barge_in=args.barge_in)


def run(args: argparse.Namespace, backend: Backend | None = None) -> list[Turn]:
    """`amadeus live`: open the ports, load the model, run the session until Ctrl-C (or the file ends)."""
    from amadeus.ports import MemoryBackend, MemoryOutput, MidoBackend, SynthOutput, list_ports, pick_port

    backend = backend if backend is not None else MidoBackend()
    if args.list_ports:
        print(list_ports(backend))
        return []
    if not args.checkpoint:
        raise UserError("live: --checkpoint is required (e.g. save/performance_rnn.int8.sess)")
    if args.repeat < 1 or not args.input_speed > 0:
        raise UserError("live: --repeat must be >= 1 and --input-speed > 0")
    config = config_from_args(args)
    messages = midi_file_messages(args.input_file) if args.input_file else None
    if messages is None:
        pick_port(backend.list_inputs(), args.in_port, "input")  # no keyboard: say so before loading a model

    out: OutputPort
    if args.synth:
        out = SynthOutput(args.soundfont, args.driver)
    elif args.out_port == "null":
        out = MemoryOutput()
    else:
        out = backend.open_output(args.out_port)
    in_port = None
    session: LiveSession | None = None
    turns: list[Turn] = []
    try:
        import torch

        from amadeus.generation import load

        torch.set_num_threads(max(1, args.threads))
        loaded = load(args.checkpoint)
        session = LiveSession(loaded.model, Codec(loaded.flavour), out, config, record_dir=args.record, log=print)
        if messages is not None:
            in_port = MemoryBackend().open_input(None, session.on_message)
            file_player(session, in_port, messages, args.repeat, args.input_speed)
            print(f"playing {args.input_file} into the session ({loaded.family}, {loaded.precision}); Ctrl-C ends")
        else:
            in_port = backend.open_input(args.in_port, session.on_message)
            how = (f"a silence of {args.silence:g} ms" if config.handover_cc is None
                   else f"controller {config.handover_cc} pressed")
            print(f"listening ({loaded.family}, {loaded.precision}); the model answers after {how}; Ctrl-C ends")
        turns = session.run()
    except KeyboardInterrupt:
        turns = session.turns if session is not None else []
        print("stopped: all notes off")
    finally:
        if session is not None:
            session.close()  # note-offs for sounding notes, CC123, CC64 = 0
        if in_port is not None:
            in_port.close()
        out.close()
    if args.record and turns:
        print(f"recorded {len(turns)} turn(s) in {args.record}")
    return turns


def main(argv: Sequence[str] | None = None) -> None:
    """Stand-alone entry (the project's CLI calls add_arguments/run)."""
    from amadeus.errors import exits_cleanly

    parser = argparse.ArgumentParser(prog="amadeus live", description=__doc__.splitlines()[0])
    add_arguments(parser)
    exits_cleanly(run)(parser.parse_args(argv))


def stats(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and max (nearest-rank percentiles) of `values`, in the values' unit."""
    if not values:
        return {"n": 0}
    s = sorted(values)

    def pct(q: float) -> float:
        return s[min(len(s) - 1, max(0, int(-(-q * len(s) // 100)) - 1))]

    return {"n": len(s), "p50": pct(50), "p95": pct(95), "p99": pct(99), "max": s[-1]}


__all__ = ["LiveConfig", "LiveSession", "Phrase", "Codec", "StreamDecoder", "Scheduler", "Turn", "Note",
           "final_prefix", "parse_handover", "midi_file_messages", "phrase_messages", "play_phrase", "file_player",
           "notes_to_midi", "add_arguments", "run", "main", "stats"]
