"""Key names, scales and the Krumhansl-Schmuckler estimate (amadeus.keys)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amadeus.errors import UserError
from amadeus.keys import (
    KEYS,
    MAJOR_PROFILE,
    MINOR_PROFILE,
    Key,
    KeyNameError,
    estimate_key,
    estimate_key_from_histogram,
    key_correlations,
    parse_key,
)


@pytest.mark.parametrize(("text", "tonic", "mode"), [
    ("C", 0, "major"), ("c major", 0, "major"), ("F# major", 6, "major"), ("Bb minor", 10, "minor"),
    ("bb minor", 10, "minor"), ("B", 11, "major"), ("Bm", 11, "minor"), ("Am", 9, "minor"),
    ("  a  MINOR ", 9, "minor"), ("Ebmaj", 3, "major"), ("F♯ min", 6, "minor"), ("Cb", 11, "major"),
])
def test_parse_key_reads_the_usual_spellings(text, tonic, mode):
    assert parse_key(text) == Key(tonic, mode)


@pytest.mark.parametrize("text", ["", "H major", "C dorian", "C##", "major", "auto", "12"])
def test_parse_key_rejects_other_text_with_a_user_error(text):
    with pytest.raises(KeyNameError, match="F# major"):
        parse_key(text)
    assert issubclass(KeyNameError, UserError) and issubclass(KeyNameError, ValueError)


def test_every_key_name_parses_back_to_its_key():
    assert len(set(KEYS)) == 24
    assert [parse_key(k.name) for k in KEYS] == list(KEYS)
    assert Key(1, "major").name == "Db major" and Key(1, "minor").name == "C# minor"


def test_scales_major_ionian_minor_natural_plus_raised_seventh():
    assert Key(0, "major").pitch_classes == (0, 2, 4, 5, 7, 9, 11)
    assert Key(9, "minor").pitch_classes == (0, 2, 4, 5, 7, 8, 9, 11)  # A B C D E F G + G#
    assert Key(7, "major").pitch_classes == (0, 2, 4, 6, 7, 9, 11)  # G major has F#
    mask = Key(2, "minor").pitch_class_mask()  # D minor: D E F G A Bb C and C#
    assert np.flatnonzero(mask).tolist() == [0, 1, 2, 4, 5, 7, 9, 10]
    with pytest.raises(ValueError):
        Key(12, "major")
    with pytest.raises(ValueError):
        Key(0, "lydian")


def test_correlations_are_pearson_against_rotated_profiles():
    rng = np.random.default_rng(1)
    h = rng.random(12)
    r = key_correlations(h)
    for k, key in enumerate(KEYS):
        profile = MAJOR_PROFILE if key.mode == "major" else MINOR_PROFILE
        rotated = np.roll(profile, key.tonic)  # the tonic's rating moves to the tonic's pitch class
        assert r[k] == pytest.approx(np.corrcoef(h, rotated)[0, 1])
    assert key_correlations(np.ones(12)).tolist() == [0.0] * 24  # flat: no tonal information, no NaN


def test_a_profile_is_its_own_key_with_correlation_one():
    for key in KEYS:
        profile = MAJOR_PROFILE if key.mode == "major" else MINOR_PROFILE
        estimate = estimate_key_from_histogram(np.roll(profile, key.tonic))
        assert estimate.key == key and estimate.correlation == pytest.approx(1.0)


def scale_notes(tonic_midi, steps, tonic_seconds=2.0):
    """One note per scale step, 0.5 s each, then the tonic and fifth held (a cadence)."""
    notes = [(0.5 * i, 0.5 * i + 0.5, tonic_midi + s, 80) for i, s in enumerate(steps)]
    end = 0.5 * len(steps)
    notes += [(end, end + tonic_seconds, tonic_midi, 80), (end, end + tonic_seconds, tonic_midi + 7, 80)]
    return np.array(notes, dtype=np.float64)


def test_estimate_key_of_hand_made_scales():
    c_major = estimate_key(scale_notes(60, [0, 2, 4, 5, 7, 9, 11, 12]))
    assert c_major.key == Key(0, "major") and c_major.correlation > 0.8
    a_minor = estimate_key(scale_notes(57, [0, 2, 3, 5, 7, 8, 11, 12]))  # harmonic minor with G#
    assert a_minor.key == Key(9, "minor")
    assert estimate_key(scale_notes(66, [0, 2, 4, 5, 7, 9, 11, 12])).key == parse_key("F# major")


def test_estimate_key_weights_by_duration_and_needs_sounding_notes():
    # The same pitch classes; which one is held long decides between relative major and minor.
    notes = scale_notes(60, [0, 2, 4, 5, 7, 9, 11], tonic_seconds=0.1)
    a_held = np.vstack([notes, [[4.0, 10.0, 57, 80], [4.0, 10.0, 64, 80], [4.0, 10.0, 60, 80]]])
    assert estimate_key(a_held).key == Key(9, "minor")
    with pytest.raises(ValueError, match="positive length"):
        estimate_key(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="positive length"):
        estimate_key(np.array([[1.0, 1.0, 60, 80]]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 3.0), st.integers(21, 96)), min_size=1, max_size=30),
       st.integers(0, 11))
def test_transposing_moves_the_tonic_and_keeps_the_correlation(notes, shift):
    arr = np.array([(0.0, length, pitch, 64) for length, pitch in notes])
    moved = arr.copy()
    moved[:, 2] += shift
    a, b = estimate_key(arr), estimate_key(moved)
    assert b.correlation == pytest.approx(a.correlation, abs=1e-9)
    if np.isclose(np.sort(key_correlations_of(arr))[-2], a.correlation, atol=1e-9):
        return  # a tie: either key is right
    assert b.key == Key((a.key.tonic + shift) % 12, a.key.mode)


def key_correlations_of(notes):
    return key_correlations(np.bincount(notes[:, 2].astype(int) % 12, weights=notes[:, 1] - notes[:, 0],
                                        minlength=12))
