"""A live session (`LiveSession`): listen to the player, answer with the model, listen again.

How a turn goes (docs/live.md compares it with Aria-Duet, the peer this follows where it can):

1. Listen. Every message from the input port is stamped with `time.monotonic()` on arrival and kept
   in the `Phrase` (notes, the sustain pedal CC64).
2. Prime while the player plays. Several times a second the phrase so far is encoded with the codec
   (keys still down and a pedal still held are given a far end) and the events that can no longer change
   (those before "now", less a margin) are stepped into the model, so its state is warm; Aria-Duet does
   the same with its KV cache. Should the final encoding disagree with what was fed (it should not),
   the phrase is primed again in one batched `prefill`.
3. Hand-over: all keys and the pedal have been up for `--silence` ms, or the chosen controller (e.g. CC67,
   the soft pedal, as Aria-Duet uses) is pressed. Aria-Duet has no phrase-end detection; silence is ours.
4. Respond. The rest of the phrase is fed, then the producer (the session's thread) samples events and
   decodes them with the codec's semantics (`StreamDecoder`) into timed note on/off messages, running up
   to `lookahead` seconds ahead of playback; the `Scheduler` thread sends each one at its time. Playback
   starts at the first note-on: the model's leading time shifts are not waited out, so the answer comes
   right after the hand-over. The answer lasts `--seconds` of music; notes still open then are closed.
   Playing a key during the answer interrupts it (barge-in) and starts the next phrase.
5. Listen again. Ctrl-C ends with all notes off (note-offs for sounding notes, CC123, CC64 = 0).

Latency is measured per turn (hand-over moment -> first response note-on sent, in `Turn`) and per
message (send time vs its scheduled time, `timing_errors`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mido

from amadeus.live.config import LiveConfig
from amadeus.live.phrase import FAR_SECONDS, PRIME_MARGIN, Phrase, final_prefix
from amadeus.live.ports import ALL_NOTES_OFF, SUSTAIN
from amadeus.live.scheduler import Scheduler
from amadeus.live.stream import Codec, Note, StreamDecoder, notes_to_midi
from amadeus.live.turn import Turn, describe_turn
from amadeus.vocab import STEP_SECONDS, TIME_SHIFT, TIME_SHIFT_LAST, VOCAB_SIZE

if TYPE_CHECKING:
    import torch

    from amadeus.live.ports import OutputPort
    from amadeus.take import TakeWriter


class Watcher:
    """What a session tells whoever shows it (the browser studio): called from the session's thread,
    so each method must be quick and must not block. The base class ignores everything."""

    def listening(self) -> None: ...

    def answering(self, turn: Turn) -> None: ...

    def planned(self, turn: Turn, due: float, msg: mido.Message) -> None:
        """An answer message queued to sound at monotonic time `due`: known before it sounds."""

    def cancelled(self, turn: Turn) -> None:
        """The answer was stopped early: what was planned and has not sounded will not."""

    def done(self, turn: Turn) -> None:
        """The turn is over (its take, if recorded, is saved)."""


class LiveSession:
    """One live session: connect an input port's callback to `on_message`; answers go to `out`.

    `run()` blocks (listen, answer, repeat) until `stop()` from any thread, Ctrl-C, or `config.turns`
    answers; it always ends with all notes off. `turns` and `timing_errors()` hold the figures.
    """

    def __init__(self, model: torch.nn.Module, codec: Codec, out: OutputPort, config: LiveConfig,
                 record_dir: str | Path | None = None, log: Callable[[str], None] | None = None,
                 recorder: TakeWriter | None = None, watcher: Watcher | None = None):
        import torch

        self.model, self.codec, self.out, self.cfg = model, codec, out, config
        self.log = log or (lambda line: None)
        self.watcher = watcher or Watcher()
        if recorder is None and record_dir is not None:
            from amadeus.take import TakeWriter

            recorder = TakeWriter(record_dir, log=self.log)  # checks the folder now, before any turn
        self.recorder = recorder
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
        self._again, self._again_at = False, 0.0  # answer the last phrase again (answer_again), asked then
        self.last: tuple[Phrase, float] | None = None  # the last phrase answered, and its hand-over moment
        self._reset_warm()
        self._closed = False
        self._close_lock = threading.Lock()

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
                    handover, phrase, asked = self._listen()
                    if phrase is None:
                        break
                    self._answer(handover, phrase, asked)
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
        sampling.draw(logits[:, :VOCAB_SIZE].float(), self.cfg.temperature, self.cfg.top_k, self.cfg.top_p,
                      generator=torch.Generator().manual_seed(0))  # its own generator: the session's stays as seeded
        self.codec.encode(Phrase().to_midi(end=0.0))

    def stop(self) -> None:
        self.stopped.set()
        self.interrupt.set()
        with self.cv:
            self.cv.notify_all()

    def hand_over(self, t: float) -> None:
        """Hand over now (a button), as the hand-over controller does: if a phrase has been played."""
        with self.cv:
            if not self.responding and self.phrase.has_notes:
                self._handover_at = t
                self.cv.notify_all()

    def stop_answer(self) -> None:
        """End the answer now (the player vetoes it); the session listens again."""
        with self.cv:
            if self.responding:
                self.interrupt.set()
                self.cv.notify_all()

    def answer_again(self) -> None:
        """Answer the last phrase again: another draw of the sampler, the phrase unchanged.
        Stops the answer in progress first; nothing happens before a first answer."""
        with self.cv:
            if self.last is None:
                return
            self._again, self._again_at = True, time.monotonic()
            if self.responding:
                self.interrupt.set()
            self.cv.notify_all()

    def _listen(self) -> tuple[float, Phrase | None, float | None]:
        """Wait for the hand-over, priming the model as the phrase grows.

        Returns (the phrase's hand-over moment, the phrase, when the answer was asked for if not then:
        only when the last phrase is answered again)."""
        self.listening.set()
        self.watcher.listening()
        primed_version = -1
        next_prime = 0.0
        prime_again: float | None = None  # when the last pass's unfed events become final
        told = False  # the player was told the model waits for the hand-over controller
        while True:
            with self.cv:
                if self.stopped.is_set():
                    return 0.0, None, None
                if self._again:
                    self._again = False
                    if self.last is not None and not self.phrase.has_notes:  # else the new phrase is answered
                        self._reset_warm()  # the state holds the last answer: the phrase is fed again
                        self.responding = True
                        self.interrupt.clear()
                        self.listening.clear()
                        phrase, handover = self.last
                        return handover, phrase.copy(), self._again_at
                now = time.monotonic()
                deadline = None
                hint = None
                if self._handover_at is not None:
                    deadline = self._handover_at
                elif self.cfg.handover_cc is None:
                    deadline = self.phrase.silence_deadline(self.cfg.silence)
                elif not told:
                    hint = self.phrase.silence_deadline(self.cfg.handover_hint)
                    if hint is not None and now >= hint:
                        told, hint = True, None
                        self.log(f"waiting for controller {self.cfg.handover_cc} (press it to hand over; "
                                 "silence does not)")
                if deadline is not None and now >= deadline:
                    phrase, self.phrase = self.phrase, Phrase()
                    self._handover_at = None
                    self.responding = True
                    self.interrupt.clear()
                    self.listening.clear()
                    return deadline, phrase, None
                want_prime = self.cfg.warm and self.phrase.has_notes and (
                    self.version != primed_version or prime_again is not None)
                timeout = 0.5
                if deadline is not None:
                    timeout = min(timeout, deadline - now)
                if hint is not None:
                    timeout = min(timeout, max(0.0, hint - now))
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
        """The next answer event, drawn from what `self.logits` predicts (temperature, top-k, top-p),
        among the events the performance state allows (as `amadeus generate` samples)."""
        import torch

        from amadeus import sampling

        logits = self.performance.mask(self.logits[:1, :VOCAB_SIZE].float())
        tok = sampling.draw(logits, self.cfg.temperature, self.cfg.top_k, self.cfg.top_p, generator=self.generator)
        self.performance.update(tok.to(torch.long))
        return int(tok)

    def _start_performance(self, prompt_ids: Sequence[int]) -> None:
        """What sounds at the end of the phrase, so the answer releases the player's held notes and
        never writes an event the decoder would drop; the checkpoint's release prior applies."""
        from amadeus.performance_state import PerformanceState
        from amadeus.playing_rules import DEFAULT_RULES

        self.performance = PerformanceState([list(prompt_ids)], self.cfg.rules or DEFAULT_RULES,
                                            flavour=self.codec.flavour,
                                            decoder_max_note_seconds=self.codec.max_note_seconds,
                                            release_prior=getattr(self.model, "release_prior", None))

    def _answer(self, handover: float, phrase: Phrase, asked: float | None) -> None:
        import torch

        turn = Turn(len(self.turns), handover, phrase, woke=time.monotonic(), asked=asked)
        self.turns.append(turn)
        self.last = (phrase, handover)
        self.watcher.answering(turn)
        try:
            self._prompt(turn)
            self._start_performance(turn.prompt_ids)
            turn.primed = time.monotonic()
            decoder = StreamDecoder(self.codec)
            limit = round(self.cfg.seconds / STEP_SECONDS)
            max_events = int(self.cfg.seconds * 200) + 200  # far above real piano's density (docs/live.md)
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
                    due = turn.origin + (first + rel) * STEP_SECONDS
                    self.scheduler.put(due, msg, turn.index)
                    self.watcher.planned(turn, due, msg)
                if end:
                    break
                self.logits, self.state = self.model.step(torch.tensor([tok], dtype=torch.long), self.state)
                if turn.origin is not None:
                    # Stay at most `lookahead` ahead of playback: the CPU is shared with the scheduler.
                    ahead = turn.origin + decoder.step * STEP_SECONDS - time.monotonic()
                    if ahead > self.cfg.lookahead:
                        self.interrupt.wait(ahead - self.cfg.lookahead)
            turn.generated = time.monotonic()
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
                self.watcher.cancelled(turn)
            turn.ended = time.monotonic()
            turn.first_note_sent = self.scheduler.first_note.get(turn.index)
            self._reset_warm()
            self.log(describe_turn(turn))
            if self.recorder is not None:
                self._record(turn)  # before the player is let in again: the take is on disk first
            self.watcher.done(turn)
            with self.cv:
                self.responding = False
                self.cv.notify_all()

    # --- recording and stopping -------------------------------------------------------------------------

    def played(self, turn: Turn) -> list[Note]:
        """The answer as it was played: what the scheduler sent for `turn` (late notes it dropped are
        not in it), steps from the answer's first note; notes an interruption silenced end there."""
        if turn.origin is None:
            return []
        start = turn.origin + turn.first_step * STEP_SECONDS
        notes, sounding = [], set()
        for s in list(self.scheduler.log):
            if s.turn != turn.index:
                continue
            step = max(0, round((s.due - start) / STEP_SECONDS))
            if s.msg.type == "note_on":
                notes.append(Note(step, "on", s.msg.note, s.msg.velocity))
                sounding.add(s.msg.note)
            elif s.msg.type == "note_off":
                notes.append(Note(step, "off", s.msg.note))
                sounding.discard(s.msg.note)
        end = max([n.step for n in notes] + [round(((turn.ended or start) - start) / STEP_SECONDS)])
        notes += [Note(end, "off", pitch) for pitch in sorted(sounding)]
        return notes

    def _record(self, turn: Turn) -> None:
        """Save the turn's take (phrase and answer as played); a failed write is logged and retried later."""
        assert self.recorder is not None and turn.phrase.start is not None
        origin = turn.phrase.start
        answer_start = (turn.origin + turn.first_step * STEP_SECONDS if turn.origin is not None
                        else turn.handover) - origin
        take = self.recorder.take(turn.index, turn.phrase.events, origin, turn.handover,
                                  notes_to_midi(self.played(turn)), answer_start, whole=True,
                                  title=f"live take {turn.index + 1}")
        self.recorder.save(take)

    def _record_phrase_in_progress(self) -> None:
        """A phrase still being played when the session stops is a take too (with no answer)."""
        with self.cv:
            phrase, self.phrase = self.phrase, Phrase()
        if self.recorder is None or not phrase.has_notes:
            return
        import pretty_midi

        assert phrase.start is not None
        now = time.monotonic()
        index = len(self.turns)
        path = self.recorder.save(self.recorder.take(index, phrase.events, phrase.start, now,
                                                     pretty_midi.PrettyMIDI(), now - phrase.start, whole=False,
                                                     title=f"live take {index + 1} (stopped before the answer)"))
        if path is not None:
            self.log(f"the phrase in progress is saved as {path}")

    def close(self) -> None:
        """End the session: stop the answer, join the scheduler, then silence everything (note-offs for
        sounding notes, CC123, CC64 = 0) and save the takes, a phrase in progress included."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.stopped.set()
        self.interrupt.set()
        self.scheduler.flush()
        self.scheduler.close()
        if self.scheduler.is_alive() and self.scheduler is not threading.current_thread():
            self.scheduler.join(timeout=5.0)  # nothing it sends can follow the all-notes-off
        ch = self.cfg.channel
        with self.scheduler.send_lock:
            if self.cfg.echo:  # keys the player holds, echoed to the output
                for pitch in sorted(self.phrase.keys):
                    self.out.send(mido.Message("note_off", channel=ch, note=pitch, velocity=0))
            self.out.send(mido.Message("control_change", channel=ch, control=ALL_NOTES_OFF, value=0))
            self.out.send(mido.Message("control_change", channel=ch, control=SUSTAIN, value=0))
        if self.recorder is not None:
            self._record_phrase_in_progress()
            self.recorder.close()

    # --- figures ------------------------------------------------------------------------------------

    def timing_errors(self) -> list[float]:
        """Send time minus scheduled time (s) of every message the scheduler sent."""
        return [s.sent - s.due for s in self.scheduler.log]

