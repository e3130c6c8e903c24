"""Musical keys: names, scales and the Krumhansl-Schmuckler key estimate; the one place that defines them.

A key is a tonic pitch class (0 = C .. 11 = B) and a mode, "major" or "minor". Its scale, used to
lock or score notes as in or out of key, is

    major: the ionian scale            C D E F G A B           (7 pitch classes)
    minor: natural minor + raised 7th  A B C D E F G and G#    (8: natural and harmonic minor together)

because minor-key music uses the leading tone as often as the flat 7th; counting it out of key would
call most cadences in a minor key wrong.

The estimate is Krumhansl-Schmuckler key finding (C. L. Krumhansl, "Cognitive Foundations of Musical
Pitch", Oxford University Press 1990, ch. 4): correlate the piece's duration-weighted pitch-class
histogram with the major and minor key profiles rotated to each of the 12 tonics, and pick the key of
the highest Pearson correlation. The profiles are Krumhansl & Kessler's probe-tone ratings
("Tracing the dynamic changes in perceived tonal organization in a spatial representation of musical
keys", Psychological Review 89(4):334-368, 1982), as tabulated in Krumhansl 1990.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from amadeus.errors import UserError

MODES = ("major", "minor")
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)  # natural minor plus the harmonic minor's raised 7th

# Krumhansl & Kessler (1982) probe-tone profiles, index 0 = the tonic.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

# Conventional spellings of each tonic (the one with fewer accidentals in its key signature).
_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
_LETTERS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_MODE_WORDS = {"": "major", "major": "major", "maj": "major", "minor": "minor", "min": "minor", "m": "minor"}
_KEY_PATTERN = re.compile(r"([a-g])([#♯b♭]?)\s*([a-z]*)")


class KeyNameError(UserError, ValueError):
    """A key name that does not parse; the message says what a key name looks like."""


@dataclass(frozen=True)
class Key:
    tonic: int  # pitch class 0..11, 0 = C
    mode: str   # "major" or "minor"

    def __post_init__(self):
        if self.tonic not in range(12) or self.mode not in MODES:
            raise ValueError(f"a key is a tonic 0..11 and a mode in {MODES}, got {self.tonic}, {self.mode!r}")

    @property
    def name(self) -> str:
        """E.g. "F# major", "Bb minor"; `parse_key(key.name) == key`."""
        names = _MAJOR_NAMES if self.mode == "major" else _MINOR_NAMES
        return f"{names[self.tonic]} {self.mode}"

    @property
    def pitch_classes(self) -> tuple[int, ...]:
        """The scale's pitch classes, ascending from C (see the module docstring for minor)."""
        scale = MAJOR_SCALE if self.mode == "major" else MINOR_SCALE
        return tuple(sorted((self.tonic + step) % 12 for step in scale))

    def pitch_class_mask(self) -> np.ndarray:
        """bool [12]: True for the scale's pitch classes; `mask[pitches % 12]` tests MIDI pitches."""
        mask = np.zeros(12, dtype=bool)
        mask[list(self.pitch_classes)] = True
        return mask

    def __str__(self) -> str:
        return self.name


# All 24 keys in the order of `key_correlations`: the 12 major keys by tonic, then the 12 minor keys.
KEYS = tuple(Key(tonic, mode) for mode in MODES for tonic in range(12))


def parse_key(text: str | Key) -> Key:
    """A key from its name: "C" (major), "F# major", "Bb minor", "a minor", "Am", "Ebmaj" (case-insensitive).

    Raises KeyNameError (a UserError and a ValueError) naming the expected form.
    """
    if isinstance(text, Key):
        return text
    match = _KEY_PATTERN.fullmatch(str(text).strip().lower())
    if match is None or match.group(3) not in _MODE_WORDS:
        raise KeyNameError(f"unknown key {text!r}: write a tonic C..B with an optional # or b, then "
                           f"major or minor (e.g. 'F# major', 'Bb minor', 'C')")
    letter, accidental, mode = match.groups()
    return Key((_LETTERS[letter] + _ACCIDENTALS[accidental]) % 12, _MODE_WORDS[mode])


def _rotated_profiles() -> np.ndarray:
    """[24, 12]: row k is KEYS[k]'s profile, so entry [k, pc] is the rating of pitch class pc in that key."""
    offsets = (np.arange(12)[None, :] - np.arange(12)[:, None]) % 12  # [tonic, pc] -> degree above tonic
    return np.concatenate([MAJOR_PROFILE[offsets], MINOR_PROFILE[offsets]])


_PROFILES = _rotated_profiles()


def key_correlations(histogram: np.ndarray) -> np.ndarray:
    """Pearson correlation of a 12-bin pitch-class histogram with each key's profile, in KEYS order.

    A flat histogram (no tonal information at all) correlates 0 with every key rather than NaN.
    """
    h = np.asarray(histogram, dtype=np.float64).reshape(12)
    h = h - h.mean()
    p = _PROFILES - _PROFILES.mean(axis=1, keepdims=True)
    norm = np.sqrt((h ** 2).sum() * (p ** 2).sum(axis=1))
    return np.divide(p @ h, norm, out=np.zeros(len(KEYS)), where=norm > 0)


class KeyEstimate(NamedTuple):
    key: Key            # .tonic (pitch class) and .mode
    correlation: float  # Pearson r of the histogram with the key's profile, -1..1


def estimate_key_from_histogram(histogram: np.ndarray) -> KeyEstimate:
    """The key whose profile correlates best with `histogram` (ties: the first in KEYS order)."""
    r = key_correlations(histogram)
    best = int(np.argmax(r))
    return KeyEstimate(KEYS[best], float(r[best]))


def estimate_key(notes: np.ndarray) -> KeyEstimate:
    """Krumhansl-Schmuckler key of a note array [N, >=3] of (start, end, pitch, ...), durations as weights.

    Weighting by duration (as Krumhansl 1990 does with note durations) lets held tonic and dominant
    notes count more than passing notes. Raises ValueError when no note has a positive length.
    """
    notes = np.asarray(notes, dtype=np.float64)
    length = np.clip(notes[:, 1] - notes[:, 0], 0.0, None)
    if not (length > 0).any():
        raise ValueError("estimate_key needs at least one note of positive length")
    histogram = np.bincount(notes[:, 2].astype(np.int64) % 12, weights=length, minlength=12)
    return estimate_key_from_histogram(histogram)
