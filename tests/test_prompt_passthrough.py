"""The player's notes come back as played in `full`: a real MIDI file at 90 bpm in 3/4, velocities 60,
with the sustain pedal, continued by a tiny model (amadeus.prompt_passthrough, amadeus.generation)."""

from __future__ import annotations

from pathlib import Path

import mido
import pretty_midi
import pytest
import torch

from amadeus.generation import continue_midi
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
from amadeus.prompt_passthrough import TempoMap, join, last_sound_seconds, read_prompt

TPB = 480


def tiny_model() -> PerformanceRNN:
    torch.manual_seed(0)
    config = PerformanceRNNConfig(embed_dim=8, input_size=16, hidden_size=16, num_layers=1, dropout=0.0,
                                  controls=False)
    return PerformanceRNN(config).eval()


def phrase(path: Path, type_: int = 1, bars: int = 2) -> Path:
    """Quarter notes at 90 bpm in 3/4, velocity 60, the pedal down over each bar and up at its end."""
    meta = [mido.MetaMessage("track_name", name="tempo", time=0),
            mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90), time=0),
            mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0)]
    notes = [mido.Message("program_change", channel=0, program=0, time=0)]
    for bar in range(bars):
        notes.append(mido.Message("control_change", channel=0, control=64, value=127, time=0))
        for beat, pitch in enumerate((60, 64, 67)):
            notes.append(mido.Message("note_on", channel=0, note=pitch + bar, velocity=60, time=0))
            notes.append(mido.Message("note_off", channel=0, note=pitch + bar, velocity=0, time=TPB // 2))
            notes.append(mido.Message("note_on", channel=0, note=pitch + 12, velocity=60, time=0))
            notes.append(mido.Message("note_off", channel=0, note=pitch + 12, velocity=0,
                                      time=TPB // 2 - (10 if beat == 2 else 0)))
            if beat == 2:
                notes.append(mido.Message("control_change", channel=0, control=64, value=0, time=5))
                notes.append(mido.Message("note_on", channel=0, note=36, velocity=60, time=5))
                notes.append(mido.Message("note_off", channel=0, note=36, velocity=0, time=0))
    midi = mido.MidiFile(type=type_, ticks_per_beat=TPB)
    if type_ == 0:
        midi.tracks.append(mido.MidiTrack(meta + notes))
    else:
        midi.tracks.append(mido.MidiTrack(meta))
        midi.tracks.append(mido.MidiTrack(notes))
    for track in midi.tracks:
        track.append(mido.MetaMessage("end_of_track", time=0))
    midi.save(str(path))
    return path


def messages(track: mido.MidiTrack) -> list[dict]:
    return [m.dict() for m in track]


@pytest.mark.parametrize("type_", [0, 1])
def test_full_keeps_the_prompt_as_played_and_appends_the_continuation(tmp_path, type_):
    path = phrase(tmp_path / "phrase.mid", type_)
    original = mido.MidiFile(str(path))
    out = continue_midi(tiny_model(), path, max_new_tokens=300, seed=0, return_full=True)
    full: mido.MidiFile = out["full_midi"]
    # The prompt's tracks, message for message (velocities 60, pedal CCs, tempo, time signature).
    assert full.ticks_per_beat == TPB and full.type == 1
    assert len(full.tracks) == len(original.tracks) + 1
    for ours, theirs in zip(full.tracks, original.tracks, strict=False):
        assert messages(ours) == messages(theirs)
    pm = out["full"]
    assert pm.get_tempo_changes()[1].tolist() == pytest.approx([90.0])
    assert [(ts.numerator, ts.denominator) for ts in pm.time_signature_changes] == [(3, 4)]
    prompt_notes = pm.instruments[0].notes
    assert {n.velocity for n in prompt_notes} == {60}
    pedal = [cc.value for cc in pm.instruments[0].control_changes if cc.number == 64]
    assert pedal == [127, 0, 127, 0]
    # The continuation: its own track, every note after the prompt's last sound, as many notes as
    # the continuation alone has, and a 90 bpm tick grid (a quarter note is 2/3 s).
    end = last_sound_seconds(original)
    assert end == pytest.approx(2 * 3 * 2 / 3, abs=0.02)
    cont = pm.instruments[-1]
    assert cont.name == "amadeus continuation"
    assert cont.notes and min(n.start for n in cont.notes) >= end - 1e-6
    assert len(cont.notes) == sum(len(i.notes) for i in out["continuation"].instruments)
    first = min(out["continuation"].instruments[0].notes, key=lambda n: n.start)
    assert min(n.start for n in cont.notes) == pytest.approx(max(out["boundary_seconds"], end) + first.start,
                                                              abs=0.005)


def test_a_pretty_midi_prompt_keeps_its_velocities_and_pedal(tmp_path):
    pm = pretty_midi.PrettyMIDI(initial_tempo=90)
    piano = pretty_midi.Instrument(0)
    piano.notes = [pretty_midi.Note(60, 60 + i, i * 0.5, i * 0.5 + 0.3) for i in range(6)]
    piano.control_changes = [pretty_midi.ControlChange(64, 127, 0.0), pretty_midi.ControlChange(64, 0, 2.9)]
    pm.instruments.append(piano)
    out = continue_midi(tiny_model(), pm, max_new_tokens=100, seed=1, return_full=True)
    full = out["full"]
    assert [n.velocity for n in full.instruments[0].notes] == [60] * 6
    assert [cc.value for cc in full.instruments[0].control_changes] == [127, 0]
    assert full.get_tempo_changes()[1] == pytest.approx([90.0], abs=0.01)  # whole microseconds per beat


def test_a_cut_prompt_releases_held_keys_and_lifts_the_pedal(tmp_path):
    path = phrase(tmp_path / "phrase.mid")
    # 1.2 s: the second beat's high note (from 1.0 s) is down, and so is the pedal.
    out = continue_midi(tiny_model(), path, max_new_tokens=200, seed=0, return_full=True, prompt_seconds=1.2)
    full = out["full_midi"]
    tempo = TempoMap(full)
    cut = tempo.ticks(1.2)
    track = full.tracks[1]
    tick, sounding, pedal = 0, set(), 0
    for m in track:
        tick += m.time
        if m.type == "note_on" and m.velocity:
            assert tick < cut  # nothing of the prompt after the cut but releases
            sounding.add(m.note)
        elif m.type in ("note_off", "note_on"):
            sounding.discard(m.note)
        elif m.type == "control_change" and m.control == 64:
            assert m.value == 0 or tick < cut
            pedal = m.value
    assert not sounding and pedal == 0
    assert out["full"].instruments[-1].notes  # the continuation is there


def test_tempo_map_converts_both_ways_across_a_tempo_change():
    midi = mido.MidiFile(ticks_per_beat=100)
    midi.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=1_000_000, time=0),
                                       mido.MetaMessage("set_tempo", tempo=500_000, time=200)]))
    tempo = TempoMap(midi)
    assert tempo.seconds(200) == pytest.approx(2.0) and tempo.seconds(300) == pytest.approx(2.5)
    assert [tempo.ticks(s) for s in (0.0, 1.0, 2.0, 2.5)] == [0, 100, 200, 300]
    assert join(midi, pretty_midi.PrettyMIDI(), 0.0).tracks[0] == midi.tracks[0]


def test_unreadable_prompt_is_one_line(tmp_path):
    from amadeus.errors import UserError

    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd nope")
    with pytest.raises(UserError, match="bad.mid: not a readable MIDI file"):
        read_prompt(bad)
