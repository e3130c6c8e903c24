"""Write tests/fixtures/codec/note_seq_reference.json: MIDI files and the ids note_seq gives them.

Runs in a side environment, never in the project's (note-seq must not become a dependency):

    python3.11 -m venv /tmp/codec-env && /tmp/codec-env/bin/pip install note-seq==0.0.5
    /tmp/codec-env/bin/python tools/make_note_seq_fixture.py [--check DIR_OF_MIDI_FILES]

The reference is Magenta's performance pipeline: midi_to_note_sequence (pretty_midi),
apply_sustain_control_changes, drum notes removed (amadeus excludes drum tracks),
quantize_note_sequence_absolute(ns, 100), Performance(num_velocity_bins=32, max_shift_steps=100),
PerformanceOneHotEncoding(num_velocity_bins=32). The MIDI files are written here with mido (tempo and
time-signature maps, same-tick events) and stored as base64 so the test reads the very same bytes.
With --check DIR it prints note_seq's ids for every MIDI file in DIR as JSON lines instead (used to
compare amadeus.codec with note_seq on the MAESTRO sample without committing those files).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import sys
from pathlib import Path

import mido
import note_seq
from note_seq import performance_lib, sequences_lib
from note_seq.performance_encoder_decoder import PerformanceOneHotEncoding

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "codec" / "note_seq_reference.json"


def note_seq_ids(midi_bytes: bytes) -> list[int]:
    ns = note_seq.midi_io.midi_to_note_sequence(midi_bytes)
    ns = sequences_lib.apply_sustain_control_changes(ns)
    kept = [n for n in ns.notes if not n.is_drum]
    del ns.notes[:]
    ns.notes.extend(kept)
    qns = sequences_lib.quantize_note_sequence_absolute(ns, 100)
    perf = performance_lib.Performance(qns, num_velocity_bins=32, max_shift_steps=100)
    enc = PerformanceOneHotEncoding(num_velocity_bins=32)
    return [enc.encode_event(e) for e in perf]


# ---- building MIDI files: tracks of (tick, message) ----
def on(p, v=64, c=0):
    return mido.Message("note_on", note=p, velocity=v, channel=c)


def off(p, c=0):
    return mido.Message("note_off", note=p, velocity=0, channel=c)


def cc(v, c=0, n=64):
    return mido.Message("control_change", control=n, value=v, channel=c)


def tempo(bpm):
    return mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))


def timesig(num, den):
    return mido.MetaMessage("time_signature", numerator=num, denominator=den)


def midi(tracks: list[list[tuple[int, object]]], tpq: int = 480) -> bytes:
    f = mido.MidiFile(ticks_per_beat=tpq, type=1 if len(tracks) > 1 else 0)
    for events in tracks:
        track = mido.MidiTrack()
        now = 0
        for tick, msg in sorted(events, key=lambda e: e[0]):   # stable: same-tick order kept
            track.append(msg.copy(time=tick - now))
            now = tick
        f.tracks.append(track)
    buf = io.BytesIO()
    f.save(file=buf)
    return buf.getvalue()


def note(t0, t1, p, v=64, c=0):
    return [(t0, on(p, v, c)), (t1, off(p, c))]


def cases() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    # chords, repeated notes, same-step on/off, a note re-struck right at its note-off
    ev = []
    for p in (60, 64, 67):
        ev += note(0, 480, p, 80)
    ev += note(480, 960, 60, 80) + note(480, 960, 72, 81)
    ev += note(960, 965, 62, 90) + note(965, 1200, 62, 90)       # re-struck inside one 10 ms step
    ev += note(1200, 1204, 65, 70)                                # shorter than 10 ms
    ev += note(1210, 1213, 66, 70)                                # shorter than 5 ms
    ev += note(1200, 1440, 48, 33) + note(1203, 1440, 50, 34)     # onsets in one step, unsorted pitch
    out["chords_repeats"] = midi([[(0, tempo(120))] + ev])
    # gaps of exactly 1 s, 2 s, 2.005 s and 3.337 s; velocities on bin edges (and multiples of 4)
    ev, t = [], 0
    for i, v in enumerate((1, 4, 5, 8, 9, 12, 63, 64, 65, 68, 100, 124, 125, 126, 127, 127, 2)):
        ev += note(t, t + 200, 40 + i, v)
        t += (960, 1920, 1925, 3204, 100, 7)[i % 6]
    out["gaps_velocities"] = midi([ev])
    # sustain pedal: on/off sequences, re-struck notes under the pedal, note held past the release,
    # same-time pedal and note events, a half-pedal value 63/64, a pedal never released
    ev = [(0, cc(127))]
    ev += note(0, 100, 60, 70) + note(200, 300, 60, 75)           # re-struck under pedal: first ends at 200
    ev += note(100, 2000, 64, 72)                                 # held past the release at 960
    ev += note(300, 400, 67, 74) + note(300, 350, 67, 90)         # same pitch, same onset under pedal
    ev += [(960, cc(0))] + note(960, 1000, 72, 60)                # note-off at the same tick as release
    ev += [(1100, cc(64))] + note(1100, 1150, 48, 50) + [(1150, cc(63))]
    ev += [(1300, cc(100)), (1300, cc(10))]                       # on and off at one time: off wins
    ev += note(1300, 1350, 50, 55)
    ev += [(1500, cc(90))] + note(1500, 1520, 52, 55) + note(1600, 1700, 52, 57) + note(1650, 1660, 53, 58)
    ev += [(1800, cc(120))]                                       # another "on" while down
    ev += note(1900, 1950, 55, 60) + [(2400, cc(0))] + note(2500, 2600, 57, 61)
    ev += [(2700, cc(127))] + note(2700, 2720, 59, 62) + [(3000, mido.MetaMessage("marker", text="x"))]
    out["sustain"] = midi([ev])
    # a note-on under pedal while the same pitch is still held (held note is cut), ending with the
    # pedal down and a later pedal event (sustained notes end at the last event of the piece)
    ev = [(0, cc(127))] + note(0, 500, 60, 64) + note(200, 300, 60, 96) + note(250, 260, 61, 20)
    ev += [(800, cc(127))]
    out["sustain_held_restrike"] = midi([ev])
    # two piano tracks (pedal on one only: sustain is per instrument) and a drum track
    t1 = [(0, timesig(3, 4)), (0, tempo(100))] + [(0, cc(127))] + note(0, 100, 60) + note(50, 120, 62) + \
        [(600, cc(0))]
    t2 = note(0, 100, 48, 40, c=1) + note(100, 200, 50, 41, c=1) + note(30, 90, 72, 99, c=1)
    t3 = note(0, 50, 36, 100, c=9) + note(240, 260, 38, 100, c=9) + [(700, cc(127, c=9))]
    out["multitrack_drums"] = midi([t1, t2, t3])
    # tempo and time-signature changes (times must be honoured in seconds)
    t0 = [(0, tempo(60)), (0, timesig(4, 4)), (480, tempo(150)), (960, timesig(7, 8)), (1000, tempo(33.3)),
          (1500, tempo(33.3)), (2000, tempo(200))]
    ev = []
    for i, t in enumerate(range(0, 3000, 97)):
        ev += note(t, t + 150, 50 + i % 30, 20 + 3 * i % 100)
    out["tempo_changes"] = midi([t0, ev])
    # 384 tpq at 120 bpm (MAESTRO's): 96 ticks = 0.125 s = 12.5 steps, exactly on a rounding edge
    ev = []
    for i in range(40):
        ev += note(48 * i, 48 * i + 96 + 13 * (i % 3), 60 + i % 12, 60 + i)
    out["tpq384_half_steps"] = midi([[(0, tempo(120))] + ev], tpq=384)
    # a seeded random piece: 2 piano tracks, pedal, tempo map, overlapping notes of one pitch
    rng = random.Random(7)
    tracks = [[(0, tempo(90)), (2000, tempo(130)), (5000, tempo(75))], [], []]
    for k in (1, 2):
        for _ in range(150):
            t = rng.randrange(0, 8000)
            tracks[k] += note(t, t + rng.choice((1, 3, 20, 200, 900, 2500)), rng.randrange(30, 90),
                              rng.randrange(1, 128), c=k - 1)
        for _ in range(12):
            tracks[k].append((rng.randrange(0, 8000), cc(rng.choice((0, 30, 63, 64, 127)), c=k - 1)))
    out["random_piece"] = midi(tracks, tpq=rng.choice((96, 220, 480)))
    for seed in range(100, 124):
        out[f"random_{seed}"] = random_piece(seed)
    return out


def random_piece(seed: int) -> bytes:
    """Dense small pieces that stress the pedal logic: 1-3 tracks (maybe drums), few pitches (so notes
    of one pitch meet under the pedal), zero- and one-tick notes, pedal values around 64, tempo map."""
    rng = random.Random(seed)
    tracks = [[(0, tempo(rng.choice((60, 90, 120, 133.3))))] +
              [(rng.randrange(1, 4000), tempo(rng.uniform(40, 200))) for _ in range(rng.randrange(0, 3))]]
    for k in range(rng.choice((1, 1, 2, 3))):
        ch = 9 if (k == 2 and rng.random() < 0.5) else k
        ev = []
        for _ in range(rng.randrange(1, 60)):
            t = rng.randrange(0, 4000)
            ev += note(t, t + rng.choice((0, 1, 2, 5, 20, 100, 400, 1500)),
                       rng.choice((60, 61, 62, rng.randrange(20, 100))), rng.randrange(1, 128), c=ch)
        ev += [(rng.randrange(0, 4500), cc(rng.choice((0, 10, 63, 64, 65, 127)), c=ch))
               for _ in range(rng.randrange(0, 20))]
        tracks.append(ev)
    return midi(tracks, tpq=rng.choice((96, 220, 384, 480, 1000)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=Path, help="print note_seq ids of every .mid in this folder instead")
    args = ap.parse_args()
    if args.check:
        for path in sorted(args.check.glob("*.mid")):
            print(json.dumps({"file": path.name, "ids": note_seq_ids(path.read_bytes())}))
        return
    fixture = {
        "made_by": "tools/make_note_seq_fixture.py",
        "note_seq": getattr(note_seq, "__version__", "0.0.5"),
        "python": sys.version.split()[0],
        "cases": [{"name": name, "midi_base64": base64.b64encode(data).decode(), "ids": note_seq_ids(data)}
                  for name, data in cases().items()],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(fixture['cases'])} cases)")


if __name__ == "__main__":
    main()
