"""MIDI-level generation: time bookkeeping, continue_midi and the CLI function (the generate stage:
tests/test_pipeline_stages.py)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch

from amadeus import codec
from amadeus.errors import UserError
from amadeus.generation import continue_midi
from amadeus.keys import Key
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
from amadeus.pipeline import paths
from amadeus.playing_rules import PlayingRules
from amadeus.vocab import cut_seconds, event_seconds, strip_pad

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(seed: int = 0) -> PerformanceRNN:
    torch.manual_seed(seed)
    config = PerformanceRNNConfig(embed_dim=8, input_size=16, hidden_size=16, num_layers=1, dropout=0.0,
                                  controls=False)
    return PerformanceRNN(config).eval()


def prompt_midi(seconds: float = 3.0) -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    t = 0.0
    pitch = 60
    while t < seconds - 0.3:
        piano.notes.append(pretty_midi.Note(80, pitch, t, t + 0.25))
        t += 0.3
        pitch = 60 + (pitch - 57) % 12
    pm.instruments.append(piano)
    return pm


# --- time bookkeeping -----------------------------------------------------------------------------

def test_event_seconds_sums_time_shifts_only():
    assert event_seconds([60, 355, 188, 256, 270, 388, 370]) == pytest.approx(1.0 + 0.01 + 0.15)
    assert event_seconds([]) == 0.0


def test_cut_seconds_shortens_the_crossing_shift():
    ids = np.array([60, 305, 188, 62, 355, 190, 64])  # 0.5 s, then 1 s
    cut = cut_seconds(ids, 1.0)
    assert cut.tolist() == [60, 305, 188, 62, 305]  # the 1 s shift becomes 0.5 s, ending on the cut
    assert event_seconds(cut) == pytest.approx(1.0)
    assert cut_seconds(ids, 0.5).tolist() == [60, 305]
    assert cut_seconds(ids, 10.0).tolist() == ids.tolist()
    assert cut_seconds(np.array([], dtype=np.int64), 1.0).size == 0


def test_strip_pad():
    assert strip_pad(np.array([1, 388, 2, 388])).tolist() == [1, 2]


# --- continue_midi --------------------------------------------------------------------------------

def test_continue_midi_puts_the_continuation_after_the_prompt():
    prompt = prompt_midi(3.0)
    out = continue_midi(tiny_model(), prompt, max_new_tokens=300, seed=0, top_p=0.95, return_full=True)
    cont, full = out["continuation"], out["full"]
    assert isinstance(cont, pretty_midi.PrettyMIDI) and isinstance(full, pretty_midi.PrettyMIDI)
    boundary = out["boundary_seconds"]
    assert boundary == pytest.approx(event_seconds(codec.encode(prompt)))
    assert out["tokens"] == len(out["ids"]) == 300
    cont_notes = cont.instruments[0].notes
    # the prompt's own notes, then the continuation's track (amadeus.prompt_passthrough)
    full_notes = sorted((n for inst in full.instruments for n in inst.notes), key=lambda n: n.start)
    assert cont_notes, "a random model still plays notes in 300 events"
    # the prompt's notes come first, unchanged (to the 10 ms grid); then the continuation's, shifted
    prompt_starts = [round(n.start, 2) for n in prompt.instruments[0].notes]
    assert [round(n.start, 2) for n in full_notes[:len(prompt_starts)]] == prompt_starts
    later = sorted(round(n.start - boundary, 2) for n in full_notes if n.start >= boundary - 1e-6)
    assert later[:len(cont_notes)] == sorted(round(n.start, 2) for n in cont_notes)[:len(later)]
    assert max(n.start for n in full_notes) > boundary


def test_continue_midi_is_seeded_and_stops_at_seconds(tmp_path):
    path = tmp_path / "prompt.mid"
    prompt_midi(2.0).write(str(path))
    a = continue_midi(tiny_model(), path, max_new_tokens=2000, seconds=4.0, seed=3)
    b = continue_midi(tiny_model(), path, max_new_tokens=2000, seconds=4.0, seed=3)
    assert np.array_equal(a["ids"], b["ids"])
    assert 4.0 <= a["seconds"] < 5.0  # stops on the shift that reaches 4 s (at most 1 s per shift)
    assert event_seconds(a["ids"][:-1]) < 4.0
    assert a["continuation"].get_end_time() <= a["seconds"] + 5.0


def test_continue_midi_from_nothing_and_prompt_cut():
    out = continue_midi(tiny_model(), None, max_new_tokens=50, seed=1)
    assert out["boundary_seconds"] == 0.0 and out["prompt_ids"].size == 0 and "full" not in out
    cut = continue_midi(tiny_model(), prompt_midi(6.0), max_new_tokens=5, prompt_seconds=2.0, seed=1)
    assert cut["boundary_seconds"] == pytest.approx(2.0)
    with pytest.raises(UserError, match="not found"):
        continue_midi(tiny_model(), "/nonexistent/prompt.mid", max_new_tokens=5)
    with pytest.raises(UserError, match="temperature"):
        continue_midi(tiny_model(), None, max_new_tokens=5, temperature=0.0)


def test_continue_midi_returns_wav_bytes_of_the_full_piece():
    pytest.importorskip("fluidsynth")
    out = continue_midi(tiny_model(), prompt_midi(1.0), max_new_tokens=30, seed=0, render_wav=True,
                        return_full=True)
    wav = out["wav"]
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    seconds = (len(wav) - 44) / (44100 * 2 * 2)  # 16-bit stereo after a 44-byte header
    assert seconds == pytest.approx(out["full"].get_end_time() + 1.0, abs=0.05)  # + the render tail


def test_continue_midi_greedy_and_beam():
    greedy = continue_midi(tiny_model(), prompt_midi(), max_new_tokens=20, do_sample=False)
    again = continue_midi(tiny_model(), prompt_midi(), max_new_tokens=20, do_sample=False, seed=99)
    assert np.array_equal(greedy["ids"], again["ids"])
    beam = continue_midi(tiny_model(), prompt_midi(), max_new_tokens=8, do_sample=False, num_beams=3)
    assert beam["tokens"] == 8


def scale_midi(seconds: float = 4.0) -> pretty_midi.PrettyMIDI:
    """C major scales, up and down."""
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    scale = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62]
    for i, t in enumerate(np.arange(0.0, seconds - 0.25, 0.25)):
        piano.notes.append(pretty_midi.Note(80, scale[i % len(scale)], t, t + 0.2 + 0.3 * (i % 7 == 0)))
    pm.instruments.append(piano)
    return pm


def test_continue_midi_samples_within_the_rules_and_reports_the_key():
    prompt = scale_midi(4.0)
    rules = PlayingRules(key="auto", lowest="C3", highest="C6", max_polyphony=2, velocity_low=50, velocity_high=90)
    out = continue_midi(tiny_model(), prompt, seconds=6.0, seed=0, rules=rules, return_full=True)
    assert out["key"] == "C major"
    ons = out["ids"][out["ids"] < 128]
    assert len(ons) and (ons >= 48).all() and (ons <= 84).all()
    assert Key(0, "major").pitch_class_mask()[ons % 12].all()
    notes = out["continuation"].instruments[0].notes
    assert all(50 <= n.velocity <= 90 for n in notes)
    assert out["discarded"]["total"] == out["discarded"]["zero_length"] == 0  # ended on a time shift


def test_continue_midi_by_default_discards_nothing_and_raw_sampling_does():
    masked = continue_midi(tiny_model(), prompt_midi(3.0), max_new_tokens=1500, seed=0)
    raw = continue_midi(tiny_model(), prompt_midi(3.0), max_new_tokens=1500, seed=0, rules=None)
    ids = masked["ids"]
    last_shift = np.flatnonzero((ids >= 256) & (ids < 356))[-1]
    struck_at_the_end = int((ids[last_shift + 1:] < 128).sum())  # no time left to sound: decode drops them
    assert masked["discarded"]["total"] == masked["discarded"]["zero_length"] == struck_at_the_end
    assert raw["discarded"]["total"] > 100 and raw["discarded"]["stray_note_off"] > 0


def test_seconds_win_over_the_default_event_cap_and_stopping_short_is_said():
    out = continue_midi(tiny_model(), None, seconds=15.0, seed=2)  # more than 1000 events may be needed
    assert out["seconds"] >= 15.0 and out["warnings"] == [] or all("stopped" not in w for w in out["warnings"])
    short = continue_midi(tiny_model(), None, seconds=30.0, max_new_tokens=40, seed=2)
    assert short["seconds"] < 30.0
    assert any("stopped at" in w and "max_new_tokens=40" in w for w in short["warnings"])


def test_auto_key_without_prompt_notes_is_a_warning():
    out = continue_midi(tiny_model(), None, max_new_tokens=30, seed=0, rules=PlayingRules(key="auto"))
    assert out["key"] is None and any("key auto" in w for w in out["warnings"])


# --- checkpoints: the CLI function and the stage --------------------------------------------------

def save_checkpoint(path: Path, net: PerformanceRNN, **extra) -> None:
    """A .sess as the contract describes it (docs/contracts.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "amadeus.sess/1", "family": net.family, "config": dataclasses.asdict(net.config),
                "precision": "fp32", "model": net.state_dict(), "optimizer": {}, "scheduler": {},
                "step": 0, "rng": {}, "params": {}, "codec": {"flavour": "magenta"}, **extra}, path)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """save/performance_rnn.sess and its int8 twin (dynamic ranges) in tmp_path."""
    pytest.importorskip("amadeus.checkpoint")
    path = paths.checkpoint("performance_rnn", root=tmp_path)
    save_checkpoint(path, tiny_model())
    quant = pytest.importorskip("amadeus.quant")
    q = copy.deepcopy(tiny_model())
    info = quant.quantize_model(q, None)
    save_checkpoint(paths.checkpoint("performance_rnn", "int8", tmp_path), tiny_model(), precision="int8",
                    model=q.state_dict(), quant=info)
    return path


def test_generate_cli_writes_midi_and_png(tmp_path, checkpoint, capsys):
    from amadeus.cli import main

    prompt = tmp_path / "in.mid"
    prompt_midi().write(str(prompt))
    out, full, png = tmp_path / "out.mid", tmp_path / "full.mid", tmp_path / "roll.png"
    main(["generate", "--checkpoint", str(checkpoint), "--prompt", str(prompt), "--length", "200",
          "--top-p", "0.9", "--seed", "0", "--out", str(out), "--full", str(full), "--png", str(png)])
    assert pretty_midi.PrettyMIDI(str(out)).instruments[0].notes
    assert pretty_midi.PrettyMIDI(str(full)).get_end_time() > pretty_midi.PrettyMIDI(str(out)).get_end_time()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "200 events" in capsys.readouterr().out


def test_generate_cli_rule_flags_and_their_errors(tmp_path, checkpoint, capsys):
    from amadeus.cli import main

    prompt = tmp_path / "in.mid"
    scale_midi().write(str(prompt))
    out = tmp_path / "out.mid"
    main(["generate", "--checkpoint", str(checkpoint), "--prompt", str(prompt), "--seconds", "3", "--seed", "0",
          "--key", "auto", "--lowest", "C3", "--highest", "72", "--velocity-range", "40-100", "--max-polyphony",
          "3", "--max-silence", "1", "--max-note-seconds", "2", "--out", str(out)])
    printed = capsys.readouterr()
    assert "in C major (estimated from the prompt)" in printed.out
    notes = pretty_midi.PrettyMIDI(str(out)).instruments[0].notes
    assert notes and all(48 <= n.pitch <= 72 and 40 <= n.velocity <= 100 and n.end - n.start <= 2.0 + 1e-6
                         for n in notes)
    for flags, flag in ((["--key", "H major"], "--key"), (["--velocity-range", "loud"], "--velocity-range"),
                        (["--velocity-range", "90-40"], "--velocity-range"), (["--lowest", "Q1"], "--lowest"),
                        (["--max-polyphony", "0"], "--max-polyphony"), (["--key-strength", "x"], "--key-strength"),
                        (["--controls", "maybe"], "--controls"), (["--max-silence", "-1"], "--max-silence")):
        with pytest.raises(SystemExit) as exit_:
            main(["generate", "--checkpoint", str(checkpoint), "--length", "5", "--out", str(out), *flags])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flag}: ") and "\n" not in err and "allowed" in err


def test_generate_cli_prints_warnings_to_stderr(tmp_path, checkpoint, capsys):
    from amadeus.cli import main

    main(["generate", "--checkpoint", str(checkpoint), "--seconds", "30", "--length", "20", "--seed", "0",
          "--out", str(tmp_path / "out.mid")])
    err = capsys.readouterr().err
    assert "warning: the continuation stopped at" in err and "--length" in err

