"""Benchmark the preprocess encoder: amadeus.codec.encode_path against a pretty_midi + Python baseline.

    .venv/bin/python bench/preprocess.py [MIDI_DIR] [--repeat N] [--json OUT]

MIDI_DIR defaults to dataset/midi/maestro-sample (the 10 MAESTRO pieces of the default data; they are
also inside miditok-3.1.0's sdist under tests/MIDIs_one_track/). Both run in this one process, one
thread, side by side, on the same files:

- candidate: `encode_path` (symusic parser, numpy-vectorised sustain folding and encoding);
- baseline: how peer projects do it (djosix/Performance-RNN-PyTorch, krasserm/perceiver-io): parse
  with pretty_midi, then a plain per-note Python loop, here implementing the same Magenta semantics
  (note_seq's sustain walk, absolute 10 ms grid, event order, velocity bins). Its ids are checked to be
  identical to the candidate's, so both do the same work.

Prints notes/s for each, the ratio, and the machine; the machine is shared, so only the ratio of a
side-by-side run means much.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # pin threads before numpy
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pretty_midi  # noqa: E402
import symusic  # noqa: E402

from amadeus import codec  # noqa: E402
from amadeus.hardware import machine  # noqa: E402
from amadeus.pipeline import paths  # noqa: E402

DEFAULT_DIR = paths.midi_dir("maestro-sample")


# ---- baseline: pretty_midi + a per-note Python loop (note_seq semantics) ----
def baseline_encode(path: Path) -> list[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = pretty_midi.PrettyMIDI(str(path))
    notes, events = [], []
    for k, inst in enumerate(pm.instruments):
        if not inst.is_drum:
            for n in inst.notes:
                note = [n.start, n.end, n.pitch, n.velocity, k]
                notes.append(note)
                events.append((n.start, 2, note))
                events.append((n.end, 3, note))
        for c in inst.control_changes:
            if c.number == 64:
                events.append((c.time, 0 if c.value >= 64 else 1, k))
    # sustain, as note_seq's apply_sustain_control_changes walks it
    events.sort(key=lambda e: (e[0], e[1]))
    active: dict[int, list] = {}
    down: dict[int, bool] = {}
    removed = set()
    time_ = 0.0
    for time_, kind, x in events:
        if kind == 0:
            down[x] = True
        elif kind == 1:
            down[x] = False
            still = []
            for note in active.get(x, []):
                if note[1] < time_:
                    note[1] = time_
                else:
                    still.append(note)
            active[x] = still
        elif kind == 2:
            k = x[4]
            if down.get(k):
                still = []
                for note in active.get(k, []):
                    if note[2] == x[2]:
                        note[1] = time_
                        if note[0] == note[1]:
                            removed.add(id(note))
                    else:
                        still.append(note)
                active[k] = still
            active.setdefault(k, []).append(x)
        elif not down.get(x[4]) and x in active.get(x[4], []):
            active[x[4]].remove(x)
    for still in active.values():
        for note in still:
            note[1] = time_
    notes = [n for n in notes if id(n) not in removed]
    # quantize, order, emit
    notes.sort(key=lambda n: (n[0], n[2]))
    timed = []
    for i, (start, end, _pitch, _vel, _k) in enumerate(notes):
        q0, q1 = int(start * 100 + 0.5), int(end * 100 + 0.5)
        timed.append((q0, i, 0))
        timed.append((q1 if q1 > q0 else q0 + 1, i, 1))
    timed.sort()
    ids, step, vbin = [], 0, 0
    for s, i, is_off in timed:
        while s > step + 100:
            ids.append(355)
            step += 100
        if s > step:
            ids.append(255 + s - step)
            step = s
        pitch, velocity = notes[i][2], notes[i][3]
        if is_off:
            ids.append(128 + pitch)
        else:
            b = (velocity - 1) // 4 + 1
            if b != vbin:
                ids.append(355 + b)
                vbin = b
            ids.append(pitch)
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("midi_dir", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--repeat", type=int, default=5, help="candidate passes (the best is reported)")
    ap.add_argument("--baseline-repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    files = sorted(p for p in args.midi_dir.glob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        sys.exit(f"error: no .mid files in {args.midi_dir} (run the download stage, or pass a folder)")

    def candidate() -> tuple[int, list[np.ndarray]]:
        pieces = [codec.encode_path(f) for f in files]
        return sum(p.notes for p in pieces), [p.ids for p in pieces]

    def baseline() -> list[list[int]]:
        return [baseline_encode(f) for f in files]

    notes, ours = candidate()                  # warm-up (imports, page cache) and the reference ids
    theirs = baseline()
    same = all(a.tolist() == b for a, b in zip(ours, theirs, strict=True))
    cand_times, base_times, cand_cpu, base_cpu = [], [], [], []
    for r in range(max(args.repeat, args.baseline_repeat)):   # interleaved, so load hits both alike
        for todo, fn, wall, cpu in ((args.repeat, candidate, cand_times, cand_cpu),
                                    (args.baseline_repeat, baseline, base_times, base_cpu)):
            if r < todo:
                t, c = time.perf_counter(), time.process_time()
                fn()
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
    cand, base = min(cand_times), min(base_times)
    events = sum(len(i) for i in ours)
    result = {
        "files": len(files), "notes": notes, "events": events,
        "candidate_seconds": cand, "candidate_notes_per_second": notes / cand,
        "candidate_median_seconds": statistics.median(cand_times),
        "baseline_seconds": base, "baseline_notes_per_second": notes / base,
        "ratio": base / cand, "identical_ids": same,
        "candidate_cpu_seconds": min(cand_cpu), "baseline_cpu_seconds": min(base_cpu),
        "cpu_ratio": min(base_cpu) / min(cand_cpu),
        "machine": f"{machine()}, {os.cpu_count()} logical CPUs", "threads": 1, "load_average": os.getloadavg()[0],
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "symusic": getattr(symusic, "__version__", "?"), "pretty_midi": pretty_midi.__version__},
    }
    print(f"machine: {result['machine']}; 1 process, 1 thread; load average {result['load_average']:.2f}")
    print(f"data: {args.midi_dir}: {len(files)} files, {notes:,} notes, {events:,} events")
    print(f"amadeus.codec.encode_path     : {cand * 1000:8.1f} ms  {notes / cand:12,.0f} notes/s  "
          f"(best of {len(cand_times)}, median {statistics.median(cand_times) * 1000:.1f} ms)")
    print(f"pretty_midi + Python loop     : {base * 1000:8.1f} ms  {notes / base:12,.0f} notes/s  "
          f"(best of {len(base_times)})")
    print(f"ratio: {base / cand:.1f}x wall, {min(base_cpu) / min(cand_cpu):.1f}x CPU time "
          f"({min(cand_cpu) * 1000:.1f} vs {min(base_cpu) * 1000:.1f} ms)   identical ids: {same}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        sys.exit("error: the baseline and amadeus.codec disagree")


if __name__ == "__main__":
    main()
