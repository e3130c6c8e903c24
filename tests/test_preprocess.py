"""The preprocess library function: parallel == serial, broken files skipped and counted."""

from __future__ import annotations

import json

import numpy as np
import pretty_midi
import pytest

from amadeus import codec
from amadeus.errors import UserError
from amadeus.preprocess import PreprocessConfig, preprocess


def _write(path, pitches, start=0.0):
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0)
    for i, p in enumerate(pitches):
        t = start + 0.25 * i
        inst.notes.append(pretty_midi.Note(velocity=40 + i, pitch=p, start=t, end=t + 0.5))
    pm.instruments.append(inst)
    pm.write(str(path))


@pytest.fixture
def midi_dir(tmp_path):
    folder = tmp_path / "midi"
    (folder / "a").mkdir(parents=True)
    for i in range(6):
        _write(folder / ("a" if i % 2 else "") / f"p{i}.mid", [48 + i, 52 + i, 55 + i])
    (folder / "garbage.mid").write_bytes(b"this is not midi")
    (folder / "empty.midi").write_bytes(b"")
    return folder


def test_parallel_and_serial_give_identical_outputs(midi_dir, tmp_path):
    serial = preprocess(midi_dir, tmp_path / "s", PreprocessConfig(workers=1), codec.CodecConfig())
    parallel = preprocess(midi_dir, tmp_path / "p", PreprocessConfig(workers=2), codec.CodecConfig())
    for key in ("files_total", "files_ok", "files_skipped", "notes", "events"):
        assert serial[key] == parallel[key]
    assert (serial["files_total"], serial["files_ok"], serial["files_skipped"], serial["notes"]) == (8, 6, 2, 18)
    s_files = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    p_files = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}
    assert s_files == p_files
    manifest = json.loads(s_files["manifest.json"])
    assert {s["source"] for s in manifest["skipped"]} == {"garbage.mid", "empty.midi"}
    assert all(s["reason"] and "\n" not in s["reason"] for s in manifest["skipped"])
    piece = next(p for p in manifest["pieces"] if p["source"] == "a/p1.mid")
    ids = np.load(tmp_path / "s" / piece["file"], allow_pickle=False)
    assert ids.tolist() == codec.encode(midi_dir / "a/p1.mid").tolist()


def test_rerun_replaces_the_folder_without_stale_files(midi_dir, tmp_path):
    out = tmp_path / "out"
    preprocess(midi_dir, out, PreprocessConfig(workers=1), codec.CodecConfig())
    (midi_dir / "p0.mid").unlink()
    preprocess(midi_dir, out, PreprocessConfig(workers=1), codec.CodecConfig())
    assert not (out / "p0.data").exists() and (out / "p2.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["midi", "out"]  # no staging or old folder left


def test_no_usable_file_is_an_error_and_leaves_nothing(tmp_path):
    (tmp_path / "midi").mkdir()
    (tmp_path / "midi" / "bad.mid").write_bytes(b"MThd")
    with pytest.raises(UserError, match="none of the 1 MIDI files is usable"):
        preprocess(tmp_path / "midi", tmp_path / "out", PreprocessConfig(), codec.CodecConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["midi"]


def test_split_fractions_are_validated():
    with pytest.raises(UserError, match="preprocess.split"):
        PreprocessConfig(split=[0.5, 0.5, 0.5])
