"""Hostile MIDI input: thousands of seeded mutations of real MIDI files through the codec's reader and
encoder raise only codec.MidiError, in bounded time and memory; preprocess skips and counts bad files
and leaves no staging folder; `amadeus generate --prompt bad.mid` prints one line and exits 2."""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import mido
import pretty_midi
import pytest

from amadeus import codec
from amadeus.errors import UserError
from amadeus.preprocess import PreprocessConfig, preprocess

MUTATIONS = 3000          # seeded, so every run tries the same files
TOTAL_SECONDS = 18.0      # whole-loop bound on a loaded 2-core machine (measured 5.5 s, tracemalloc on)
FILE_SECONDS = 2.0        # no single file may take longer: a hang shows here
PEAK_BYTES = 64 << 20     # tracemalloc peak of one file: far above these small pieces' needs


def _pm_bytes(pm: pretty_midi.PrettyMIDI) -> bytes:
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def _two_hands() -> bytes:
    """Format 1, two instruments, a tempo, sustain pedal: what pretty_midi-written files look like."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=90)
    left, right = pretty_midi.Instrument(0), pretty_midi.Instrument(1)
    for i in range(40):
        left.notes.append(pretty_midi.Note(30 + i * 2, 40 + i % 30, i * 0.1, i * 0.1 + 0.3))
        right.notes.append(pretty_midi.Note(90, 70 + i % 10, i * 0.13, i * 0.13 + 0.05))
    left.control_changes = [pretty_midi.ControlChange(64, 127, 0.5), pretty_midi.ControlChange(64, 0, 2.5)]
    pm.instruments += [left, right]
    return _pm_bytes(pm)


def _format0_running_status() -> bytes:
    """Format 0 as keyboards record it: running status, note-on velocity 0 as note-off, tempo changes,
    and re-struck notes of one pitch (so the codec's pretty_midi path is fuzzed too)."""
    mf = mido.MidiFile(type=0, ticks_per_beat=480)
    track = mido.MidiTrack()
    mf.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=600000, time=0))
    for i in range(30):
        track.append(mido.Message("note_on", note=60, velocity=64, time=10))
        track.append(mido.Message("note_on", note=60 + i % 5, velocity=70, time=5))
        track.append(mido.Message("control_change", control=64, value=127 if i % 2 else 0, time=3))
        track.append(mido.Message("note_on", note=60, velocity=0, time=40))
        if i == 15:
            track.append(mido.MetaMessage("set_tempo", tempo=400000, time=0))
    buf = io.BytesIO()
    mf.save(file=buf)
    return buf.getvalue()


BASES = [_two_hands(), _format0_running_status()]
HUGE_DELTAS = [b"\x8f\xff\xff\x7f", b"\xff\xff\xff\xff\x7f", b"\xff" * 12]
GARBAGE_EVENTS = [b"\x00\xf0\xff\xff\xff\x7f", b"\x00\xff\x01\xff\xff\xff\x7f", b"\x00\x45\x45", b"\x00\x90",
                  b"\x00\xff\x51\x03\x00\x00\x00"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One hostile change: byte flips, a truncation, header fields, a lying chunk length, tempo 0/huge,
    huge delta times, running-status and meta garbage, random insertions."""
    d = bytearray(data)
    kind = rng.randrange(8) if len(d) >= 24 else 1
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            d[rng.randrange(len(d))] = rng.randrange(256)
    elif kind == 1:
        d = d[:rng.randrange(len(d) + 1)]
    elif kind == 2:   # format, ntracks or division: 0, small, SMPTE, extremes
        offset = rng.choice([8, 10, 12])
        d[offset:offset + 2] = struct.pack(">H", rng.choice([0, 1, 2, 3, 0x7FFF, 0x8000, 0xE728, 0xFFFF]))
    elif kind == 3:   # a chunk length that lies
        chunks = [i for i in range(len(d) - 8) if d[i:i + 4] in (b"MThd", b"MTrk")]
        if chunks:
            at = rng.choice(chunks)
            length = struct.unpack(">I", d[at + 4:at + 8])[0]
            lie = rng.choice([0, 1, 5, length - 1, length + 1, length * 2, 0x7FFFFFFF, 0xFFFFFFFF])
            d[at + 4:at + 8] = struct.pack(">I", lie & 0xFFFFFFFF)
    elif kind == 4:   # the first tempo: 0, 1 or the largest 24-bit value (microseconds per quarter)
        at = d.find(b"\xff\x51\x03")
        if at >= 0:
            d[at + 3:at + 6] = rng.choice([b"\0\0\0", b"\0\0\1", b"\xff\xff\xff"])
    elif kind == 5:
        at = d.find(b"MTrk") + 8 + rng.randrange(20)
        d[at:at] = rng.choice(HUGE_DELTAS)
    elif kind == 6:
        at = rng.randrange(22, len(d) + 1)
        d[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        at = rng.randrange(22, len(d) + 1)
        d[at:at] = rng.choice(GARBAGE_EVENTS)
    return bytes(d)


def mutations(seed: int = 14, count: int = MUTATIONS) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        d = mutate(rng, rng.choice(BASES))
        if rng.random() < 0.3:
            d = mutate(rng, d)
        out.append(d)
    return out


def test_mutation_list_is_seeded_and_varied():
    first, again = mutations(count=200), mutations(count=200)
    assert first == again
    assert len(set(first)) > 150 and all(d not in BASES for d in first[:20] if d)


def test_thousands_of_mutations_raise_only_midi_error_in_bounded_time_and_memory(tmp_path):
    path = tmp_path / "fuzz.mid"
    kinds: Counter[str] = Counter()
    slowest = 0.0
    started = time.perf_counter()
    tracemalloc.start()
    try:
        for i, data in enumerate(mutations()):
            path.write_bytes(data)
            tracemalloc.reset_peak()
            t = time.perf_counter()
            try:
                piece = codec.encode_path(path)
                assert piece.ids.dtype.kind == "i" and piece.notes > 0
                kinds["ok"] += 1
            except codec.MidiError as e:   # anything else escapes and fails the test, naming the input
                assert e.kind in codec.MIDI_ERROR_KINDS and e.reason and "\n" not in str(e)
                assert str(path) in str(e)
                kinds[e.kind] += 1
            slowest = max(slowest, time.perf_counter() - t)
            assert tracemalloc.get_traced_memory()[1] < PEAK_BYTES, f"mutation {i}: memory peak"
            assert time.perf_counter() - started < TOTAL_SECONDS, f"mutation {i}: over {TOTAL_SECONDS} s in all"
    finally:
        tracemalloc.stop()
    assert slowest < FILE_SECONDS
    assert sum(kinds.values()) == MUTATIONS
    # the mutations reach the checks they are meant for, and some files stay valid
    for kind in ("ok", "truncated", "corrupt", "bad-header", "bad-division", "bad-tempo"):
        assert kinds[kind] > 10, (kind, kinds)


def _header(data: bytes, fmt: int | None = None, tracks: int | None = None, division: int | None = None) -> bytes:
    d = bytearray(data)
    for offset, value in ((8, fmt), (10, tracks), (12, division)):
        if value is not None:
            d[offset:offset + 2] = struct.pack(">H", value)
    return bytes(d)


def _tempo(data: bytes, mspq: int) -> bytes:
    at = data.find(b"\xff\x51\x03")
    return data[:at + 3] + mspq.to_bytes(3, "big") + data[at + 6:]


@pytest.mark.parametrize(("data", "kind", "words"), [
    (_header(BASES[0], division=0), "bad-division", "0 ticks per quarter"),
    (_header(BASES[0], division=0xE728), "bad-division", "SMPTE"),
    (_header(BASES[0], fmt=7), "bad-header", "format 7"),
    (_header(BASES[0], tracks=0), "no-notes", "no tracks"),
    (_tempo(BASES[0], 0), "bad-tempo", "tempo of 0 microseconds"),
    (_tempo(BASES[1], 0), "bad-tempo", "tempo of 0 microseconds"),
    (BASES[0][:4] + b"\xff\xff\xff\xff" + BASES[0][8:], "bad-header", "header chunk length"),
    (BASES[0][:-3], "truncated", "truncated"),
], ids=["division-0", "smpte", "format-7", "no-tracks", "tempo-0", "tempo-0-fallback", "lying-header", "cut"])
def test_named_hostile_files_get_their_reason_everywhere(data, kind, words, tmp_path):
    path = tmp_path / "bad.mid"
    path.write_bytes(data)
    for read in (codec.encode_path, codec.read_midi):   # preprocess/generate, and live/render
        with pytest.raises(codec.MidiError, match=words) as err:
            read(path)
        assert err.value.kind == kind and isinstance(err.value, UserError)


def test_size_event_and_length_bounds(tmp_path, monkeypatch):
    path = tmp_path / "big.mid"
    path.write_bytes(BASES[0])
    assert codec.encode_path(path).notes == 80
    with pytest.raises(codec.MidiError, match="too large") as err:
        codec._read_bytes(path, max_bytes=100)
    assert err.value.kind == "too-large"
    # a sustain pedal event far after the last note bounds the piece too (it could hold notes there)
    pm = pretty_midi.PrettyMIDI(io.BytesIO(BASES[0]))
    pm.instruments[0].control_changes.append(pretty_midi.ControlChange(64, 127, 5000.0))
    pm.write(str(path))
    with pytest.raises(codec.MidiError, match="absurd length") as err:
        codec.encode_path(path, max_piece_seconds=3600)
    assert err.value.kind == "too-long"
    with pytest.raises(codec.MidiError, match="not a regular file"):
        codec.encode_path(tmp_path)
    path.write_bytes(BASES[0])
    monkeypatch.setattr(codec._parse_score, "__defaults__", (50,))   # MAX_EVENTS 50: the 80 notes exceed it
    with pytest.raises(codec.MidiError, match="too many events") as err:
        codec.encode_path(path)
    assert err.value.kind == "too-many-events"


# ---- preprocess: skipped and counted, nothing left behind ----
@pytest.fixture
def mixed_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "midi"
    folder.mkdir()
    for i in range(4):
        (folder / f"good{i}.mid").write_bytes(BASES[i % 2])
    (folder / "division0.mid").write_bytes(_header(BASES[0], division=0))
    (folder / "tempo0.mid").write_bytes(_tempo(BASES[0], 0))
    return folder


@pytest.mark.parametrize("workers", [1, 2])
def test_preprocess_skips_and_counts_bad_files_and_leaves_no_staging(mixed_dir, tmp_path, workers, capsys):
    out = tmp_path / "processed" / "src"
    metrics = preprocess(mixed_dir, out, PreprocessConfig(workers=workers), codec.CodecConfig())
    assert (metrics["files_ok"], metrics["files_skipped"]) == (4, 2)
    assert metrics["skipped_by_kind"] == {"bad-division": 1, "bad-tempo": 1}
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("skipped ")]
    assert sorted(lines) == ["skipped division0.mid: time division of 0 ticks per quarter note",
                             "skipped tempo0.mid: tempo of 0 microseconds per quarter note at tick 0"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {(s["source"], s["kind"]) for s in manifest["skipped"]} == {("division0.mid", "bad-division"),
                                                                       ("tempo0.mid", "bad-tempo")}
    assert sorted(p.name for p in out.parent.iterdir()) == ["src"]


def test_a_failing_run_and_a_killed_run_leave_no_staging(mixed_dir, tmp_path):
    out = tmp_path / "processed" / "src"
    out.parent.mkdir()
    stale = out.parent / ".src.staging"      # as a run killed mid-way leaves it
    (stale / "junk").mkdir(parents=True)
    (out.parent / ".src.old").mkdir()
    preprocess(mixed_dir, out, PreprocessConfig(workers=1), codec.CodecConfig())
    assert sorted(p.name for p in out.parent.iterdir()) == ["src"]
    # a failure after encoding (a split file that lacks a piece) removes the new staging folder
    (mixed_dir / "split.csv").write_text("path,split\ngood0.mid,train\n")
    with pytest.raises(UserError, match="no split for"):
        preprocess(mixed_dir, out, PreprocessConfig(workers=1), codec.CodecConfig())
    assert sorted(p.name for p in out.parent.iterdir()) == ["src"]
    # with only bad files, the staging folder goes as well
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mid").write_bytes(_tempo(BASES[0], 0))
    with pytest.raises(UserError, match="none of the 1 MIDI files"):
        preprocess(bad, out, PreprocessConfig(workers=1), codec.CodecConfig())
    assert sorted(p.name for p in out.parent.iterdir()) == ["src"]


def test_generate_cli_refuses_a_bad_prompt_in_one_line(tmp_path):
    import dataclasses

    import torch

    from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig

    net = PerformanceRNN(PerformanceRNNConfig(embed_dim=8, input_size=16, hidden_size=16, num_layers=1,
                                              dropout=0.0, controls=False))
    ckpt = tmp_path / "m.sess"
    torch.save({"format": "amadeus.sess/1", "family": net.family, "config": dataclasses.asdict(net.config),
                "precision": "fp32", "model": net.state_dict(), "optimizer": {}, "scheduler": {}, "step": 0,
                "rng": {}, "params": {}, "codec": {"flavour": "magenta"}}, ckpt)
    bad = tmp_path / "bad.mid"
    bad.write_bytes(_tempo(BASES[0], 0))
    run = subprocess.run([sys.executable, "-m", "amadeus.cli", "generate", "--checkpoint", str(ckpt),
                          "--prompt", str(bad), "--length", "10", "--out", str(tmp_path / "out.mid")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [f"error: {bad}: tempo of 0 microseconds per quarter note at tick 0"]
    assert not (tmp_path / "out.mid").exists()
