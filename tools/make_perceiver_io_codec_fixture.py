"""Write tests/fixtures/codec/perceiver_io_reference.json: MIDI files and krasserm's `encode_midi` ids.

Runs in a side environment (perceiver-io declares Python < 3.11; its package __init__ pulls torch and
Lightning, which `midi_processor.py` itself does not need, so the module is loaded from its file):

    python3.11 -m venv /tmp/pio-codec-env
    /tmp/pio-codec-env/bin/pip install "numpy<2" pretty_midi==0.2.10 setuptools==80.9.0 tqdm
    /tmp/pio-codec-env/bin/pip install perceiver-io==0.11.0 --ignore-requires-python --no-deps
    /tmp/pio-codec-env/bin/python tools/make_perceiver_io_codec_fixture.py

Files without pedal must encode identically with amadeus' "perceiver-io" flavour. With pedal we fold
the sustain the way note_seq does instead of copying its sustain handling
(docs/vocabulary.md#perceiver-io-encoding), so the test asserts the specific differences (e.g. the
notes it drops after the last pedal release).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
from pathlib import Path

import perceiver
import pretty_midi

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "codec" / "perceiver_io_reference.json"


def load_midi_processor():
    path = Path(perceiver.__file__).parent / "data" / "audio" / "midi_processor.py"
    spec = importlib.util.spec_from_file_location("midi_processor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def piece(notes, pedal=(), instruments=1) -> bytes:
    """notes: (start, end, pitch, velocity[, instrument index]); pedal: (time, value) on instrument 0."""
    pm = pretty_midi.PrettyMIDI()
    insts = [pretty_midi.Instrument(program=0) for _ in range(instruments)]
    for n in notes:
        k = n[4] if len(n) > 4 else 0
        insts[k].notes.append(pretty_midi.Note(velocity=n[3], pitch=n[2], start=n[0], end=n[1]))
    for t, v in pedal:
        insts[0].control_changes.append(pretty_midi.ControlChange(64, v, t))
    pm.instruments.extend(insts)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def cases() -> dict[str, bytes]:
    out = {}
    out["chords_velocities"] = piece(
        [(0.0, 0.5, 60, 64), (0.0, 0.5, 64, 65), (0.0, 0.5, 67, 16),
         (0.5, 1.0, 62, 64), (0.5, 0.75, 65, 67),               # raw 16 -> bin 16: velocity event skipped
         (1.0, 1.003, 70, 3), (1.2, 1.21, 71, 4), (1.3, 1.4, 72, 127), (1.3, 1.45, 73, 124)])
    out["gaps_rounding"] = piece(
        [(0.0, 0.125, 60, 80), (0.125, 0.25, 61, 81), (1.25, 2.255, 62, 82), (3.0, 3.0049, 63, 83),
         (5.333, 5.6665, 64, 84), (7.0, 9.5, 65, 85), (9.505, 9.515, 66, 86), (12.0, 12.001, 67, 87)])
    out["two_instruments"] = piece(
        [(0.0, 0.3, 48, 40, 0), (0.1, 0.4, 52, 50, 1), (0.2, 0.5, 55, 60, 0), (0.2, 0.6, 55, 61, 1),
         (0.61, 0.9, 59, 70, 1)], instruments=2)
    # pedal: docs/vocabulary.md#perceiver-io-encoding's example (pedal 1-2 s, notes at 0.5/1.5/3/4 s),
    # a re-strike under the pedal, and a sustain with no later note
    out["pedal_drops_late_notes"] = piece(
        [(0.5, 0.7, 60, 70), (1.5, 1.6, 62, 70), (3.0, 3.2, 64, 70), (4.0, 4.2, 65, 70)],
        pedal=[(1.0, 127), (2.0, 0)])
    out["pedal_restrike"] = piece(
        [(0.1, 0.2, 60, 60), (0.3, 0.4, 60, 70), (0.35, 0.45, 64, 75), (1.2, 1.3, 67, 80)],
        pedal=[(0.0, 100), (0.9, 0), (1.0, 127), (1.5, 0)])
    return out


def main() -> None:
    mp = load_midi_processor()
    fixture = {
        "made_by": "tools/make_perceiver_io_codec_fixture.py",
        "perceiver_io": "0.11.0 perceiver/data/audio/midi_processor.py encode_midi",
        "pretty_midi": pretty_midi.__version__,
        "python": sys.version.split()[0],
        "cases": [],
    }
    for name, data in cases().items():
        pm = pretty_midi.PrettyMIDI(io.BytesIO(data))        # as its _encode_midi_file reads a file
        ids = [int(i) for i in mp.encode_midi(pm)]
        decoded = mp.decode_midi(ids)
        fixture["cases"].append({
            "name": name, "midi_base64": base64.b64encode(data).decode(), "ids": ids,
            "decoded_notes": [[round(n.start, 4), round(n.end, 4), n.pitch, n.velocity]
                              for n in decoded.instruments[0].notes],
        })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(fixture['cases'])} cases)")


if __name__ == "__main__":
    main()
