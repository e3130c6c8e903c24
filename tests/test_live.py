"""Live mode: whole sessions through in-memory MIDI ports (no sound card, no ALSA), with small random models."""

from __future__ import annotations

import argparse
import signal
import threading
import time

import mido
import numpy as np
import pretty_midi
import pytest
import torch

from amadeus import codec as codec_mod
from amadeus import live, vocab
from amadeus.errors import UserError
from amadeus.live import Codec, LiveConfig, LiveSession, Phrase, StreamDecoder
from amadeus.live.ports import MemoryBackend, MidoBackend, list_ports
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig

WAIT = 60.0  # seconds a test waits for a session state before it fails: only a hang takes this long


def tiny_model(hidden: int = 32, layers: int = 2, seed: int = 0) -> PerformanceRNN:
    torch.manual_seed(seed)
    cfg = PerformanceRNNConfig(embed_dim=16, input_size=32, hidden_size=hidden, num_layers=layers, controls=False)
    return PerformanceRNN(cfg).eval()


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec("magenta")


def phrase_midi(path=None, pedal=True) -> pretty_midi.PrettyMIDI:
    """A short phrase on the 10 ms grid (first note at 0), with a sustain pedal and a chord."""
    pm = pretty_midi.PrettyMIDI(resolution=1000, initial_tempo=120.0)
    piano = pretty_midi.Instrument(0)
    notes = [(60, 0.0, 0.3, 70), (64, 0.25, 0.5, 90), (67, 0.5, 0.62, 40), (72, 0.8, 1.1, 100),
             (48, 0.8, 1.3, 100), (52, 0.8, 1.3, 60), (60, 1.4, 1.7, 75)]
    for p, s, e, v in notes:
        piano.notes.append(pretty_midi.Note(v, p, s, e))
    if pedal:
        piano.control_changes += [pretty_midi.ControlChange(64, 100, 0.45), pretty_midi.ControlChange(64, 0, 0.9)]
    pm.instruments.append(piano)
    if path is not None:
        pm.write(str(path))
    return pm


class Harness:
    """A session running in a thread on in-memory ports.

    Tests wait on the session's own state (listening, turns, what was fed or sent) with generous
    timeouts, never on a fixed sleep: on a loaded machine the session's warm-up alone can take longer
    than a phrase's silence. The session is listening (warmed up) when the constructor returns.
    """

    def __init__(self, model, codec, record_dir=None, **cfg):
        cfg.setdefault("silence", 0.2)
        cfg.setdefault("seconds", 1.0)
        cfg.setdefault("seed", 0)
        self.backend = MemoryBackend()
        self.out = self.backend.open_output(None)
        self.lines = []
        self.session = LiveSession(model, codec, self.out, LiveConfig(**cfg), record_dir=record_dir,
                                   log=self.lines.append)
        self.inp = self.backend.open_input(None, self.session.on_message)
        self.thread = threading.Thread(target=self.session.run, daemon=True)
        self.thread.start()
        self.wait(self.session.listening.is_set)

    def feed(self, msg, t=None):
        self.inp.feed(msg, t)

    def wait(self, cond, timeout=WAIT):
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise AssertionError("timed out")
            time.sleep(0.005)

    def wait_turns(self, n, timeout=WAIT):
        self.wait(lambda: len(self.session.turns) >= n and not self.session.responding, timeout)

    def generate_once(self, messages):
        """Play the phrase once, wait until the answer is sampled in full (not played out), stop."""
        try:
            live.play_phrase(self.inp, messages, speed=None)
            self.wait(lambda: self.session.turns and self.session.turns[0].generated is not None)
        finally:
            self.stop()
        return self.session.turns[0]

    def play_turns(self, messages, turns):
        """Play the phrase `turns` times, each after the session listens again; wait for the session to end."""
        for _ in range(turns):
            self.wait(lambda: self.session.listening.is_set())
            n = len(self.session.turns)
            live.play_phrase(self.inp, messages, speed=None)
            self.wait_turns(n + 1)
        self.thread.join(timeout=WAIT)

    def answer_once(self, messages):
        """Play the phrase once, wait for the answer, stop; returns that turn."""
        try:
            live.play_phrase(self.inp, messages, speed=None)
            self.wait_turns(1)
        finally:
            self.stop()
        return self.session.turns[0]

    def stop(self):
        self.session.stop()
        self.thread.join(timeout=WAIT)
        assert not self.thread.is_alive()


def on(p, v=80):
    return mido.Message("note_on", note=p, velocity=v)


def off(p):
    return mido.Message("note_off", note=p)


def cc(n, v):
    return mido.Message("control_change", control=n, value=v)


# --- hand-over detection ----------------------------------------------------------------------------

def test_phrase_silence_deadline_waits_for_keys_and_pedal():
    ph = Phrase()
    assert ph.silence_deadline(0.5) is None
    ph.add(cc(64, 127), 0.9)  # pedal before any note: no phrase yet
    ph.add(on(60), 1.0)
    assert ph.silence_deadline(0.5) is None
    ph.add(off(60), 1.2)
    assert ph.silence_deadline(0.5) is None  # the pedal is still down
    ph.add(cc(64, 0), 1.5)
    assert ph.silence_deadline(0.5) == pytest.approx(2.0)
    ph.add(mido.Message("note_on", note=62, velocity=0), 1.6)  # note-on velocity 0 is a note-off
    assert ph.silence_deadline(0.5) == pytest.approx(2.1)


def test_held_pedal_blocks_silence_handover_release_triggers_it(codec):
    h = Harness(tiny_model(), codec, silence=0.15, seconds=0.3, turns=1)
    try:
        h.feed(cc(64, 127))
        h.feed(on(60))
        h.feed(off(60))
        # The note-on (final: nothing played later can precede it) is primed while the pedal is down.
        h.wait(lambda: h.session.fed and h.session.fed[-1] == vocab.NOTE_ON + 60)
        quiet = time.monotonic()
        h.wait(lambda: time.monotonic() > quiet + 3 * 0.15)  # three times the silence, pedal still down
        assert not h.session.turns and not h.session.responding
        released = time.monotonic()
        h.feed(cc(64, 0), released)
        h.wait_turns(1)
        turn = h.session.turns[0]
        assert turn.handover == pytest.approx(released + 0.15, abs=1e-9)
        assert turn.woke >= turn.handover
    finally:
        h.stop()


def test_cc67_hands_over_on_press_not_on_silence(codec):
    h = Harness(tiny_model(), codec, silence=0.1, seconds=0.3, handover="cc67", turns=1, handover_hint=0.3)
    try:
        h.feed(on(60))
        h.feed(off(60))
        # Quiet for longer than the hint's wait: the player is told, in one line, what the model waits for.
        h.wait(lambda: any("waiting for controller 67" in line for line in h.lines))
        assert not h.session.turns
        h.feed(cc(67, 0))  # release value: nothing
        released = time.monotonic()
        h.wait(lambda: time.monotonic() > released + 0.1)
        assert not h.session.turns
        pressed = time.monotonic()
        h.feed(cc(67, 127), pressed)
        h.wait_turns(1)
        assert h.session.turns[0].handover == pressed
        assert vocab.NOTE_ON + 60 in h.session.turns[0].prompt_ids
    finally:
        h.stop()
    assert sum("waiting for controller" in line for line in h.lines) == 1


def test_parse_handover():
    assert live.parse_handover("silence") is None
    assert live.parse_handover("cc67") == 67
    assert live.parse_handover("CC66") == 66
    for bad in ("cc64", "cc128", "pedal", "cc123"):
        with pytest.raises(UserError):
            live.parse_handover(bad)


# --- the phrase is encoded as the codec encodes it ------------------------------------------------------

def test_phrase_prompt_equals_codec_encode_and_was_primed_while_playing(codec, tmp_path):
    path = tmp_path / "phrase.mid"
    pm = phrase_midi(path)
    messages = live.midi_file_messages(path)
    # The silence leaves the session's thread ample time to run its last priming pass on a busy machine.
    h = Harness(tiny_model(), codec, silence=1.0, seconds=0.3, turns=1, prime_interval=0.01)
    try:
        live.play_phrase(h.inp, messages, speed=None)  # stamped as if played in real time, ending now
        h.wait_turns(1)
    finally:
        h.stop()
    turn = h.session.turns[0]
    expected = codec_mod.encode(pm).tolist()
    assert turn.prompt_ids == expected
    assert codec_mod.encode(path).tolist() == expected
    # The whole phrase was in the model's state before the silence ran out.
    assert not turn.reprimed
    assert turn.warm_ids == len(expected)


def test_priming_prefix_is_final(codec):
    """Events before the priming cutoff do not change however the phrase goes on."""
    rng = np.random.default_rng(1)
    ph = Phrase()
    t = 0.0
    msgs = []
    for _ in range(60):
        t += float(rng.choice([0.0, 0.013, 0.05, 0.21]))
        p = int(rng.integers(55, 60))
        kind = rng.integers(0, 5)
        msgs.append((t, on(p, int(rng.integers(1, 127))) if kind < 2 else off(p) if kind < 4
                     else cc(64, int(rng.choice([0, 127])))))
    for i, (t, m) in enumerate(msgs):
        ph.add(m, t)
        if ph.start is None:
            continue
        ids = codec.encode(ph.to_midi(end=t, open_end=t + live.FAR_SECONDS))
        n = live.final_prefix(ids, t - ph.start - live.PRIME_MARGIN)
        later = ph.copy()
        for t2, m2 in msgs[i + 1:]:
            later.add(m2, t2)
        final = codec.encode(later.to_midi(end=msgs[-1][0] + 1))
        assert final[:n] == ids[:n]


def test_final_prefix_leaves_out_trailing_shifts():
    on_, off_, shift = vocab.NOTE_ON, vocab.NOTE_OFF, vocab.TIME_SHIFT - 1  # shift + n = n steps
    ids = [on_ + 60, shift + 5, off_ + 60, vocab.SHIFT_1S, shift + 15, on_ + 62]  # on@0, off@50ms, on@1.2s
    assert live.final_prefix(ids, 0.04) == 1
    assert live.final_prefix(ids, 0.06) == 3
    assert live.final_prefix(ids, 1.3) == 6


# --- decoding the answer ----------------------------------------------------------------------------

def sounding_intervals(notes):
    """pitch -> merged [start, end) intervals."""
    out = {}
    for p, s, e in sorted(notes):
        ivs = out.setdefault(p, [])
        if ivs and s <= ivs[-1][1]:
            ivs[-1][1] = max(ivs[-1][1], e)
        else:
            ivs.append([s, e])
    return out


def stream_notes(events):
    """(pitch, start, end) from StreamDecoder note on/off events."""
    notes, open_ = [], {}
    for n in events:
        if n.kind == "on":
            if n.pitch in open_:
                notes.append((n.pitch, open_.pop(n.pitch), n.step))
            open_[n.pitch] = n.step
        elif n.pitch in open_:
            notes.append((n.pitch, open_.pop(n.pitch), n.step))
    assert not open_
    return notes


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("flavour, max_note_seconds", [("magenta", None), ("perceiver-io", None), ("magenta", 0.5)])
def test_stream_decoder_agrees_with_codec_decode(flavour, max_note_seconds, seed):
    codec = Codec(flavour, max_note_seconds)
    rng = np.random.default_rng(seed)
    pitches = rng.integers(58, 62, size=400)
    kinds = rng.choice(4, size=400, p=[0.3, 0.3, 0.3, 0.1])
    shifts = vocab.TIME_SHIFT - 1 + rng.choice([1, 2, 50, 100, 100], size=400)
    velocities = rng.integers(vocab.VELOCITY, vocab.VELOCITY_LAST + 1, 400)
    ids = np.where(kinds == 0, vocab.NOTE_ON + pitches, np.where(kinds == 1, vocab.NOTE_OFF + pitches,
                   np.where(kinds == 2, shifts, velocities)))
    ids = ids.tolist()
    dec = StreamDecoder(codec)
    events = []
    for tok in ids:
        got = dec.push(tok)
        assert all(a.step <= b.step for a, b in zip(got, got[1:], strict=False))
        assert not events or not got or got[0].step >= events[-1].step  # time order across calls
        events += got
    events += dec.finish()
    ref = codec_mod.decode(ids, flavour, codec.max_note_seconds).instruments[0].notes
    ref_notes = [(n.pitch, round(n.start * 100), round(n.end * 100)) for n in ref]
    assert sounding_intervals(stream_notes(events)) == sounding_intervals(ref_notes)
    ref_onsets = {(p, s): None for p, s, _ in ref_notes}
    assert {(n.pitch, n.step) for n in events if n.kind == "on"} == set(ref_onsets)
    vel = {(n.pitch, round(n.start * 100)): n.velocity for n in ref}
    assert all(n.velocity == vel[(n.pitch, n.step)] for n in events if n.kind == "on")


def test_codec_facts_match_the_codec(codec):
    assert codec.default_velocity == 100
    assert codec.velocity[vocab.VELOCITY] == codec_mod.velocity_of_bin(1)
    assert codec.velocity[vocab.VELOCITY_LAST] == codec_mod.velocity_of_bin(32)
    assert codec.max_note_steps == 500


@pytest.mark.parametrize("flavour", ["magenta", "perceiver-io"])
def test_codec_facts_are_what_decode_does(flavour):
    """Each fact, read off a one-note decode: velocity before any velocity id, of each id, longest note."""
    def one_note(ids, max_note_seconds=5.0):
        (note,) = codec_mod.decode(ids, flavour, max_note_seconds).instruments[0].notes
        return note

    note_100ms = [vocab.NOTE_ON + 60, vocab.TIME_SHIFT + 9, vocab.NOTE_OFF + 60]
    held_20s = [vocab.NOTE_ON + 60] + [vocab.SHIFT_1S] * 20 + [vocab.NOTE_OFF + 60]
    facts = Codec(flavour)
    assert one_note(note_100ms).velocity == facts.default_velocity
    for tok in range(vocab.VELOCITY, vocab.VELOCITY_LAST + 1):
        assert one_note([tok] + note_100ms).velocity == facts.velocity[tok]
    for seconds in (5.0, 0.5):
        note = one_note(held_20s, seconds)
        assert round((note.end - note.start) / vocab.STEP_SECONDS) == Codec(flavour, seconds).max_note_steps


def test_answer_timing_matches_decoded_token_times(codec):
    """Every answer note is scheduled at its decoded time, with its velocity, and none leaves early.

    Compared on the times the session scheduled (`due`), not on when the thread got the CPU: on a
    saturated machine a message can leave a few ms late, which moves it to the next 10 ms step, and
    one 0.1 s late would be dropped (drop_late, raised here). How late messages leave is a property
    of the machine's load; bench/live.py measures it, and the median is bounded here.
    """
    h = Harness(tiny_model(seed=3), codec, silence=0.1, seconds=1.5, turns=1, drop_late=60.0)
    turn = h.answer_once(live.phrase_messages(phrase_midi()))
    limit = 150
    ref = codec.decode(turn.answer_ids).instruments[0].notes
    expected = sorted((n.pitch, round(n.start * 100) - turn.first_step) for n in ref
                      if round(n.start * 100) - turn.first_step < limit)
    velocity = {(n.pitch, round(n.start * 100) - turn.first_step): n.velocity for n in ref}
    log = [s for s in h.session.scheduler.log if s.turn == 0]

    def step(s):
        return round((s.due - turn.origin) / vocab.STEP_SECONDS) - turn.first_step

    ons = [s for s in log if s.msg.type == "note_on" and s.msg.velocity > 0]
    assert expected and sorted((s.msg.note, step(s)) for s in ons) == expected
    assert all(s.msg.velocity == velocity[(s.msg.note, step(s))] for s in ons)
    sent = [m for _, m in h.out.messages() if m.type == "note_on" and m.velocity > 0]
    assert [m.note for m in sent] == [s.msg.note for s in ons]  # what the port got, in that order
    assert all(0 <= step(s) <= limit for s in log)
    assert all(s.sent >= s.due for s in log)  # never early: the scheduler spins up to the due time
    lateness = sorted(s.sent - s.due for s in log)
    assert lateness[len(lateness) // 2] < 0.02, lateness
    assert sorted((n.pitch, n.step) for n in turn.notes if n.kind == "on") == expected


def test_answer_writes_no_event_the_decoder_would_drop(codec):
    # A random tiny model left to itself strays (note-offs of silent keys, re-strikes); the live
    # sampler tracks what sounds, the player's held notes included, exactly as `amadeus generate`.
    from amadeus.music_stats import discarded_events

    h = Harness(tiny_model(seed=5), codec, silence=0.1, seconds=10.0, turns=1, lookahead=60.0)
    turn = h.generate_once(live.phrase_messages(phrase_midi()))
    ids = np.asarray(turn.prompt_ids + turn.answer_ids)
    counts = discarded_events(ids, count_from=len(turn.prompt_ids))
    assert sum(1 for i in turn.answer_ids if i < vocab.TIME_SHIFT) > 10   # notes were played
    assert counts["stray_note_off"] == counts["restrike"] == counts["capped"] == 0, counts


def test_answer_follows_the_playing_rules(codec):
    from amadeus.playing_rules import PlayingRules

    rules = PlayingRules(lowest="C4", highest="C5", max_polyphony=2)
    h = Harness(tiny_model(seed=5), codec, silence=0.1, seconds=10.0, turns=1, rules=rules, lookahead=60.0)
    turn = h.generate_once(live.phrase_messages(phrase_midi()))
    played = [i for i in turn.answer_ids if i < vocab.NOTE_OFF]
    assert played and all(60 <= i <= 72 for i in played)
    sounding = set()
    for i in turn.answer_ids:
        if i < vocab.NOTE_OFF:
            sounding.add(i)
        elif i < vocab.TIME_SHIFT:
            sounding.discard(i - vocab.NOTE_OFF)
        new = {p for p in sounding if 60 <= p <= 72}
        assert len(new) <= 2 or len(sounding) > len(new)   # the player's held notes count too

# --- stopping, recording, ports -----------------------------------------------------------------------

def test_stop_sends_all_notes_off(codec):
    h = Harness(tiny_model(seed=5), codec, silence=0.05, seconds=30.0)
    live.play_phrase(h.inp, live.phrase_messages(phrase_midi()), speed=None)
    h.wait(lambda: sum(m.type == "note_on" and m.velocity > 0 for _, m in h.out.messages()) >= 2)
    h.stop()
    msgs = [m for _, m in h.out.messages()]
    assert msgs[-2:] == [cc(123, 0), cc(64, 0)]
    balance = {}
    for m in msgs:
        if m.type == "note_on" and m.velocity:
            balance[m.note] = 1
        elif m.type == "note_off":
            balance[m.note] = 0
    assert not any(balance.values()), "a note was left sounding"
    assert h.session.turns[0].interrupted


def test_barge_in_stops_the_answer_and_starts_a_phrase(codec):
    h = Harness(tiny_model(seed=5), codec, silence=0.1, seconds=30.0)
    try:
        live.play_phrase(h.inp, live.phrase_messages(phrase_midi()), speed=None)
        h.wait(lambda: any(m.type == "note_on" and m.velocity for _, m in h.out.messages()))
        h.feed(on(50))
        h.wait(lambda: h.session.turns[0].interrupted and not h.session.responding)
        assert h.session.phrase.has_notes and 50 in h.session.phrase.keys
        h.feed(off(50))
        h.wait(lambda: len(h.session.turns) == 2 and h.session.turns[1].primed is not None)
    finally:
        h.stop()
    assert h.session.turns[1].prompt_ids[:1] == [vocab.VELOCITY + (80 - 1) // 4]


def player_track(take: mido.MidiFile) -> list[mido.Message]:
    return [m for m in take.tracks[0] if not m.is_meta]


def test_record_saves_each_take_as_one_two_track_file_wav_and_piano_roll(codec, tmp_path):
    h = Harness(tiny_model(seed=2), codec, record_dir=tmp_path / "rec", silence=0.05, seconds=1.0, turns=2)
    messages = live.phrase_messages(phrase_midi())
    h.play_turns(messages, 2)
    assert not h.thread.is_alive()  # run() ended: close() waited for the WAVs and piano rolls
    for i in (1, 2):
        take = mido.MidiFile(tmp_path / "rec" / f"take-{i:03d}.mid")
        turn = h.session.turns[i - 1]
        assert len(take.tracks) == 2 and take.tracks[1].name == "amadeus continuation"
        # The player's track holds their messages as they arrived: velocities, both pedal values, 120 bpm.
        played = player_track(take)
        assert [m.copy(time=0) for m in played] == [m.copy(time=0) for _, m in messages]
        assert [m.tempo for m in take.tracks[0] if m.type == "set_tempo"] == [500000]
        pm = pretty_midi.PrettyMIDI(str(tmp_path / "rec" / f"take-{i:03d}.mid"))
        player, answer = pm.instruments
        assert codec_mod.encode(phrase_midi()).tolist() == turn.prompt_ids
        ons = [n for n in h.session.played(turn) if n.kind == "on"]
        assert ons and len(answer.notes) == len(ons)
        assert min(n.start for n in answer.notes) >= max(n.end for n in player.notes)  # after the phrase
        for suffix in (".wav", ".png"):
            assert (tmp_path / "rec" / f"take-{i:03d}{suffix}").stat().st_size > 1000


def test_record_folder_that_cannot_be_written_fails_before_the_first_turn(codec, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    backend = MemoryBackend()
    for bad in (blocker, blocker / "takes"):
        with pytest.raises(UserError) as e:
            LiveSession(tiny_model(), codec, backend.open_output(None), LiveConfig(), record_dir=bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_a_take_that_cannot_be_written_is_kept_and_saved_later(codec, tmp_path):
    folder = tmp_path / "rec"
    h = Harness(tiny_model(seed=2), codec, record_dir=folder, silence=0.05, seconds=0.3, turns=2)
    (folder / "take-001.mid").mkdir()  # a real OSError: the atomic rename cannot replace a folder
    messages = live.phrase_messages(phrase_midi())
    live.play_phrase(h.inp, messages, speed=None)
    h.wait_turns(1)
    assert any("take 1 not saved yet" in line for line in h.lines)
    (folder / "take-001.mid").rmdir()
    h.play_turns(messages, 1)
    assert sorted(p.name for p in folder.glob("*.mid")) == ["take-001.mid", "take-002.mid"]
    assert not list(folder.glob(".*.tmp"))


def test_stop_during_a_phrase_keeps_it_as_a_take(codec, tmp_path):
    h = Harness(tiny_model(), codec, record_dir=tmp_path / "rec", silence=0.5, seconds=0.3)
    h.feed(cc(64, 90))
    h.feed(on(60, 33))
    h.feed(cc(64, 70))
    h.stop()
    take = mido.MidiFile(tmp_path / "rec" / "take-001.mid")
    assert [m.copy(time=0) for m in player_track(take)[:3]] == [cc(64, 90), on(60, 33), cc(64, 70)]
    assert [m.type for m in player_track(take)[3:]] == ["note_off", "control_change"]  # released at the stop
    assert any("phrase in progress is saved" in line for line in h.lines)


def test_list_ports_without_backend_says_none_and_exits_0(monkeypatch, capsys):
    class NoAlsa:
        def __init__(self, *a, **k):
            pass

        def get_input_names(self):
            raise OSError("MidiInAlsa::initialize: error creating ALSA sequencer client object.")

        get_output_names = get_input_names

    monkeypatch.setattr(mido, "Backend", NoAlsa)
    with pytest.raises(UserError) as e:
        MidoBackend().list_inputs()
    assert "\n" not in str(e.value) and "no MIDI backend" in str(e.value)
    from amadeus import cli

    cli.main(["live", "--list-ports"])  # returns: exit 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command leaves no handler behind
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("MIDI inputs: none (no MIDI backend") and out[1].startswith("MIDI outputs: none")


def test_list_ports_with_and_without_ports():
    assert "  memory in" in list_ports(MemoryBackend()).splitlines()

    class Empty(MemoryBackend):
        def list_inputs(self):
            return []

        list_outputs = list_inputs

    assert list_ports(Empty()).splitlines()[:2] == ["MIDI inputs: none", "MIDI outputs: none"]


def save_tiny_checkpoint(path, seed=0):
    import dataclasses

    from amadeus import checkpoint

    model = tiny_model(seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(path, {"format": checkpoint.FORMAT, "family": "performance_rnn", "precision": "fp32",
                           "config": dataclasses.asdict(model.config), "model": model.state_dict(),
                           "codec": {"flavour": "magenta"}})
    return path


def waltz_midi(path):
    """A 90 bpm 3/4 pedalled phrase at velocity 60, as a DAW would write it."""
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=90.0)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(3, 4, 0.0))
    piano = pretty_midi.Instrument(0)
    beat = 60 / 90
    for k, p in enumerate([60, 64, 67, 72, 67, 64]):
        piano.notes.append(pretty_midi.Note(60, p, k * beat, (k + 1) * beat))
    piano.control_changes += [pretty_midi.ControlChange(64, 127, 0.0), pretty_midi.ControlChange(64, 0, 5.9 * beat)]
    pm.instruments.append(piano)
    pm.write(str(path))


def test_cli_input_file_without_midi_or_sound_card(monkeypatch, tmp_path, capsys):
    """No MIDI service, no --out: the answer goes to the null port, said in one line, and the takes
    are recorded; the pipeline's checkpoint is found by default; the phrase file is kept untouched."""
    class NoMidi(MemoryBackend):
        def list_inputs(self):
            raise UserError("no MIDI backend: (none here)")

        list_outputs = list_inputs

    save_tiny_checkpoint(tmp_path / "save" / "performance_rnn.int8.sess", seed=4)
    waltz_midi(tmp_path / "waltz.mid")
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    live.add_arguments(parser)
    args = parser.parse_args(["--input-file", "waltz.mid", "--input-speed", "8", "--silence", "100",
                              "--seconds", "0.5", "--repeat", "2", "--seed", "1", "--no-render"])
    turns = live.run(args, backend=NoMidi())
    assert len(turns) == 2
    out = capsys.readouterr().out
    assert "answer: the null port (this machine has no MIDI output); takes saved in takes/" in out
    assert "checkpoint: save/performance_rnn.int8.sess (the pipeline's" in out
    assert "recorded 2 take(s) in takes" in out
    source = mido.MidiFile(tmp_path / "waltz.mid")
    for i in (1, 2):
        take = mido.MidiFile(tmp_path / "takes" / f"take-{i:03d}.mid")
        assert take.ticks_per_beat == source.ticks_per_beat
        assert [list(t) for t in take.tracks[:-1]] == [list(t) for t in source.tracks]  # untouched
        assert len(take.tracks) == len(source.tracks) + 1
        assert any(m.type == "note_on" for m in take.tracks[-1])


def test_cli_handover_controller_with_input_file(tmp_path, capsys):
    """--handover cc67 with a file: the file player presses the pedal after the phrase, and the CLI says
    what the model waits for; --out FILE.mid gets what was sent, all notes off last."""
    ck = save_tiny_checkpoint(tmp_path / "tiny.sess")
    phrase_midi(tmp_path / "phrase.mid")
    parser = argparse.ArgumentParser()
    live.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(ck), "--input-file", str(tmp_path / "phrase.mid"), "--out",
                              str(tmp_path / "answer.mid"), "--input-speed", "8", "--handover", "cc67",
                              "--seconds", "0.3"])
    assert len(live.run(args, backend=MemoryBackend())) == 1
    out = capsys.readouterr().out
    assert "when controller 67 is pressed" in out and f"answer: the file {tmp_path / 'answer.mid'}" in out
    assert ended_with_all_notes_off(tmp_path / "answer.mid")


def test_cli_rejects_bad_options(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    live.add_arguments(parser)
    assert "[--checkpoint FILE.sess]" in parser.format_usage()  # optional, and it is: the pipeline's is found
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no --checkpoint given and none of save/performance_rnn.int8.sess"):
        live.run(parser.parse_args([]), backend=MemoryBackend())
    with pytest.raises(UserError, match="not found"):
        live.run(parser.parse_args(["--checkpoint", "x", "--input-file", str(tmp_path / "no.mid")]),
                 backend=MemoryBackend())
    with pytest.raises(UserError, match="silence"):
        live.run(parser.parse_args(["--checkpoint", "x", "--silence", "0"]), backend=MemoryBackend())
    ck = save_tiny_checkpoint(tmp_path / "tiny.sess")
    phrase_midi(tmp_path / "phrase.mid")
    (tmp_path / "file").write_text("x")
    for flag in ("--record", "--out"):
        bad = str(tmp_path / "file" / ("sub" if flag == "--record" else "answer.mid"))
        with pytest.raises(UserError, match="cannot be written") as e:
            live.run(parser.parse_args(["--checkpoint", str(ck), "--input-file", str(tmp_path / "phrase.mid"),
                                        flag, bad]), backend=MemoryBackend())
        assert "\n" not in str(e.value)


# --- latency ------------------------------------------------------------------------------------------

def test_latency_and_timing_full_size_gru(codec):
    """The 3x512 GRU (random fp32 weights): hand-over -> first note and note timing, over 5 hand-overs.

    Generous bounds (the test machine is shared); bench/live.py reports the real figures.
    """
    model = tiny_model(hidden=512, layers=3)
    h = Harness(model, codec, silence=0.25, seconds=0.5, turns=5)
    h.play_turns(live.phrase_messages(phrase_midi()), 5)
    turns = h.session.turns
    assert len(turns) == 5
    latency = live.stats([t.latency for t in turns])
    timing = live.stats(h.session.timing_errors())
    # Medians: the tails measure the machine's load (a saturated 2-core CI box), not the code.
    assert latency["p50"] < 0.2, latency
    assert timing["p50"] < 0.01, timing


def start_cli(tmp_path, *extra):
    import subprocess
    import sys

    ck = save_tiny_checkpoint(tmp_path / "tiny.sess")
    phrase_midi(tmp_path / "phrase.mid")
    proc = subprocess.Popen([sys.executable, "-u", "-m", "amadeus.cli", "live", "--checkpoint", str(ck),
                             "--input-file", str(tmp_path / "phrase.mid"), "--out", str(tmp_path / "answer.mid"),
                             "--record", str(tmp_path / "takes"), "--no-render", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not lines or not lines[-1].startswith("playing"):  # printed once the session listens
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise AssertionError(f"the CLI ended early: {lines} {proc.stderr.read()}")
        lines.append(line)
    return proc


def ended_with_all_notes_off(path):
    sent = [m for m in mido.MidiFile(path).tracks[0] if not m.is_meta]
    sounding = set()
    for m in sent:
        if m.type == "note_on" and m.velocity:
            sounding.add(m.note)
        elif m.type in ("note_off", "note_on"):
            sounding.discard(m.note)
    return [m.copy(time=0) for m in sent[-2:]] == [cc(123, 0), cc(64, 0)] and not sounding


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_answer_ends_the_cli_cleanly(tmp_path, sig):
    """A real process and a real signal while the answer plays (the phrase takes 0.4 s, the answer 60 s):
    exit 0, all notes off last on the output, the interrupted take saved, nothing on stderr."""
    import signal

    proc = start_cli(tmp_path, "--input-speed", "4", "--silence", "100", "--seconds", "60")
    try:
        time.sleep(1.5)  # the answer starts about 0.55 s after the session listens
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0 and err == "", err
    name = "Ctrl-C" if sig == "SIGINT" else sig
    assert f"stopped by {name}: all notes off" in out and "interrupted" in out
    assert ended_with_all_notes_off(tmp_path / "answer.mid")
    take = mido.MidiFile(tmp_path / "takes" / "take-001.mid")
    assert any(m.type == "note_on" for m in take.tracks[-1])


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_a_phrase_keeps_the_phrase(tmp_path, sig):
    """The phrase is played at a quarter speed (6.8 s, no gap as long as the silence); a signal 0.5 s
    in keeps what was played."""
    import signal

    proc = start_cli(tmp_path, "--input-speed", "0.25", "--silence", "5000")
    try:
        time.sleep(0.5)
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0 and err == "", err
    assert "the phrase in progress is saved as" in out
    take = mido.MidiFile(tmp_path / "takes" / "take-001.mid")
    assert player_track(take)[0].copy(time=0) == on(60, 70)
    assert ended_with_all_notes_off(tmp_path / "answer.mid")


def test_int8_model_answers(codec):
    """An int8 model from amadeus.quant goes through the same session (any family, fp32 or int8)."""
    import copy

    from amadeus.quant import quantize_model

    model = copy.deepcopy(tiny_model(seed=6))
    quantize_model(model, None)  # dynamic activation ranges: no calibration data needed
    h = Harness(model, codec, silence=1.0, seconds=0.5, turns=1)
    turn = h.answer_once(live.phrase_messages(phrase_midi()))
    assert turn.warm_ids == len(turn.prompt_ids) and turn.answer_ids and turn.latency is not None
