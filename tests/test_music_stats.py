"""Musical measures of one performance, the bootstrap interval, shared runs and NLL per event class."""

import functools
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amadeus import codec, metrics, vocab
from amadeus import music_stats as S
from amadeus.keys import Key
from amadeus.vocab import NOTE_OFF, NOTE_ON, PAD_ID, SHIFT_1S, TIME_SHIFT, VELOCITY, VOCAB_SIZE, shift_id


def notes(*rows):
    """(start, end, pitch) rows -> a note array with velocity 80."""
    return np.array([(s, e, p, 80) for s, e, p in rows], dtype=np.float64).reshape(-1, 4)


# A 10 ms-grid note list: (onset step, length in steps, pitch).
grid_notes = st.lists(st.tuples(st.integers(0, 300), st.integers(1, 200), st.integers(21, 108)),
                      min_size=1, max_size=25)


def from_steps(rows):
    return notes(*[(s / 100, (s + n) / 100, p) for s, n, p in rows])


# ------------------------------------------------------------------ polyphony


def test_mean_polyphony_of_a_known_piece():
    # 0-0.5 s one note, 0.5-1 two, 1-1.5 one, silence, 3-4 one: 3 note-seconds over 2.5 s sounding.
    piece = notes((0, 1, 60), (0.5, 1.5, 64), (3, 4, 67))
    assert S.mean_polyphony(piece) == pytest.approx(3 / 2.5)
    assert S.mean_polyphony(piece, include_silence=True) == pytest.approx(3 / 4)
    chord = notes((0, 2, 60), (0, 2, 64), (0, 2, 67), (0, 2, 72))
    assert S.mean_polyphony(chord) == pytest.approx(4.0)
    assert S.mean_polyphony(notes()) == 0.0
    assert S.mean_polyphony(notes((1, 1, 60))) == 0.0  # a zero-length note never sounds


@settings(max_examples=60, deadline=None)
@given(grid_notes)
def test_mean_polyphony_matches_the_frame_count_on_the_grid(rows):
    # On the codec's grid, the exact sweep equals metrics.polyphony's count over 10 ms frames.
    piece = from_steps(rows)
    assert S.mean_polyphony(piece) == pytest.approx(metrics.polyphony(metrics.note_array(piece))[0])


@settings(max_examples=60, deadline=None)
@given(grid_notes, st.floats(-50, 50))
def test_mean_polyphony_is_note_seconds_over_sounding_time_and_ignores_a_time_shift(rows, offset):
    piece = from_steps(rows)
    frames = np.zeros(600, dtype=bool)
    for s, n, _ in rows:
        frames[s:s + n] = True
    note_seconds = (piece[:, 1] - piece[:, 0]).sum()
    assert S.mean_polyphony(piece) == pytest.approx(note_seconds / (frames.sum() / 100))
    shifted = piece.copy()
    shifted[:, :2] += offset
    assert S.mean_polyphony(shifted) == pytest.approx(S.mean_polyphony(piece))
    assert S.mean_polyphony(piece) >= 1.0 - 1e-12


# ------------------------------------------------------------------ note lengths


def test_long_note_fraction_and_median_length():
    # Lengths 0.5, 3.0 (inexact in binary: 4.15 - 1.15 > 3), 3.5 and 10: two are longer than 3 s.
    piece = notes((0, 0.5, 60), (1.15, 4.15, 62), (1, 4.5, 64), (2, 12, 65))
    assert S.long_note_fraction(piece, seconds=3.0) == pytest.approx(0.5)
    assert S.long_note_fraction(piece, seconds=2.0) == pytest.approx(0.75)
    assert S.long_note_fraction(piece) == pytest.approx(0.5)  # default 3 s
    assert S.median_note_length(piece) == pytest.approx(3.25)
    assert math.isnan(S.long_note_fraction(notes())) and math.isnan(S.median_note_length(notes()))


def test_capped_fraction_counts_lengths_within_half_a_step_of_the_cap():
    piece = notes((0, 5.0, 60), (1, 5.996, 62), (2, 6.99, 64), (3, 4.0, 65))
    assert S.capped_fraction(piece, 5.0) == pytest.approx(0.5)  # 5.0 and 4.996; 4.99 is a step short
    assert math.isnan(S.capped_fraction(notes(), 5.0))


def test_capped_fraction_finds_the_notes_decode_closed():
    # Three notes struck, only one released; 7 s later the other two are closed by the 5 s cap.
    ids = [VELOCITY + 20, NOTE_ON + 60, NOTE_ON + 64, NOTE_ON + 67, shift_id(50), NOTE_OFF + 64]
    ids += [SHIFT_1S] * 7 + [NOTE_ON + 72, shift_id(30), NOTE_OFF + 72]
    piece = metrics.note_array(codec.decode(np.array(ids), max_note_seconds=5.0))
    assert len(piece) == 4
    assert S.capped_fraction(piece, 5.0) == pytest.approx(2 / 4)
    assert S.long_note_fraction(piece, seconds=3.0) == pytest.approx(2 / 4)


# ------------------------------------------------------------------ key


def test_in_key_fraction_counts_notes_in_the_scale():
    # C major scale plus F# and Bb: 7 of 9 notes in C major.
    piece = notes(*[(i, i + 1, p) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 66, 70])])
    assert S.in_key_fraction(piece, "C major") == pytest.approx(7 / 9)
    assert S.in_key_fraction(piece, Key(0, "major")) == pytest.approx(7 / 9)
    # A minor (natural + G#): A B C D E F G G# in, C# and F# out.
    a_minor = notes(*[(i, i + 1, p) for i, p in enumerate([57, 59, 60, 62, 64, 65, 67, 68, 61, 66])])
    assert S.in_key_fraction(a_minor, "A minor") == pytest.approx(8 / 10)
    assert math.isnan(S.in_key_fraction(notes(), "C"))


def test_estimate_key_then_in_key_fraction_of_a_diatonic_piece():
    rng = np.random.default_rng(3)
    scale = np.array(Key(2, "major").pitch_classes)  # D major
    pitches = 60 + rng.choice(scale, 200) + 12 * rng.integers(-1, 2, 200)
    pitches[::10] = 62  # the tonic recurs
    starts = np.arange(200) * 0.25
    piece = np.stack([starts, starts + 0.4, pitches, np.full(200, 80)], axis=1)
    estimate = S.estimate_key(piece)
    assert estimate.key == Key(2, "major")
    assert S.in_key_fraction(piece, estimate.key) == 1.0


# ------------------------------------------------------------------ silence


def test_longest_silence_between_first_onset_and_last_offset():
    piece = notes((0, 1, 60), (0.5, 2, 62), (4, 5, 64), (5.5, 6, 65))
    assert S.longest_silence(piece) == pytest.approx(2.0)  # 2 s to 4 s; the note to 2 s covers 1-2 s
    assert S.longest_silence(notes((0, 3, 60), (1, 2, 62), (2.5, 4, 64))) == 0.0  # overlapping
    assert S.longest_silence(notes((0, 1, 60), (1, 2, 62))) == 0.0  # touching
    assert S.longest_silence(notes()) == 0.0


def test_longest_silence_in_a_window_counts_silent_edges():
    piece = notes((0, 1, 60), (0.5, 2, 62), (4, 5, 64), (5.5, 6, 65))
    assert S.longest_silence(piece, start=-1.0, end=10.0) == pytest.approx(4.0)  # 6 s to 10 s
    assert S.longest_silence(piece, start=-3.0) == pytest.approx(3.0)
    assert S.longest_silence(piece, start=4.2, end=5.8) == pytest.approx(0.5)  # clipped to the window
    assert S.longest_silence(notes(), start=10.0, end=40.0) == pytest.approx(30.0)  # a silent continuation
    assert S.longest_silence(piece, start=20.0, end=30.0) == pytest.approx(10.0)  # no note in the window


@settings(max_examples=60, deadline=None)
@given(grid_notes)
def test_longest_silence_matches_the_longest_run_of_empty_frames(rows):
    piece = from_steps(rows)
    first, last = min(s for s, _, _ in rows), max(s + n for s, n, _ in rows)
    frames = np.zeros(last - first, dtype=bool)
    for s, n, _ in rows:
        frames[s - first:s - first + n] = True
    longest = run = 0
    for f in frames:
        run = 0 if f else run + 1
        longest = max(longest, run)
    assert S.longest_silence(piece) == pytest.approx(longest / 100)


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_is_the_percentile_interval_of_resampled_statistics():
    values = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    estimate, low, high = S.bootstrap_ci(values, n=500, seed=7)
    draws = np.random.default_rng(7).integers(0, 5, size=(500, 5))  # item indices of each resample
    resampled = [values[draw].mean() for draw in draws]
    assert estimate == pytest.approx(6.2)
    assert (low, high) == pytest.approx(tuple(np.quantile(resampled, [0.025, 0.975])))
    assert low < estimate < high
    assert S.bootstrap_ci(values, n=500, seed=7) == (estimate, low, high)  # deterministic
    assert S.bootstrap_ci(values, n=500, seed=8) != (estimate, low, high)


def test_bootstrap_ci_takes_any_numpy_reduction_and_a_level():
    values = np.arange(20.0)
    med = S.bootstrap_ci(values, statistic=np.median)
    assert med[0] == pytest.approx(9.5) and med[1] < 9.5 < med[2]
    q90 = S.bootstrap_ci(values, statistic=functools.partial(np.quantile, q=0.9))
    assert q90[0] == pytest.approx(np.quantile(values, 0.9))
    wide, narrow = S.bootstrap_ci(values, level=0.99), S.bootstrap_ci(values, level=0.5)
    assert wide[1] < narrow[1] < narrow[2] < wide[2]
    assert S.bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    assert S.bootstrap_ci([2.0] * 10) == (2.0, 2.0, 2.0)


def test_bootstrap_ci_covers_the_true_mean_about_as_often_as_promised():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(300):
        sample = rng.normal(5.0, 2.0, 40)
        _, low, high = S.bootstrap_ci(sample, n=1000, seed=trial)
        covered += low <= 5.0 <= high
    assert 0.89 <= covered / 300 <= 0.98  # percentile bootstrap at n=40 is slightly under 95%


def test_bootstrap_ci_rejects_what_has_no_interval():
    with pytest.raises(ValueError, match="at least one"):
        S.bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        S.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        S.bootstrap_ci([1.0, 2.0], level=1.0)


# ------------------------------------------------------------------ shared runs


def brute_force_shared_run(gen, pieces):
    """Longest common substring by dynamic programming, piece by piece."""
    best = 0
    for piece in pieces:
        prev = [0] * (len(piece) + 1)
        for g in gen:
            row = [0] * (len(piece) + 1)
            for j, t in enumerate(piece):
                if g == t:
                    row[j + 1] = prev[j] + 1
                    best = max(best, row[j + 1])
            prev = row
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40),
       st.lists(st.lists(st.integers(0, 3), max_size=30), max_size=4))
def test_longest_shared_run_equals_brute_force(gen, pieces):
    assert S.longest_shared_run(np.array(gen), [np.array(p) for p in pieces]) == brute_force_shared_run(gen, pieces)


def test_longest_shared_run_on_random_event_ids():
    rng = np.random.default_rng(5)
    for _ in range(20):
        gen = rng.integers(0, 6, rng.integers(1, 80))
        pieces = [rng.integers(0, 6, rng.integers(0, 60)) for _ in range(rng.integers(1, 5))]
        assert S.longest_shared_run(gen, pieces) == brute_force_shared_run(gen.tolist(), [p.tolist() for p in pieces])


def test_longest_shared_run_does_not_cross_pieces():
    assert S.longest_shared_run(np.array([2, 3, 4, 5]), [np.array([1, 2, 3]), np.array([4, 5, 6])]) == 2
    assert S.longest_shared_run(np.array([2, 3, 4, 5]), [np.array([1, 2, 3, 4, 5, 6])]) == 4
    assert S.longest_shared_run(np.array([], dtype=int), [np.array([1, 2])]) == 0
    assert S.longest_shared_run(np.array([1, 2]), []) == 0
    assert S.longest_shared_run(np.array([7, 8]), [np.array([1, 2])]) == 0


def test_longest_shared_run_finds_a_replayed_passage_at_evaluation_size_quickly():
    # 20 continuations x 2,000 events against 100k training events; one replays 700 events verbatim.
    rng = np.random.default_rng(11)
    pieces = [rng.integers(0, VOCAB_SIZE, 5000) for _ in range(20)]
    continuations = [rng.integers(0, VOCAB_SIZE, 2000) for _ in range(20)]
    continuations[3][600:1300] = pieces[12][1000:1700]
    begin = time.perf_counter()
    runs = [S.longest_shared_run(c, pieces) for c in continuations]
    seconds = time.perf_counter() - begin
    assert runs[3] >= 700 and max(runs[:3] + runs[4:]) <= 3  # random ids share 2-3 events by chance
    assert runs[3] <= 702  # the copy can extend only by chance matches at its ends
    assert seconds < 30, f"{seconds:.1f} s for 20 continuations"


# ------------------------------------------------------------------ NLL per event class


def test_nll_by_class_means_and_counts():
    targets = np.array([[NOTE_ON + 60, NOTE_OFF + 60, TIME_SHIFT, TIME_SHIFT + 5],
                        [VELOCITY + 3, PAD_ID, NOTE_ON + 21, -100]])
    nll = np.array([[1.0, 2.0, 3.0, 5.0], [4.0, 99.0, 3.0, 99.0]])
    out = S.nll_by_class(nll, targets)
    assert out == {"note_on": {"mean_nll": 2.0, "count": 2}, "note_off": {"mean_nll": 2.0, "count": 1},
                   "time_shift": {"mean_nll": 4.0, "count": 2}, "velocity": {"mean_nll": 4.0, "count": 1}}


def test_nll_by_class_covers_the_vocabulary_and_flags_empty_classes():
    ids = np.arange(VOCAB_SIZE)
    out = S.nll_by_class(np.ones(VOCAB_SIZE), ids)
    assert [out[k]["count"] for k in S.EVENT_CLASSES] == [128, 128, 100, 32]
    assert sum(v["count"] for v in out.values()) == VOCAB_SIZE
    only_shifts = S.nll_by_class(np.ones(3), np.array([SHIFT_1S] * 3))
    assert math.isnan(only_shifts["velocity"]["mean_nll"]) and only_shifts["velocity"]["count"] == 0
    with pytest.raises(ValueError, match="targets"):
        S.nll_by_class(np.ones(3), np.ones(4, dtype=int))


def test_event_class_names_every_id_and_nothing_else():
    assert vocab.event_class(np.array([NOTE_ON, NOTE_OFF - 1, NOTE_OFF, TIME_SHIFT, SHIFT_1S, VELOCITY,
                                       VOCAB_SIZE - 1])).tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert vocab.event_class(np.array([PAD_ID, -1, 1000])).tolist() == [-1, -1, -1]
    assert list(S.EVENT_CLASSES) == ["note_on", "note_off", "time_shift", "velocity"]


# ------------------------------------------------------------------ shared runs: one index, many queries


def test_one_shared_run_index_answers_many_queries_as_fresh_ones_do():
    rng = np.random.default_rng(2)
    pieces = [rng.integers(0, 5, rng.integers(5, 60)) for _ in range(4)]
    index = S.SharedRunIndex(pieces, keep_lengths=2)  # tiny cache: lengths are evicted and rebuilt
    for _ in range(30):
        gen = rng.integers(0, 5, rng.integers(1, 70))
        expected = brute_force_shared_run(gen.tolist(), [p.tolist() for p in pieces])
        assert index.longest(gen) == expected == S.longest_shared_run(gen, pieces)
        assert S.longest_shared_run(gen, index) == expected
    assert len(index._windows) <= 2
    with pytest.raises(ValueError, match="event ids"):
        index.longest(np.array([1, -2]))


# ------------------------------------------------------------------ paired ratio bootstrap


def test_bootstrap_ratio_ci_is_a_ratio_of_means_resampled_in_pairs():
    generated, real = np.array([2.0, 2.0, 6.0]), np.array([1.0, 4.0, 3.0])
    estimate, low, high = S.bootstrap_ratio_ci(generated, real, n=400, seed=3)
    assert estimate == pytest.approx(10 / 8)  # not the mean of per-item ratios (2 + 0.5 + 2) / 3
    draws = np.random.default_rng(3).integers(0, 3, size=(400, 3))
    ratios = generated[draws].mean(axis=1) / real[draws].mean(axis=1)
    assert (low, high) == pytest.approx(tuple(np.quantile(ratios, [0.025, 0.975])))
    # The same draws as bootstrap_ci with the same seed: a constant ratio has no spread.
    assert S.bootstrap_ratio_ci(3 * real, real) == pytest.approx((3.0, 3.0, 3.0))
    assert math.isinf(S.bootstrap_ratio_ci([1.0], [0.0])[0])
    with pytest.raises(ValueError, match="denominators"):
        S.bootstrap_ratio_ci([1.0, 2.0], [1.0])


# ------------------------------------------------------------------ what the decoder fixes


def test_discarded_events_counts_each_kind_decode_fixes():
    ids = [VELOCITY + 20,
           NOTE_OFF + 50,                  # stray: 50 never sounded
           NOTE_ON + 60, NOTE_OFF + 60,    # zero-length: released in the step it was struck
           NOTE_ON + 62, shift_id(10),
           NOTE_ON + 62,                   # restrike: 62 still sounds
           shift_id(10), NOTE_OFF + 62, NOTE_OFF + 62,
           NOTE_ON + 64, SHIFT_1S, SHIFT_1S,  # 64 is never released: closed by a 1.5 s cap
           PAD_ID, NOTE_ON + 67]           # PAD is invalid; 67 is still open at the end, in its onset step
    counts = S.discarded_events(np.array(ids), max_note_seconds=1.5)
    assert counts == {"stray_note_off": 1, "zero_length": 2, "restrike": 1, "capped": 1, "invalid": 1, "total": 6}
    decoded = metrics.note_array(codec.decode(np.array(ids), max_note_seconds=1.5))
    assert decoded[:, 2].tolist() == [62, 62, 64]  # what decode kept: 60 and 67 had no length
    assert decoded[2, 1] - decoded[2, 0] == pytest.approx(1.5)


def test_discarded_events_replays_a_prompt_without_counting_it():
    prompt = [NOTE_OFF + 40, NOTE_ON + 60, NOTE_ON + 61, SHIFT_1S, SHIFT_1S]  # a stray off, two held notes
    continuation = [NOTE_OFF + 60, SHIFT_1S, SHIFT_1S, SHIFT_1S, SHIFT_1S]  # 60 released; 61 capped at 5 s
    counts = S.discarded_events(np.array(prompt + continuation), 5.0, count_from=len(prompt))
    assert counts["stray_note_off"] == 0 and counts["capped"] == 1 and counts["total"] == 1
    # Without the prompt the same note-off would be stray.
    assert S.discarded_events(np.array(continuation), 5.0)["stray_note_off"] == 1
    # A cap that closes inside the prompt is the prompt's.
    long_prompt = [NOTE_ON + 61] + [SHIFT_1S] * 7
    assert S.discarded_events(np.array(long_prompt + [SHIFT_1S]), 5.0, count_from=len(long_prompt))["capped"] == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([NOTE_ON + 60, NOTE_ON + 61, NOTE_OFF + 60, NOTE_OFF + 61, shift_id(20),
                                 shift_id(37), SHIFT_1S, VELOCITY + 5, PAD_ID]), max_size=60))
def test_discarded_events_agree_with_what_decode_keeps(ids):
    # The cap is off the 10 ms grid, so only the decoder's cap can give a note exactly that long.
    cap = 0.555
    ids = np.array(ids, dtype=np.int64)
    counts = S.discarded_events(ids, max_note_seconds=cap)
    decoded = metrics.note_array(codec.decode(ids, max_note_seconds=cap))
    on, off = int((ids < NOTE_OFF).sum()), int(((ids >= NOTE_OFF) & (ids < TIME_SHIFT)).sum())
    assert len(decoded) == on - counts["zero_length"]
    assert counts["capped"] == int(np.isclose(decoded[:, 1] - decoded[:, 0], cap).sum())
    assert counts["stray_note_off"] <= off and (on > 0 or counts["stray_note_off"] == off)
    assert counts["invalid"] == int((ids == PAD_ID).sum())
