"""Live mode: whole sessions through in-memory MIDI ports (no sound card, no ALSA), with small random models."""

from __future__ import annotations

import argparse
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
    """A session running in a thread on in-memory ports."""

    def __init__(self, model, codec, record_dir=None, **cfg):
        cfg.setdefault("silence", 0.2)
        cfg.setdefault("seconds", 1.0)
        cfg.setdefault("seed", 0)
        self.backend = MemoryBackend()
        self.out = self.backend.open_output(None)
        self.session = LiveSession(model, codec, self.out, LiveConfig(**cfg), record_dir=record_dir)
        self.inp = self.backend.open_input(None, self.session.on_message)
        self.thread = threading.Thread(target=self.session.run, daemon=True)
        self.thread.start()

    def feed(self, msg, t=None):
        self.inp.feed(msg, t)

    def wait(self, cond, timeout=10.0):
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise AssertionError("timed out")
            time.sleep(0.005)

    def wait_turns(self, n, timeout=20.0):
        self.wait(lambda: len(self.session.turns) >= n and not self.session.responding, timeout)

    def play_turns(self, messages, turns):
        """Play the phrase `turns` times, each after the session listens again; wait for the session to end."""
        for _ in range(turns):
            self.wait(lambda: self.session.listening.is_set())
            n = len(self.session.turns)
            live.play_phrase(self.inp, messages, speed=None)
            self.wait_turns(n + 1)
        self.thread.join(timeout=5)

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
        self.thread.join(timeout=5)
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
        time.sleep(0.45)  # three times the silence, pedal still down
        assert not h.session.turns and not h.session.responding
        # Meanwhile the note-on (final: nothing played later can precede it) was primed.
        assert h.session.fed[-1] == vocab.NOTE_ON + 60
        released = time.monotonic()
        h.feed(cc(64, 0), released)
        h.wait_turns(1)
        turn = h.session.turns[0]
        assert turn.handover == pytest.approx(released + 0.15, abs=1e-9)
        assert turn.woke >= turn.handover
    finally:
        h.stop()


def test_cc67_hands_over_on_press_not_on_silence(codec):
    h = Harness(tiny_model(), codec, silence=0.1, seconds=0.3, handover="cc67", turns=1)
    try:
        h.feed(on(60))
        h.feed(off(60))
        time.sleep(0.4)
        assert not h.session.turns
        h.feed(cc(67, 0))  # release value: nothing
        time.sleep(0.05)
        assert not h.session.turns
        pressed = time.monotonic()
        h.feed(cc(67, 127), pressed)
        h.wait_turns(1)
        assert h.session.turns[0].handover == pressed
        assert vocab.NOTE_ON + 60 in h.session.turns[0].prompt_ids
    finally:
        h.stop()


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
    h = Harness(tiny_model(), codec, silence=0.3, seconds=0.3, turns=1, prime_interval=0.01)
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
    h = Harness(tiny_model(seed=3), codec, silence=0.1, seconds=1.5, turns=1)
    turn = h.answer_once(live.phrase_messages(phrase_midi()))
    limit = 150
    ref = codec.decode(turn.answer_ids).instruments[0].notes
    expected = sorted((n.pitch, round(n.start * 100) - turn.first_step) for n in ref
                      if round(n.start * 100) - turn.first_step < limit)
    sent = [(t, m) for t, m in h.out.messages() if m.type == "note_on" and m.velocity > 0]
    got = sorted((m.note, round((t - turn.origin) * 100) - turn.first_step) for t, m in sent)
    assert expected and got == expected
    velocity = {(n.pitch, round(n.start * 100) - turn.first_step): n.velocity for n in ref}
    assert all(m.velocity == velocity[(m.note, round((t - turn.origin) * 100) - turn.first_step)] for t, m in sent)
    # Every message left within a few ms of its decoded time (generous: the machine is shared).
    log = [s for s in h.session.scheduler.log if s.turn == 0]
    for s in log:
        step = round((s.due - turn.origin) / vocab.STEP_SECONDS) - turn.first_step
        assert 0 <= step <= limit
        assert s.sent - s.due < 0.05
    ons = [(n.pitch, n.step) for n in turn.notes if n.kind == "on"]
    assert sorted(ons) == expected



def test_answer_writes_no_event_the_decoder_would_drop(codec):
    # A random tiny model left to itself strays (note-offs of silent keys, re-strikes); the live
    # sampler tracks what sounds, the player's held notes included, exactly as `amadeus generate`.
    from amadeus.music_stats import discarded_events

    h = Harness(tiny_model(seed=5), codec, silence=0.1, seconds=10.0, turns=1)
    turn = h.answer_once(live.phrase_messages(phrase_midi()))
    ids = np.asarray(turn.prompt_ids + turn.answer_ids)
    counts = discarded_events(ids, count_from=len(turn.prompt_ids))
    assert sum(1 for i in turn.answer_ids if i < vocab.TIME_SHIFT) > 10   # notes were played
    assert counts["stray_note_off"] == counts["restrike"] == counts["capped"] == 0, counts


def test_answer_follows_the_playing_rules(codec):
    from amadeus.playing_rules import PlayingRules

    rules = PlayingRules(lowest="C4", highest="C5", max_polyphony=2)
    h = Harness(tiny_model(seed=5), codec, silence=0.1, seconds=10.0, turns=1, rules=rules)
    turn = h.answer_once(live.phrase_messages(phrase_midi()))
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
    h.wait(lambda: any(m.type == "note_on" and m.velocity for _, m in h.out.messages()))
    time.sleep(0.2)
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


def test_record_writes_phrase_and_answer(codec, tmp_path):
    h = Harness(tiny_model(seed=2), codec, record_dir=tmp_path / "rec", silence=0.05, seconds=1.0, turns=2)
    h.play_turns(live.phrase_messages(phrase_midi()), 2)
    for i in (1, 2):
        phrase = pretty_midi.PrettyMIDI(str(tmp_path / "rec" / f"turn-{i:03d}-phrase.mid"))
        answer = pretty_midi.PrettyMIDI(str(tmp_path / "rec" / f"turn-{i:03d}-response.mid"))
        assert len(phrase.instruments[0].notes) == 7
        assert [c.value for c in phrase.instruments[0].control_changes] == [100, 0]
        assert codec_mod.encode(phrase).tolist() == h.session.turns[i - 1].prompt_ids
        n_ons = sum(1 for n in h.session.turns[i - 1].notes if n.kind == "on")
        assert len(answer.instruments[0].notes) == n_ons


def test_list_ports_without_backend_is_one_clear_line(monkeypatch, capsys):
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

    with pytest.raises(SystemExit) as ex:
        cli.main(["live", "--list-ports"])
    assert ex.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no MIDI backend" in err


def test_list_ports_with_and_without_ports():
    assert "memory in" in list_ports(MemoryBackend())

    class Empty(MemoryBackend):
        def list_inputs(self):
            return []

        list_outputs = list_inputs

    with pytest.raises(UserError, match="no MIDI ports"):
        list_ports(Empty())


def test_cli_run_with_input_file(monkeypatch, tmp_path, capsys):
    from amadeus import generation

    model = tiny_model(seed=4)
    monkeypatch.setattr(generation, "load", lambda path, *a, **k: generation.Loaded(model, "performance_rnn",
                                                                                     "magenta", "fp32"))
    path = tmp_path / "phrase.mid"
    phrase_midi(path)
    parser = argparse.ArgumentParser()
    live.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", "x.sess", "--input-file", str(path), "--out", "null",
                              "--input-speed", "8", "--silence", "100", "--seconds", "0.5", "--repeat", "2",
                              "--record", str(tmp_path / "rec"), "--seed", "1"])
    turns = live.run(args, backend=MemoryBackend())
    assert len(turns) == 2
    assert (tmp_path / "rec" / "turn-002-response.mid").is_file()
    assert "turn 2:" in capsys.readouterr().out


def test_cli_rejects_bad_options(tmp_path):
    parser = argparse.ArgumentParser()
    live.add_arguments(parser)
    with pytest.raises(UserError, match="checkpoint"):
        live.run(parser.parse_args([]), backend=MemoryBackend())
    with pytest.raises(UserError, match="not found"):
        live.run(parser.parse_args(["--checkpoint", "x", "--input-file", str(tmp_path / "no.mid")]),
                 backend=MemoryBackend())
    with pytest.raises(UserError, match="silence"):
        live.run(parser.parse_args(["--checkpoint", "x", "--silence", "0"]), backend=MemoryBackend())


# --- latency ------------------------------------------------------------------------------------------

def test_latency_and_timing_full_size_gru(codec):
    """The 3x512 GRU (random fp32 weights): hand-over -> first note and note timing, over 5 hand-overs.

    Generous bounds (the test machine is shared); bench/live.py reports the real figures.
    """
    model = tiny_model(hidden=512, layers=3)
    h = Harness(model, codec, silence=0.25, seconds=1.0, turns=5)
    h.play_turns(live.phrase_messages(phrase_midi()), 5)
    turns = h.session.turns
    assert len(turns) == 5
    latency = live.stats([t.latency for t in turns])
    timing = live.stats(h.session.timing_errors())
    assert latency["p95"] < 0.2, latency
    assert timing["p99"] < 0.03, timing


def test_ctrl_c_ends_the_cli_cleanly(tmp_path):
    import dataclasses
    import signal
    import subprocess
    import sys

    from amadeus import checkpoint

    model = tiny_model()
    ck = tmp_path / "tiny.sess"
    checkpoint.save(ck, {"format": checkpoint.FORMAT, "family": "performance_rnn", "precision": "fp32",
                         "config": dataclasses.asdict(model.config), "model": model.state_dict(),
                         "codec": {"flavour": "magenta"}})
    phrase = tmp_path / "phrase.mid"
    phrase_midi(phrase)
    proc = subprocess.Popen([sys.executable, "-u", "-m", "amadeus.cli", "live", "--checkpoint", str(ck),
                             "--input-file", str(phrase), "--out", "null", "--silence", "100", "--seconds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "playing" in proc.stdout.readline()
        time.sleep(2.5)  # the phrase (1.7 s) and the silence are over: the answer is playing
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped: all notes off" in out and "interrupted" in out
    assert "Traceback" not in err


def test_int8_model_answers(codec):
    """An int8 model from amadeus.quant goes through the same session (any family, fp32 or int8)."""
    import copy

    from amadeus.quant import quantize_model

    model = copy.deepcopy(tiny_model(seed=6))
    quantize_model(model, None)  # dynamic activation ranges: no calibration data needed
    h = Harness(model, codec, silence=0.2, seconds=0.5, turns=1)
    turn = h.answer_once(live.phrase_messages(phrase_midi()))
    assert turn.warm_ids == len(turn.prompt_ids) and turn.answer_ids and turn.latency is not None
