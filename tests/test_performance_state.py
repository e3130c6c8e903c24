"""The sampler's performance state: its masks keep every event the decoder takes, the rules hold,
some event is always allowed, and what it tracks agrees with codec.decode note by note."""

from __future__ import annotations

import numpy as np
import pretty_midi
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amadeus import codec
from amadeus.errors import UserError
from amadeus.keys import Key
from amadeus.music_stats import discarded_events, longest_silence
from amadeus.performance_state import PerformanceState, cap_steps, prompt_key
from amadeus.playing_rules import DEFAULT_RULES, PlayingRules
from amadeus.sampling import draw, generate
from amadeus.vocab import (
    MAX_SHIFT_STEPS,
    NOTE_OFF,
    NOTE_ON,
    SHIFT_1S,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    cut_seconds,
    shift_id,
    total_steps,
)

SHIFT_BEFORE_CUT = 3.7  # seconds: prompts are cut here, mid-performance


# --- helpers ---------------------------------------------------------------------------------------

def real_piece(seconds: float = 12.0, seed: int = 0) -> np.ndarray:
    """Encoded MIDI with what real playing has: chords, overlaps, re-struck pitches, the pedal, a note
    held past the decoder's 5 s cap, loud and soft notes."""
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    t = 0.0
    while t < seconds:
        for _ in range(int(rng.integers(1, 4))):
            pitch = int(rng.integers(48, 84))
            piano.notes.append(pretty_midi.Note(int(rng.integers(20, 127)), pitch, t,
                                                t + float(rng.choice([0.05, 0.2, 0.6, 1.5]))))
        t += float(rng.choice([0.0, 0.01, 0.13, 0.25, 0.5]))
    piano.notes.append(pretty_midi.Note(90, 36, 1.0, 8.0))  # longer than the decoder keeps
    piano.notes.append(pretty_midi.Note(70, 60, 2.0, 2.5))  # re-struck while held by the pedal below
    piano.notes.append(pretty_midi.Note(70, 60, 2.4, 2.9))
    piano.control_changes += [pretty_midi.ControlChange(64, 100, 2.0), pretty_midi.ControlChange(64, 0, 3.5)]
    pm.instruments.append(piano)
    return codec.encode(pm).astype(np.int64)


def stress_logits(rows: int, generator: torch.Generator) -> torch.Tensor:
    """Random logits that favour note-ons and disfavour note-offs: a free model would pile notes up."""
    logits = torch.randn(rows, VOCAB_SIZE, generator=generator) * 2
    logits[:, NOTE_ON:NOTE_OFF] += 2.0
    logits[:, NOTE_OFF:TIME_SHIFT] -= 1.0
    return logits


def masked_walk(state: PerformanceState, steps: int, seed: int) -> np.ndarray:
    """Sample `steps` events per row from random logits through the state's masks; checks at every
    step that each row has an allowed event and that the drawn one was allowed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        allowed = state.allowed()
        assert allowed.any(dim=1).all(), "a row was left with nothing allowed"
        token = draw(state.mask(stress_logits(state.rows, g)), generator=g)
        assert allowed.gather(1, token[:, None]).all()
        state.update(token)
        out.append(token)
    return torch.stack(out, dim=1).numpy()


def notes_in_steps(ids: np.ndarray, cap_seconds: float = 5.0) -> list[tuple[int, int, int]]:
    """codec.decode's notes as sorted (start step, end step, pitch)."""
    pm = codec.decode(ids, max_note_seconds=cap_seconds)
    return sorted((round(n.start * STEPS_PER_SECOND), round(n.end * STEPS_PER_SECOND), n.pitch)
                  for n in pm.instruments[0].notes)


def ons_after_last_shift(ids: np.ndarray) -> int:
    """Note-ons after the last time shift: a piece cut there leaves them no time to sound."""
    ids = np.asarray(ids)
    shifts = np.flatnonzero((ids >= TIME_SHIFT) & (ids < VELOCITY))
    tail = ids[shifts[-1] + 1:] if len(shifts) else ids
    return int((tail < NOTE_OFF).sum())


def assert_nothing_discarded(prompt: np.ndarray, new: np.ndarray, cap_seconds: float = 5.0) -> None:
    counts = discarded_events(np.concatenate([prompt, new]), cap_seconds, count_from=len(prompt))
    # the only loss a sampler cannot avoid: notes struck in the very last step (the piece ends there)
    assert counts["zero_length"] == ons_after_last_shift(new)
    assert counts["total"] == counts["zero_length"], counts


# --- the masks keep what the decoder takes ---------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_sampling_of_random_logits_decodes_with_nothing_discarded(seed):
    prompt = cut_seconds(real_piece(seed=seed), SHIFT_BEFORE_CUT)
    state = PerformanceState(np.stack([prompt, prompt]))
    new = masked_walk(state, 1500, seed)
    for row in new:
        assert_nothing_discarded(prompt, row)
    # ... while the same logits sampled freely lose about half their note events
    g = torch.Generator().manual_seed(seed)
    free = draw(torch.cat([stress_logits(1, g) for _ in range(1500)]), generator=g).numpy()
    assert discarded_events(free)["total"] > 300


def test_the_state_agrees_with_decode_note_by_note():
    """Replay a prompt cut mid-performance, sample on from it; the notes the tracker sees close
    (before each note-off, its age gives the note's onset) are those codec.decode makes."""
    prompt = cut_seconds(real_piece(seed=3), SHIFT_BEFORE_CUT)
    boundary = total_steps(prompt)
    state = PerformanceState(prompt)
    assert state.sounding().any(), "the cut should leave notes sounding"
    new = masked_walk(PerformanceState(prompt), 2000, seed=5)[0]   # a twin state samples the events
    now, seen = boundary, []
    for token in new.tolist():
        if NOTE_OFF <= token < TIME_SHIFT:
            age = int(state.ages()[0, token - NOTE_OFF])
            assert age > 0
            seen.append((now - age, now, token - NOTE_OFF))
        state.update(torch.tensor([token]))
        now += max(0, token - TIME_SHIFT + 1) if token < VELOCITY else 0
    ages = state.ages()[0]
    seen += [(now - int(ages[p]), now, p) for p in np.flatnonzero(ages > 0).tolist()]
    # prompt notes closed before the cut (cut_seconds leaves no event at the boundary step)
    closed = [n for n in notes_in_steps(prompt) if n[1] < boundary]
    assert sorted(closed + seen) == notes_in_steps(np.concatenate([prompt, new]))


def test_prompt_replay_applies_the_decoder_cap_and_follows_the_older_of_two_notes():
    one_second = [SHIFT_1S]
    state = PerformanceState([60] + one_second * 6)           # held 6 s: decode closed it at 5 s
    assert not state.sounding()[0, 60] and not state.allowed()[0, NOTE_OFF + 60]
    state = PerformanceState([60] + one_second * 5)           # exactly 5 s: still sounding, at the cap
    allowed = state.allowed()[0]
    assert allowed.nonzero().flatten().tolist() == [NOTE_OFF + 60]
    state = PerformanceState([60, 300, 60, 300])              # two notes of one pitch (not codec-made)
    assert int(state.ages()[0, 60]) == 90                     # the older one, which the next off closes
    state.update(torch.tensor([NOTE_OFF + 60]))
    assert int(state.ages()[0, 60]) == 45                     # then the younger one sounds on
    state.update(torch.tensor([shift_id(5)]))
    state.update(torch.tensor([NOTE_OFF + 60]))
    assert not state.sounding().any()


def test_a_rule_cap_shorter_than_the_prompts_notes_releases_them_first():
    state = PerformanceState([60, 64, SHIFT_1S, SHIFT_1S, 67, shift_id(10)], PlayingRules(max_note_seconds=1.5))
    allowed = state.allowed()[0]
    assert sorted(allowed.nonzero().flatten().tolist()) == [NOTE_OFF + 60, NOTE_OFF + 64]
    state.update(torch.tensor([NOTE_OFF + 60]))
    state.update(torch.tensor([NOTE_OFF + 64]))
    assert state.allowed()[0, shift_id(1)] and state.allowed()[0, NOTE_ON + 50]


def test_feed_replays_outside_events_as_the_decoder_does():
    state = PerformanceState(None, PlayingRules(max_silence=2.0))
    state.feed([[60, 300, 188]])          # a player: C4 held 0.45 s, then released
    assert not state.sounding().any()
    state.feed([[shift_id(100), shift_id(50)]])   # 1.5 s of the 2 s rest
    assert state.allowed()[0, shift_id(50)] and not state.allowed()[0, shift_id(51)]
    state.feed([[62] + [SHIFT_1S] * 7])   # held past the decoder's cap: it has ended
    assert not state.sounding().any()


def test_re_striking_a_held_pitch_is_note_off_then_note_on_in_one_step():
    state = PerformanceState([60, 300])
    assert not state.allowed()[0, 60] and state.allowed()[0, NOTE_OFF + 60]
    state.update(torch.tensor([NOTE_OFF + 60]))
    assert state.allowed()[0, 60]
    state.update(torch.tensor([60]))
    assert not state.allowed()[0, NOTE_OFF + 60]   # it would be a zero-length note
    state.update(torch.tensor([shift_id(1)]))
    assert state.allowed()[0, NOTE_OFF + 60]


# --- some event is always allowed -----------------------------------------------------------------

rule_values = st.fixed_dictionaries({
    "key": st.sampled_from([None, "C", "F# major", "Bb minor", "auto"]),
    "key_strength": st.sampled_from(["lock", 0.0, 3.0]),
    "lowest": st.sampled_from([None, 21, "C4", "B4"]),
    "highest": st.sampled_from([None, "C5", 108]),
    "max_polyphony": st.sampled_from([None, 1, 2, 6]),
    "velocity_low": st.sampled_from([None, 1, 42, 100]),
    "velocity_high": st.sampled_from([None, 43, 127]),
    "max_silence": st.sampled_from([None, 0.01, 0.3, 2.0]),
    "max_note_seconds": st.sampled_from([None, 0.01, 0.2, 1.0]),
})


def prompt_strategy():
    """Event sequences that break every rule: loud notes, long rests, notes held for seconds."""
    event = st.one_of(st.integers(NOTE_ON, NOTE_OFF - 1), st.integers(NOTE_OFF, TIME_SHIFT - 1),
                      st.integers(TIME_SHIFT, VELOCITY - 1), st.integers(VELOCITY, VOCAB_SIZE - 1))
    return st.lists(event, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=rule_values, prompt=prompt_strategy(), seed=st.integers(0, 2**16))
def test_some_event_is_always_allowed_and_the_rules_hold(values, prompt, seed):
    """Random rules, and prompts that break them all; masked_walk checks every step has a choice."""
    prompts = [prompt, prompt[: len(prompt) // 2]]
    try:
        rules = PlayingRules(**values)
        state = PerformanceState(prompts, rules)
    except UserError:  # lowest above highest, velocity_low above velocity_high, no pitch of the key in range
        return
    new = masked_walk(state, 300, seed)
    cap = cap_steps(min(5.0, rules.max_note_seconds or 5.0))
    for row, p in zip(new, prompts, strict=True):
        p = np.asarray(p, dtype=np.int64)
        assert_nothing_discarded(p, row)
        notes = [n for n in notes_in_steps(np.concatenate([p, row])) if n[0] >= total_steps(p)]
        assert all(end - begin <= cap for begin, end, _ in notes)
        ons = row[row < NOTE_OFF]
        assert (ons >= (rules.lowest or 0)).all() and (ons <= (127 if rules.highest is None else rules.highest)).all()


def test_masks_hold_the_rules_on_real_prompts():
    prompt = cut_seconds(real_piece(seed=7), SHIFT_BEFORE_CUT)
    rules = PlayingRules(key="D major", lowest="C3", highest="C6", max_polyphony=3, velocity_low=40,
                         velocity_high=90, max_silence=0.5, max_note_seconds=1.0)
    state = PerformanceState(np.stack([prompt] * 3), rules)
    new = masked_walk(state, 3000, seed=11)
    boundary = total_steps(prompt) / STEPS_PER_SECOND
    for row in new:
        assert_nothing_discarded(prompt, row)
        ons = row[row < NOTE_OFF]
        assert len(ons) > 100
        assert Key(2, "major").pitch_class_mask()[ons % 12].all()
        assert ons.min() >= 48 and ons.max() <= 84
        pm = codec.decode(np.concatenate([prompt, row]))
        notes = np.array([(n.start, n.end, n.pitch, n.velocity) for n in pm.instruments[0].notes])
        after = notes[notes[:, 0] >= boundary]
        assert (after[:, 3] >= 40).all() and (after[:, 3] <= 90).all()
        assert (after[:, 1] - after[:, 0] <= 1.0 + 1e-9).all()
        end = boundary + total_steps(row) / STEPS_PER_SECOND
        assert longest_silence(notes, start=boundary, end=end) <= 0.5 + 1e-9
        grid = np.arange(boundary, end, 0.005)  # polyphony of the continuation's own notes
        sounding = ((after[:, :1] <= grid) & (grid < after[:, 1:2])).sum(axis=0)
        assert sounding.max() <= 3


def test_polyphony_counts_what_sounds_at_every_step():
    state = PerformanceState(None, PlayingRules(max_polyphony=2))
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        token = draw(state.mask(stress_logits(1, g)), generator=g)
        state.update(token)
        assert int(state.sounding().sum()) <= 2


def test_key_penalty_is_a_logit_bias_and_lock_a_mask():
    logits = torch.zeros(1, VOCAB_SIZE)
    soft = PerformanceState(None, PlayingRules(key="C", key_strength=2.5)).mask(logits)[0]
    in_key = Key(0, "major").pitch_class_mask()[np.arange(128) % 12]
    assert torch.equal(soft[:128][torch.as_tensor(~in_key)], torch.full((int((~in_key).sum()),), -2.5))
    assert (soft[:128][torch.as_tensor(in_key)] == 0).all() and (soft[TIME_SHIFT:] == 0).all()
    locked = PerformanceState(None, PlayingRules(key="C")).mask(logits)[0]
    assert torch.isinf(locked[:128][torch.as_tensor(~in_key)]).all()


def test_auto_key_is_estimated_from_the_prompt_duration_weighted():
    d_major = [62, 66, 69, 74, 71, 64, 73]  # D F# A D B E C#
    ids = []
    for p in d_major * 3:
        ids += [p, shift_id(40), NOTE_OFF + p]
    ids.append(shift_id(5))
    rules = PlayingRules(key="auto")
    assert prompt_key(ids, rules) == Key(2, "major")
    state = PerformanceState(ids, rules)
    assert state.keys == [Key(2, "major")]
    assert prompt_key([], rules) is None and prompt_key([], PlayingRules(key="Bb minor")) == Key(10, "minor")
    empty = PerformanceState(None, rules)
    assert empty.keys == [None] and "no notes" in empty.notes[0]


def test_velocity_outside_the_range_waits_for_a_velocity_event():
    loud = VELOCITY + 31  # bin 31: velocity 125
    state = PerformanceState([loud], PlayingRules(velocity_low=30, velocity_high=60))
    allowed = state.allowed()[0]
    assert not allowed[:NOTE_OFF].any()
    assert allowed[VELOCITY:].nonzero().flatten().tolist() == list(range(8, 15))  # velocities 33..57
    state.update(torch.tensor([VELOCITY + 10]))
    assert state.allowed()[0, :NOTE_OFF].all()
    default = PerformanceState(None, PlayingRules(velocity_high=90))  # the decoder starts at velocity 100
    assert not default.allowed()[0, :NOTE_OFF].any()


def test_silence_rule_counts_from_the_last_note_end():
    state = PerformanceState([60, shift_id(20), NOTE_OFF + 60, shift_id(30)], PlayingRules(max_silence=1.0))
    shifts = state.allowed()[0, TIME_SHIFT:VELOCITY]
    assert shifts.nonzero().flatten().max().item() + 1 == 70   # 0.3 s of the 1 s rest are gone
    state = PerformanceState([shift_id(MAX_SHIFT_STEPS)] * 2, PlayingRules(max_silence=1.0))
    allowed = state.allowed()[0]
    assert not allowed[TIME_SHIFT:VELOCITY].any() and allowed[:NOTE_OFF].all()


def test_reorder_and_batch_rows_are_independent():
    a, b = [60, 300], [shift_id(3)]
    state = PerformanceState([a, b])
    both = state.allowed()
    assert torch.equal(both[0], PerformanceState(a).allowed()[0])
    assert torch.equal(both[1], PerformanceState(b).allowed()[0])
    state.reorder(torch.tensor([1, 1, 0]))
    assert torch.equal(state.allowed(), both[[1, 1, 0]])


def test_mask_refuses_a_vocabulary_it_does_not_know():
    with pytest.raises(UserError, match="rules=None"):
        PerformanceState(None, DEFAULT_RULES).mask(torch.zeros(1, 5))


# --- every decoding path uses the masks -----------------------------------------------------------

class Bigram(torch.nn.Module):
    """Logits depend on the last event only (a fixed random table that piles notes up)."""

    family = "bigram"

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        table = torch.randn(VOCAB_SIZE, VOCAB_SIZE, generator=g) * 2
        table[:, NOTE_ON:NOTE_OFF] += 2.0
        table[:, NOTE_OFF:TIME_SHIFT] -= 2.0
        self.register_buffer("table", table)

    def prefill(self, ids, **kwargs):
        self.seen_kwargs = kwargs
        last = ids[:, -1] if ids.shape[1] else torch.full((ids.shape[0],), SHIFT_1S)
        return self.table[last], last

    def step(self, ids, state):
        return self.table[ids], ids

    def reorder_state(self, state, index):
        return state[index]


@pytest.mark.parametrize("mode", [{}, {"do_sample": True, "top_p": 0.9}, {"num_beams": 3},
                                  {"num_beams": 3, "do_sample": True}])
def test_every_decoding_mode_only_writes_allowed_events(mode):
    prompt = torch.as_tensor(cut_seconds(real_piece(seed=4), SHIFT_BEFORE_CUT))[None]
    ids = generate(Bigram(), prompt, 400, seed=0, **mode)
    assert ids.shape == (1, prompt.shape[1] + 400)
    state = PerformanceState(prompt)
    for token in ids[0, prompt.shape[1]:]:
        assert state.allowed()[0, token], f"{int(token)} was not allowed"
        state.update(token[None])
    assert_nothing_discarded(prompt[0].numpy(), ids[0, prompt.shape[1]:].numpy())
    raw = generate(Bigram(), prompt, 400, seed=0, rules=None, **mode)[0, prompt.shape[1]:].numpy()
    assert discarded_events(np.concatenate([prompt[0].numpy(), raw]), count_from=prompt.shape[1])["total"] > 20


def test_greedy_takes_the_argmax_of_the_masked_logits():
    model = Bigram(seed=1)
    ids = generate(model, None, 200)[0]
    state, last = PerformanceState(None), torch.tensor([SHIFT_1S])
    for token in ids:
        assert int(token) == int(state.mask(model.table[last]).argmax(-1))
        state.update(token[None])
        last = token[None]


def test_scores_are_log_probabilities_under_the_masks():
    model = Bigram(seed=2)
    ids, scores = generate(model, None, 50, do_sample=True, seed=3, return_scores=True)
    state, last, total = PerformanceState(None), torch.tensor([SHIFT_1S]), 0.0
    for token in ids[0]:
        total += float(state.mask(model.table[last]).log_softmax(-1)[0, token])
        state.update(token[None])
        last = token[None]
    assert scores[0].item() == pytest.approx(total, abs=1e-3)


def test_several_sequences_per_prompt_each_follow_their_own_state():
    ids = generate(Bigram(), torch.tensor([[60, 300]]), 300, do_sample=True, num_return_sequences=3, seed=1)
    assert ids.shape == (3, 302) and not torch.equal(ids[0], ids[1])
    for row in ids:
        assert_nothing_discarded(np.array([60, 300]), row[2:].numpy())
