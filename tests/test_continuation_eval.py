"""Held-out prompts with their real continuations, and the report that measures continuations against them."""

import json
import math
import time

import numpy as np
import pretty_midi
import pytest

from amadeus import codec, metrics
from amadeus import continuation_eval as E
from amadeus.keys import Key
from amadeus.music_stats import SharedRunIndex
from amadeus.vocab import NOTE_OFF, NOTE_ON, SHIFT_1S, VELOCITY, VOCAB_SIZE, cut_seconds, event_seconds, shift_id


def encode(rows) -> np.ndarray:
    """(start, end, pitch, velocity) rows -> magenta event ids."""
    start, end, pitch, velocity = np.array(rows, dtype=np.float64).reshape(-1, 4).T
    return codec.encode_notes(pitch.astype(int), start, end, velocity.astype(int)).astype(np.int64)


def notes_of(ids, cap=100.0) -> np.ndarray:
    return metrics.note_array(codec.decode(np.asarray(ids), max_note_seconds=cap))


def pulse(seconds: int, pitch: int = 60) -> np.ndarray:
    """A note every second for `seconds` s, each 0.5 s long (the piece lasts seconds - 0.5 s)."""
    return encode([(t, t + 0.5, pitch, 80) for t in range(seconds)])


# ------------------------------------------------------------------ prompts


def test_prompts_sit_on_an_even_grid_over_the_piece_snapped_to_the_next_note_on():
    prompts = E.held_out_prompts([pulse(100)], ["pulse"], count=4, prompt_seconds=5.0, continuation_seconds=20.0)
    offsets = np.array([p.offset_seconds for p in prompts])
    room = 99.5 - 25.0  # the latest offset that leaves a whole continuation
    assert len(prompts) == 4 and (offsets == np.round(offsets)).all()  # on note-ons, one per second
    assert offsets.max() <= room and np.allclose(np.diff(offsets), room / 4, atol=1.0)
    assert [p.name for p in prompts] == [f"pulse@{o:.2f}s" for o in offsets]
    for p in prompts:
        assert event_seconds(p.ids) == 5.0 and event_seconds(p.reference) == 20.0
        assert p.ids[1] == NOTE_ON + 60  # the velocity in force, then the note-on at the offset
        assert (p.prompt_seconds, p.continuation_seconds, p.held_at_offset) == (5.0, 20.0, ())
    again = E.held_out_prompts([pulse(100)], ["pulse"], count=4)
    assert [p.name for p in again] == [p.name for p in prompts]
    assert all(np.array_equal(a.ids, p.ids) and np.array_equal(a.reference, p.reference)
               for a, p in zip(again, prompts, strict=True))
    other = E.held_out_prompts([pulse(100)], ["pulse"], count=4, seed=1)
    assert [p.name for p in other] != [p.name for p in prompts]  # another phase of the grid


def test_prompts_go_to_pieces_in_proportion_to_their_length():
    pieces = [pulse(100), pulse(50), pulse(10)]  # 99.5 s, 49.5 s; 9.5 s is too short for 25 s
    prompts = E.held_out_prompts(pieces, ["long", "short", "tiny"], count=6)
    assert [p.piece for p in prompts] == ["long"] * 4 + ["short"] * 2  # 6 x 99.5/149 = 4.007, then 1.993
    with pytest.raises(ValueError, match="no piece lasts 25 s"):
        E.held_out_prompts([pulse(10)], ["tiny"])
    with pytest.raises(ValueError, match="names"):
        E.held_out_prompts(pieces, ["one"])


def test_a_prompt_drops_the_note_offs_of_notes_begun_before_it_and_carries_the_velocity():
    # Notes at 0 s (one held to 6 s), then from 2 s on; the piece lasts 27 s, so the only offset
    # that leaves 5 + 20 s is at most 2 s, and the next note-on after any target in (0, 2) is at 2 s.
    rows = [(0.0, 6.0, 50, 40), (0.0, 1.5, 52, 40), (2.0, 2.5, 60, 40), (3.0, 9.0, 62, 40)]
    rows += [(t, t + 0.5, 64 + t % 5, 40) for t in range(8, 26)] + [(26.0, 27.0, 70, 90)]
    ids = encode(rows)
    [prompt] = E.held_out_prompts([ids], ["piece"], count=1)
    assert prompt.offset_seconds == 2.0 and prompt.held_at_offset == (50,)
    assert prompt.ids[0] == ids[0] and prompt.ids[0] >= VELOCITY  # the velocity of 0 s, written again
    assert NOTE_OFF + 50 not in prompt.ids.tolist() and NOTE_OFF + 52 not in prompt.ids.tolist()
    assert event_seconds(prompt.ids) == 5.0 and event_seconds(prompt.reference) == 20.0
    # Prompt and reference decode to the piece's notes begun in the window, less the held one.
    assert np.allclose(notes_of(np.concatenate([prompt.ids, prompt.reference])), window_notes(ids, 2.0, 25.0))
    assert notes_of(prompt.ids)[:, 3].tolist() == [notes_of(ids)[0, 3]] * 2  # 60 and 62 keep their velocity


def window_notes(ids: np.ndarray, start: float, seconds: float) -> np.ndarray:
    """The decoded piece's notes begun in [start, start + seconds), cut there, times from the start."""
    notes = notes_of(ids)
    notes = notes[(notes[:, 0] >= start - 1e-9) & (notes[:, 0] < start + seconds - 1e-9)]
    notes[:, 1] = np.minimum(notes[:, 1], start + seconds)
    notes[:, :2] -= start
    return notes


# ------------------------------------------------------------------ one continuation, known answers

# A C major prompt whose last note (72, from 3 s) is still sounding when it ends at 5 s.
PROMPT = cut_seconds(encode([(0, 1, 60, 80), (1, 2, 64, 80), (2, 3, 67, 80), (3, 6.5, 72, 80)]), 5.0)
# The continuation releases 72 at 1.5 s, plays 62 and 65 at 2 s (65 never released: the 5 s cap closes
# it at 7 s), C# at 3 s (out of key), a 4 s A at 10 s, then stops at 14 s: 6 s of silence to 20 s.
GENERATED = np.array([SHIFT_1S, shift_id(50), NOTE_OFF + 72, shift_id(50), VELOCITY + 20, NOTE_ON + 62,
                      NOTE_ON + 65, shift_id(50), NOTE_OFF + 62, shift_id(50), NOTE_ON + 61, shift_id(50),
                      NOTE_OFF + 61] + [SHIFT_1S] * 6 + [shift_id(50), NOTE_ON + 69] + [SHIFT_1S] * 4 +
                     [NOTE_OFF + 69])
GENERATED_MEASURES = {
    "polyphony": 11.5 / 10.5,  # note-seconds 1.5 + 0.5 + 5 + 0.5 + 4 over 10.5 s with something sounding
    "long_notes": 2 / 4, "capped": 1 / 4, "in_key": 3 / 4, "longest_silence": 6.0,
    "notes_per_second": 4 / 20, "median_note_length": 2.25,  # lengths 0.5, 0.5, 4, 5
}
# The real one releases 72 at 1.5 s, plays C for a second at 2 s, and is silent from 3 s.
REAL = np.array([SHIFT_1S, shift_id(50), NOTE_OFF + 72, shift_id(50), NOTE_ON + 60, SHIFT_1S, NOTE_OFF + 60])
REAL_MEASURES = {"polyphony": 1.0, "long_notes": 0.0, "capped": 0.0, "in_key": 1.0, "longest_silence": 17.0,
                 "notes_per_second": 1 / 20, "median_note_length": 1.0}


def test_the_measures_of_a_hand_made_continuation():
    assert E.prompt_key(PROMPT) == Key(0, "major")
    notes = E.continuation_notes(PROMPT, GENERATED, 20.0, cap_seconds=5.0)
    assert notes[0, 2] == 72 and notes[0, 0] == pytest.approx(-2.0)  # carried from the prompt
    assert E.measure(notes, Key(0, "major"), 20.0, 5.0) == pytest.approx(GENERATED_MEASURES)
    real = E.continuation_notes(PROMPT, REAL, 20.0, cap_seconds=5.0)
    assert E.measure(real, Key(0, "major"), 20.0, 5.0) == pytest.approx(REAL_MEASURES)
    # A window shorter than the continuation cuts it: 69 is not in the first 9 s.
    short = E.measure(E.continuation_notes(PROMPT, GENERATED, 9.0, 5.0), Key(0, "major"), 9.0, 5.0)
    assert short["notes_per_second"] == pytest.approx(3 / 9) and short["longest_silence"] == pytest.approx(2.0)


def test_an_empty_continuation_is_all_silence_and_its_note_measures_undefined():
    values = E.measure(E.continuation_notes(PROMPT, np.zeros(0, int), 20.0, 5.0), Key(0, "major"), 20.0, 5.0)
    # 72 from the prompt sounds to the end of the prompt's events, so the continuation is silent throughout.
    assert values["polyphony"] == 0.0 and values["longest_silence"] == 20.0 and values["notes_per_second"] == 0
    assert all(math.isnan(values[m]) for m in ("long_notes", "capped", "in_key", "median_note_length"))


# ------------------------------------------------------------------ the report


def test_report_of_known_items_collapses_to_their_values():
    report = E.evaluate_continuations([(PROMPT, GENERATED, REAL)] * 3, [PROMPT, REAL], cap_seconds=5.0,
                                      continuation_seconds=20.0)
    assert report["items"] == 3 and report["silent"] == {"generated": 0, "real": 0, "floor": report["silent"]["floor"]}
    for measures, name in ((GENERATED_MEASURES, "generated"), (REAL_MEASURES, "real")):
        for m, value in measures.items():
            got = report[name][m]
            assert got["mean"] == got["low"] == got["high"] == pytest.approx(value, abs=1e-4), (name, m)
    assert report["generated"]["discarded"]["mean"] == pytest.approx(1 / len(GENERATED), abs=1e-4)  # the cap
    assert report["discarded_by_kind"]["generated"] == {"stray_note_off": 0, "zero_length": 0, "restrike": 0,
                                                        "capped": 3, "invalid": 0, "total": 3}
    assert report["real"]["discarded"]["mean"] == 0.0
    # "Training" holds the real continuation: both begin 1 s, 0.5 s, release 72, 0.5 s.
    assert report["generated"]["shared_run"]["mean"] == 4.0 and report["real"]["shared_run"]["mean"] == len(REAL)
    vs = report["generated_vs_real"]
    assert vs["polyphony_ratio"]["mean"] == pytest.approx(11.5 / 10.5, abs=1e-4)
    assert vs["notes_per_second_ratio"]["mean"] == pytest.approx(4.0)
    assert vs["median_note_length_ratio"]["mean"] == pytest.approx(2.25)
    assert vs["in_key_diff"]["mean"] == pytest.approx(-0.25) and vs["longest_silence_diff"]["mean"] == -11.0
    assert vs["long_notes_diff"]["mean"] == 0.5 and vs["capped_diff"]["mean"] == 0.25
    json.dumps(report, allow_nan=False)  # JSON as it is


def test_report_without_any_note_gives_none_not_nan():
    silent = [(PROMPT, np.zeros(0, int), np.zeros(0, int))] * 2
    report = E.evaluate_continuations(silent, [PROMPT], cap_seconds=5.0, continuation_seconds=20.0)
    assert report["generated"]["long_notes"] == {"mean": None, "low": None, "high": None}
    assert report["generated"]["discarded"]["mean"] is None  # no events to discard
    assert report["generated_vs_real"]["in_key_diff"]["mean"] is None
    assert report["generated"]["longest_silence"]["mean"] == 20.0 and report["silent"]["generated"] == 2
    json.dumps(report, allow_nan=False)
    assert "| - |" in E.markdown_table(report)


def test_the_floor_is_random_ids_as_many_as_generated_and_seeded():
    items = [(PROMPT, np.tile(GENERATED, 30), REAL)] * 4
    one = E.evaluate_continuations(items, [PROMPT], 5.0, 20.0, seed=0)
    assert one == E.evaluate_continuations(items, [PROMPT], 5.0, 20.0, seed=0)
    assert one["floor"] != E.evaluate_continuations(items, [PROMPT], 5.0, 20.0, seed=1)["floor"]
    # Uniform ids: about 1 in 3 is a note-off, mostly of a silent pitch; notes are left to the cap.
    assert one["floor"]["discarded"]["mean"] > 0.3 and one["floor"]["capped"]["mean"] > 0.3
    assert one["floor"]["in_key"]["low"] < 8 / 12 < one["floor"]["in_key"]["high"] + 0.1


def test_items_given_as_notes_measure_the_same_without_ids():
    notes = E.continuation_notes(PROMPT, GENERATED, 20.0, 5.0)
    by_ids = E.evaluate_continuations([(PROMPT, GENERATED, REAL)], [PROMPT], 5.0, 20.0)
    by_notes = E.evaluate_continuations([(PROMPT, notes, REAL)], [PROMPT], 5.0, 20.0)
    for m in GENERATED_MEASURES:
        assert by_notes["generated"][m] == by_ids["generated"][m]
    assert by_notes["generated"]["discarded"]["mean"] is None and by_notes["generated"]["shared_run"]["mean"] is None
    with pytest.raises(ValueError, match="continuation_seconds"):
        E.evaluate_continuations([(PROMPT, GENERATED, REAL)], [PROMPT], 5.0)
    with pytest.raises(ValueError, match="no reference"):
        E.evaluate_continuations([(PROMPT, GENERATED, None)], [PROMPT], 5.0, 20.0)


def test_markdown_table_renders_means_and_intervals_of_a_nested_report():
    one = E.evaluate_continuations([(PROMPT, GENERATED, REAL)] * 2, [PROMPT], 5.0, 20.0)
    text = E.markdown_table({"performance_rnn": {"fp32": one, "int8": one}})
    lines = text.splitlines()
    assert any(line.startswith("| performance_rnn fp32 | 2 | 1.10 [1.10, 1.10] | 50.0% [50.0, 50.0] | 25.0%")
               for line in lines)
    assert sum(line.startswith("| real continuations | 2 |") for line in lines) == 1  # the same prompts: one row
    assert sum("floor (random ids)" in line for line in lines) == 4  # per setting, in both tables
    assert any(line.startswith("| performance_rnn int8 | 1.10 [1.10, 1.10] | 4.00 [4.00, 4.00] | 2.25")
               and "-25.0 [-25.0, -25.0]" in line and "-11.00" in line for line in lines)
    with pytest.raises(ValueError, match="no evaluate_continuations result"):
        E.markdown_table({"nothing": {}})


# ------------------------------------------------------------------ end to end on encoded MIDI


def synthetic_piece(seconds: int, seed: int) -> pretty_midi.PrettyMIDI:
    """C major: a melody of eighth notes over a triad every 2 s, with the pedal down for each triad."""
    rng = np.random.default_rng(seed)
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    for t in np.arange(0, seconds, 0.25):
        piano.notes.append(pretty_midi.Note(int(rng.integers(50, 100)), int(72 + rng.choice(scale)), t, t + 0.2))
    for bar, t in enumerate(range(0, seconds, 2)):
        root = [0, 5, 7, 0][bar % 4]
        for step in (0, 4, 7):
            piano.notes.append(pretty_midi.Note(60, 48 + root + step, t, t + 0.5))
        piano.control_changes += [pretty_midi.ControlChange(64, 100, t + 0.05),
                                  pretty_midi.ControlChange(64, 0, t + 1.9)]
    pm.instruments.append(piano)
    return pm


def test_end_to_end_on_encoded_midi(tmp_path):
    paths = []
    for name, seconds, seed in (("val", 90, 1), ("test", 60, 2), ("train", 80, 3)):
        paths.append(tmp_path / f"{name}.mid")
        synthetic_piece(seconds, seed).write(str(paths[-1]))
    val, test, train = (codec.encode_path(p).ids.astype(np.int64) for p in paths)
    prompts = E.held_out_prompts([val, test], ["val", "test"], count=6)
    assert [p.piece for p in prompts] == ["val"] * 4 + ["test"] * 2
    for p in prompts:  # prompt + reference = the piece's window, less notes begun before it
        window = window_notes(val if p.piece == "val" else test, p.offset_seconds, 25.0)
        assert np.allclose(notes_of(np.concatenate([p.ids, p.reference])), window), p.name

    # The real continuations, replayed as if generated; the validation piece is also in "training".
    report = E.evaluate_continuations([(p, p.reference, None) for p in prompts], [train, val], cap_seconds=5.0)
    assert report["items"] == 6 and report["continuation_seconds"] == 20.0
    for k, interval in report["generated_vs_real"].items():
        assert interval["mean"] == interval["low"] == interval["high"] == (1.0 if k.endswith("_ratio") else 0.0)
    real = report["real"]
    assert real["in_key"]["mean"] > 0.9  # diatonic throughout, key estimated from each prompt
    assert 4.0 < real["notes_per_second"]["mean"] < 6.0 and real["capped"]["mean"] == 0.0
    assert real["discarded"]["mean"] == 0.0 and real["longest_silence"]["mean"] < 0.5
    floor = report["floor"]
    assert floor["in_key"]["mean"] < real["in_key"]["mean"] - 0.2
    assert floor["capped"]["mean"] > 0.3 and floor["shared_run"]["mean"] < 5
    # The copy check: a validation prompt's continuation is found whole in "training".
    copied = E.evaluate_continuations([(p, p.reference, None) for p in prompts if p.piece == "val"], [val], 5.0)
    fresh = E.evaluate_continuations([(p, p.reference, None) for p in prompts if p.piece == "test"], [train], 5.0)
    shortest = min(len(p.reference) for p in prompts if p.piece == "val")
    assert copied["generated"]["shared_run"]["low"] >= shortest - 1  # all but the split first shift
    assert fresh["generated"]["shared_run"]["high"] < 20


def test_sixteen_prompts_for_four_settings_take_seconds():
    # Dense piano: about 15 notes a second, 100k events of training data.
    rng = np.random.default_rng(0)

    def dense(seconds: int) -> np.ndarray:
        starts = np.sort(rng.uniform(0, seconds, 15 * seconds))
        lengths = rng.exponential(0.4, len(starts))
        return codec.encode_notes(rng.integers(40, 90, len(starts)), starts, starts + lengths,
                                  rng.integers(30, 110, len(starts))).astype(np.int64)

    held_out = [dense(300), dense(200)]
    training = [dense(400) for _ in range(3)]
    prompts = E.held_out_prompts(held_out, ["a", "b"])
    assert len(prompts) == 16
    begin = time.perf_counter()
    index = SharedRunIndex(training)
    reports = {f"setting_{k}": E.evaluate_continuations(
        [(p, rng.permutation(p.reference), None) for p in prompts], index, cap_seconds=5.0) for k in range(4)}
    seconds = time.perf_counter() - begin
    assert all(r["items"] == 16 for r in reports.values())
    assert seconds < 10, f"{seconds:.1f} s for 16 prompts x 4 settings"
    # title, header; 4 settings, 4 floors, 1 real; title, header; 4 settings and 4 floors against real
    assert len(E.markdown_table(reports).splitlines()) == 4 + 9 + 5 + 8


def test_floor_ids_are_the_vocabulary():
    # The floor draws from 0..VOCAB_SIZE-1 (PAD is not a musical event).
    report = E.evaluate_continuations([(PROMPT, np.arange(VOCAB_SIZE), REAL)], [PROMPT], 5.0, 20.0)
    assert report["discarded_by_kind"]["floor"]["invalid"] == 0
