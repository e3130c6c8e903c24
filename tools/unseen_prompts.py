"""Continue hand-made prompts the pipeline never tuned on, and measure the answers.

Chords, arpeggios and a melody over a pedalled bass, in keys with many sharps and flats, written
here with pretty_midi; each is continued by every pipeline checkpoint (masked sampler, release prior)
and measured with the evaluation's own measures. There is no real continuation to compare with, so
read the figures against the ranges of real continuations in output/metrics/evaluate.md.

    python tools/unseen_prompts.py            # after `dvc repro`
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pretty_midi

from amadeus.generation import continue_midi, load
from amadeus.keys import parse_key
from amadeus.music_stats import (
    capped_fraction,
    in_key_fraction,
    long_note_fraction,
    longest_silence,
    mean_polyphony,
)
from amadeus.pipeline import paths

SECONDS = 10.0


def _piece(notes: list[tuple[int, float, float, int]], pedal: list[tuple[float, int]] = ()) -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(v, p, s, e) for p, s, e, v in notes]
    piano.control_changes = [pretty_midi.ControlChange(64, value, t) for t, value in pedal]
    pm.instruments.append(piano)
    return pm


def chords_f_sharp_major() -> pretty_midi.PrettyMIDI:
    """I - IV - V - I in F# major, block chords, half a second each."""
    chords = [(54, 58, 61, 66), (59, 63, 66, 71), (61, 65, 68, 73), (54, 58, 61, 66)] * 2
    return _piece([(p, i * 0.6, i * 0.6 + 0.5, 70) for i, c in enumerate(chords) for p in c])


def arpeggios_e_flat_minor() -> pretty_midi.PrettyMIDI:
    """Rising Eb minor and Cb major arpeggios in sixteenths."""
    pattern = [51, 54, 58, 63, 66, 70, 47, 51, 54, 59, 63, 66]
    return _piece([(p, i * 0.125, i * 0.125 + 0.12, 60 + (i % 4) * 5) for i, p in enumerate(pattern * 3)])


def melody_with_pedal_d_flat_major() -> pretty_midi.PrettyMIDI:
    """A Db major melody over pedalled bass notes (the pedal lengthens them)."""
    melody = [68, 70, 72, 73, 72, 70, 68, 65, 66, 68, 70, 68]
    notes = [(p, i * 0.4, i * 0.4 + 0.35, 80) for i, p in enumerate(melody)]
    notes += [(49, 0.0, 0.2, 55), (46, 1.6, 1.8, 55), (44, 3.2, 3.4, 55)]
    pedal = [(0.0, 127), (1.55, 0), (1.6, 127), (3.15, 0), (3.2, 127), (4.8, 0)]
    return _piece(notes, pedal)


PROMPTS = {"chords F# major": (chords_f_sharp_major, "F# major"),
           "arpeggios Eb minor": (arpeggios_e_flat_minor, "Eb minor"),
           "melody with pedal Db major": (melody_with_pedal_d_flat_major, "Db major")}


def _notes(pm: pretty_midi.PrettyMIDI) -> np.ndarray:
    rows = [(n.start, n.end, n.pitch, n.velocity) for i in pm.instruments for n in i.notes]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def main(root: Path = Path(".")) -> None:
    print(f"{'checkpoint':34s} {'prompt':28s} {'notes':>5s} {'poly':>5s} {'>3 s':>6s} {'capped':>6s} "
          f"{'in key':>6s} {'silence':>7s}")
    for family in ("performance_rnn", "perceiver_ar"):
        for precision in ("fp32", "int8"):
            path = paths.checkpoint(family, precision, root)
            if not path.is_file():
                print(f"{path}: not found (run dvc repro)", file=sys.stderr)
                continue
            loaded = load(path)
            kwargs = {"num_latents": 1} if family == "perceiver_ar" else None
            for name, (make, key) in PROMPTS.items():
                out = continue_midi(loaded, make(), seconds=SECONDS, top_p=0.95, seed=0, model_kwargs=kwargs)
                notes = _notes(out["continuation"])
                if not len(notes):
                    print(f"{path.name:34s} {name:28s} no notes")
                    continue
                print(f"{path.name:34s} {name:28s} {len(notes):5d} {mean_polyphony(notes):5.2f} "
                      f"{100 * long_note_fraction(notes, 3.0):5.1f}% {100 * capped_fraction(notes, 5.0):5.1f}% "
                      f"{100 * in_key_fraction(notes, parse_key(key)):5.1f}% {longest_silence(notes):6.2f}s")


if __name__ == "__main__":
    main()
