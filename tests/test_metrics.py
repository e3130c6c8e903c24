"""MGEval-style musical statistics (features, distances, KDE, overlap area, KL); the evaluate stage that
uses them: tests/test_pipeline_stages.py."""

import math

import numpy as np
import pretty_midi
import pytest

from amadeus import metrics as M


def piece(rng, seconds=60.0, rate=4.0, pitches=(48, 72), velocity=(50, 90), duration=(0.1, 0.6)):
    n = int(rate * seconds)
    start = np.sort(rng.uniform(0, seconds, n))
    return np.stack([start, start + rng.uniform(*duration, n), rng.integers(*pitches, n),
                     rng.integers(*velocity, n)], axis=1)


def segment_set(rng, pieces=4, **kw):
    return [s for _ in range(pieces) for s in M.segments(piece(rng, **kw), 10.0)]


# ------------------------------------------------------------------ features of one piece


def test_features_of_a_known_piece():
    # C4 for 1 s, then E4+G4 together for 0.5 s, then C5 for 0.5 s.
    notes = np.array([[0.0, 1.0, 60, 40], [1.0, 1.5, 64, 80], [1.0, 1.5, 67, 80], [2.0, 2.5, 72, 120]])
    pch = M.pitch_class_histogram(notes)
    assert pch[0] == pytest.approx(1.5 / 2.5) and pch[4] == pytest.approx(0.5 / 2.5)
    assert pch.sum() == pytest.approx(1.0)
    assert M.pitch_range(notes)[0] == 12
    assert M.notes_per_second(notes)[0] == pytest.approx(4 / 2.5)
    # Distinct onsets 0, 1, 2: two gaps of 1 s (the chord counts once).
    ioi = M.inter_onset_intervals(notes)
    assert ioi.sum() == pytest.approx(1.0)
    assert ioi[np.searchsorted(M.TIME_BINS, 1.0) - 1] == pytest.approx(1.0)
    assert M.durations(notes).sum() == pytest.approx(1.0)
    assert M.velocities(notes)[[2, 5, 7]] == pytest.approx([0.25, 0.5, 0.25])
    # Sounding frames: 1 s of one note, 0.5 s of two, 0.5 s of one -> (100 + 100 + 50) / 200.
    assert M.polyphony(notes)[0] == pytest.approx(250 / 200)


def test_note_array_reads_pretty_midi_and_skips_drums():
    pm = pretty_midi.PrettyMIDI()
    piano, drums = pretty_midi.Instrument(0), pretty_midi.Instrument(0, is_drum=True)
    piano.notes = [pretty_midi.Note(70, 64, 1.0, 2.0), pretty_midi.Note(80, 60, 0.0, 0.5)]
    drums.notes = [pretty_midi.Note(100, 36, 0.0, 0.1)]
    pm.instruments += [piano, drums]
    assert M.note_array(pm).tolist() == [[0.0, 0.5, 60, 80], [1.0, 2.0, 64, 70]]


def test_segments_cut_by_onset_shift_to_zero_and_drop_sparse_ones():
    notes = np.array([[t, t + 0.2, 60, 64] for t in [0.5, 1.0, 2.0, 3.0, 12.0, 21.0, 22.0, 23.0, 24.0]])
    segs = M.segments(notes, 10.0, min_notes=4)
    assert len(segs) == 2  # the 10-20 s segment has one note
    assert segs[1][:, 0].tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0])


def test_features_table_shapes():
    rng = np.random.default_rng(0)
    feats = M.features(segment_set(rng, pieces=1))
    assert set(feats) == set(M.FEATURES)
    n = len(feats["pitch_range"])
    assert feats["pitch_class_histogram"].shape == (n, 12)
    assert feats["polyphony"].shape == (n, 1)
    with pytest.raises(ValueError, match="at least one note"):
        M.features([np.zeros((0, 4))])


# ------------------------------------------------------------------ distances, KDE, OA, KL


def test_intra_and_inter_distances():
    a = np.array([[0.0], [1.0], [3.0]])
    assert sorted(M.intra_set_distances(a)) == [1, 1, 2, 2, 3, 3]  # leave-one-out: no self pairs
    assert sorted(M.inter_set_distances(a, np.array([[1.0]]))) == [0, 1, 2]
    assert M.intra_set_distances(a[:1]).tolist() == [0.0]  # one item: its distance to itself


def test_kde_integrates_to_one_and_matches_scott():
    sample = np.random.default_rng(1).normal(size=500)
    h = M.scott_bandwidth(sample)
    assert h == pytest.approx(np.std(sample, ddof=1) * 500 ** -0.2)
    x = np.linspace(-8, 8, 2001)
    assert np.trapezoid(M.GaussianKDE(sample, h).pdf(x), x) == pytest.approx(1.0, abs=1e-3)
    # Far out in the tail the log density stays finite (no underflow to -inf).
    assert np.isfinite(M.GaussianKDE(sample, h).log_pdf(np.array([1e3]))).all()


def test_compare_samples_known_cases():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)
    oa, kl = M.compare_samples(a, b)
    assert oa > 0.9 and kl < 0.05
    # Two unit normals 2 apart: true OA = 2 * Phi(-1) = 0.317, true KL = 2 nats. The KDE's tails are
    # thinner than a normal's beyond the sample (Gaussian bumps of width h, not 1), which raises KL a bit.
    oa, kl = M.compare_samples(a, rng.normal(2, 1, 2000))
    assert oa == pytest.approx(2 * 0.5 * math.erfc(1 / math.sqrt(2)), abs=0.05)
    assert 1.8 < kl < 3.0
    oa, kl = M.compare_samples(a, rng.normal(50, 1, 2000))
    assert oa < 1e-6 and math.isfinite(kl) and kl > 100


def test_degenerate_samples_give_numbers_not_nan():
    assert M.compare_samples(np.zeros(5), np.zeros(7)) == pytest.approx((1.0, 0.0), abs=1e-6)
    for p, q in [(np.zeros(1), np.zeros(1)), (np.zeros(4), np.ones(4)), (np.array([2.0]), np.arange(10.0))]:
        oa, kl = M.compare_samples(p, q)
        assert math.isfinite(oa) and math.isfinite(kl) and 0 <= oa <= 1 and kl >= 0
    oa, _ = M.compare_samples(np.zeros(4), np.ones(4) * 100)
    assert oa < 1e-6


def test_compare_sets_orders_same_similar_and_different_music():
    rng = np.random.default_rng(3)
    reference = M.features(segment_set(rng))
    similar = M.features(segment_set(rng))
    different = M.features(segment_set(rng, rate=15, pitches=(20, 110), velocity=(1, 128), duration=(0.01, 3)))
    same = M.compare_sets(reference, reference)
    sim = M.compare_sets(reference, similar)
    diff = M.compare_sets(reference, different)
    for name in M.FEATURES:
        assert same[name].overlap > 0.9 and same[name].kl < 0.1, name
        assert sim[name].overlap > 0.75, name
        assert diff[name].overlap < sim[name].overlap, name
        assert diff[name].kl > sim[name].kl, name
    assert np.mean([c.overlap for c in diff.values()]) < 0.3
    assert diff["notes_per_second"].candidate_mean > 3 * diff["notes_per_second"].reference_mean
    assert "reference_mean" not in diff["velocities"].as_dict()


def test_compare_sets_with_a_single_piece_has_no_nan():
    rng = np.random.default_rng(4)
    one = M.features(segment_set(rng)[:1])
    many = M.features(segment_set(rng))
    for result in (M.compare_sets(one, one), M.compare_sets(one, many), M.compare_sets(many, one)):
        for c in result.values():
            assert math.isfinite(c.overlap) and math.isfinite(c.kl)
    assert all(c.overlap == pytest.approx(1.0) for c in M.compare_sets(one, one).values())

