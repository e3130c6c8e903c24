"""The musician's rules: parsing and checking, velocity bins as the codec writes them, and the
control vector a conditional Performance RNN receives."""

from __future__ import annotations

import numpy as np
import pretty_midi
import pytest
import torch

from amadeus import codec
from amadeus.controls import DENSITY, HISTOGRAM, control_vector, density_bin
from amadeus.errors import UserError
from amadeus.keys import Key
from amadeus.playing_rules import PlayingRules, RuleError, note_name, note_number, prompt_controls, velocity_bin
from amadeus.sampling import generate
from amadeus.vocab import NOTE_OFF, VELOCITY, shift_id


@pytest.mark.parametrize(("text", "pitch"), [
    ("C4", 60), ("c4", 60), ("A0", 21), ("C8", 108), ("C-1", 0), ("G9", 127), ("F#2", 42), ("Bb1", 34),
    ("Eb5", 75), (60, 60), ("36", 36), (" 0 ", 0),
])
def test_note_names_and_numbers(text, pitch):
    assert note_number(text) == pitch
    assert note_number(note_name(pitch)) == pitch


@pytest.mark.parametrize("bad", ["H2", "C", "C10", 128, -1, "G#9", True, 60.5])
def test_bad_pitches_name_the_rule_and_the_form(bad):
    with pytest.raises(RuleError, match=r"lowest: .* not allowed; use a MIDI number 0..127 or a note name"):
        PlayingRules(lowest=bad)


def test_rules_are_normalised():
    rules = PlayingRules(key="f# MAJOR", key_strength="2.5", lowest="C2", highest="84", max_polyphony="4",
                         velocity_low="40", max_silence="1.5", controls="None")
    assert rules.key == "F# major" and rules.fixed_key == Key(6, "major")
    assert rules.key_strength == 2.5 and rules.lowest == 36 and rules.highest == 84
    assert rules.max_polyphony == 4 and rules.velocity_low == 40 and rules.max_silence == 1.5
    assert rules.controls == "none"
    assert PlayingRules(key="AUTO").key == "auto" and PlayingRules(key="auto").fixed_key is None
    assert PlayingRules() == PlayingRules(key=None, key_strength="lock", controls="prompt")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"key": "H minor"}, "key"), ({"key_strength": "soft"}, "key_strength"), ({"key_strength": -1}, "key_strength"),
    ({"lowest": "C5", "highest": "C4"}, "lowest"), ({"max_polyphony": 0}, "max_polyphony"),
    ({"max_polyphony": 2.5}, "max_polyphony"), ({"velocity_low": 0}, "velocity_low"),
    ({"velocity_high": 128}, "velocity_high"), ({"velocity_low": 90, "velocity_high": 40}, "velocity_low"),
    ({"max_silence": 0}, "max_silence"), ({"max_note_seconds": 0.001}, "max_note_seconds"),
    ({"controls": "sometimes"}, "controls"), ({"controls": [0.5] * 12}, "controls"),
    ({"key": "C", "lowest": "C#4", "highest": "C#4"}, "key"),
])
def test_bad_values_are_one_line_naming_the_rule(kwargs, field):
    with pytest.raises(RuleError) as err:
        PlayingRules(**kwargs)
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")
    assert "\n" not in str(err.value) and isinstance(err.value, UserError)
    assert str(err.value.named("--flag")).startswith("--flag: ")


def test_from_dict_names_where_the_rule_was_written():
    assert PlayingRules.from_dict({"key": "C", "lowest": 40}) == PlayingRules(key="C", lowest=40)
    with pytest.raises(UserError, match=r"^generate.rules.lowest: 'Q9'"):
        PlayingRules.from_dict({"lowest": "Q9"}, "generate.rules")
    with pytest.raises(UserError, match=r"generate.rules.loudest: unknown rule; allowed: key, "):
        PlayingRules.from_dict({"loudest": 3}, "generate.rules")


@pytest.mark.parametrize("flavour", codec.FLAVOURS)
def test_velocity_bin_is_what_the_codec_writes(flavour):
    notes = np.arange(1, 128)
    ids = codec.encode_notes(np.full(127, 60), notes * 1.0, notes * 1.0 + 0.5, notes, flavour)
    written, current = [], 0  # perceiver-io writes no event before a first note of bin 0
    for i in ids.tolist():     # the bin in force at each note-on
        if i >= VELOCITY:
            current = i - VELOCITY
        elif i < NOTE_OFF:
            written.append(current)
    assert written == [velocity_bin(v, flavour) for v in notes.tolist()]


@pytest.mark.parametrize("flavour", codec.FLAVOURS)
def test_velocity_bins_are_those_the_decoder_plays_inside_the_range(flavour):
    first = 0 if flavour == "perceiver-io" else 1
    played = np.array([codec.velocity_of_bin(b + first, flavour) for b in range(32)])
    bins = PlayingRules(velocity_low=40, velocity_high=100).velocity_bins(flavour)
    assert (played[bins] >= 40).all() and (played[bins] <= 100).all()
    assert ((played >= 40) & (played <= 100) == bins).all()
    narrow = PlayingRules(velocity_low=42, velocity_high=43).velocity_bins(flavour)
    assert narrow.sum() == 1 and narrow[velocity_bin(42, flavour)]  # too narrow to hold a played bin
    assert PlayingRules().velocity_bins(flavour).all()


def test_pitch_allowed_combines_register_and_locked_key():
    rules = PlayingRules(key="C", lowest="C4", highest="C5")
    allowed = np.flatnonzero(rules.pitch_allowed())
    assert allowed.tolist() == [60, 62, 64, 65, 67, 69, 71, 72]
    assert np.flatnonzero(PlayingRules(key="C", key_strength=1.0, lowest=60, highest=62).pitch_allowed()).tolist() \
        == [60, 61, 62]  # a soft key masks nothing
    minor = np.flatnonzero(PlayingRules(key="auto").pitch_allowed(Key(9, "minor")) [57:69]) + 57
    assert minor.tolist() == [57, 59, 60, 62, 64, 65, 67, 68]  # A minor with its raised 7th (G#)


# --- controls ----------------------------------------------------------------------------------

def test_prompt_controls_are_the_prompts_pitch_classes_and_density():
    ids = []
    for p in (60, 64, 67, 60):  # 4 note-ons over 4 s: 2 per 2 s
        ids += [p, shift_id(100), NOTE_OFF + p]
    vector = prompt_controls(np.array(ids), PlayingRules())
    hist = np.zeros(12)
    hist[[0, 4, 7]] = [2, 1, 1]
    assert np.allclose(vector[HISTOGRAM], hist / 4)
    assert vector[DENSITY].argmax() == density_bin(2)
    short = prompt_controls(np.array([60, 62, 64, shift_id(50)]), PlayingRules())  # under 2 s: its count
    assert short[DENSITY].argmax() == density_bin(3)


def test_controls_from_a_named_key_none_and_explicit():
    ids = np.array([61, shift_id(100), NOTE_OFF + 61])
    keyed = prompt_controls(ids, PlayingRules(key="D major"))
    assert np.allclose(keyed[HISTOGRAM], Key(2, "major").pitch_class_mask() / 7)
    assert prompt_controls(ids, PlayingRules(controls="none")) is None
    assert prompt_controls(np.zeros(0), PlayingRules()) is None   # nothing to go on: unconditioned
    assert prompt_controls(np.zeros(0), PlayingRules(key="C"))[HISTOGRAM].sum() == pytest.approx(1.0)
    explicit = control_vector(np.eye(12)[5], 20)
    assert np.array_equal(prompt_controls(ids, PlayingRules(controls=explicit)), explicit)


class Spy(torch.nn.Module):
    """Records what prefill receives; uniform logits."""

    family = "spy"

    def __init__(self, uses_controls: bool):
        super().__init__()
        self.uses_controls = uses_controls
        self.received = None

    def prefill(self, ids, controls=None):
        self.received = controls
        return torch.zeros(ids.shape[0], 388), None

    def step(self, ids, state):
        return torch.zeros(ids.shape[0], 388), None

    def reorder_state(self, state, index):
        return state


def test_generate_passes_prompt_controls_to_a_conditional_model():
    prompt = torch.tensor([[60, shift_id(100), NOTE_OFF + 60, 64, shift_id(100)]] * 2)
    spy = Spy(uses_controls=True)
    generate(spy, prompt, 3, do_sample=True, seed=0)
    expect = prompt_controls(prompt[0].numpy(), PlayingRules())
    assert spy.received.shape == (2, 24) and np.allclose(spy.received[1].numpy(), expect)
    generate(spy, prompt, 3, do_sample=True, seed=0, num_return_sequences=3)
    assert spy.received.shape == (6, 24)
    generate(spy, prompt, 3, rules=PlayingRules(controls="none"))
    assert spy.received is None
    mine = torch.ones(2, 24) / 24
    generate(spy, prompt, 3, model_kwargs={"controls": mine})  # the caller's own controls win
    assert spy.received is mine
    generate(spy, prompt, 3, rules=None)  # raw decoding adds nothing
    assert spy.received is None
    plain = Spy(uses_controls=False)
    generate(plain, prompt, 3)
    assert plain.received is None
    with pytest.raises(UserError, match="trained without them"):
        generate(plain, prompt, 3, rules=PlayingRules(controls=control_vector()))


def test_a_real_conditional_model_takes_the_controls():
    from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig

    torch.manual_seed(0)
    model = PerformanceRNN(PerformanceRNNConfig(embed_dim=8, input_size=16, hidden_size=16, num_layers=1,
                                                dropout=0.0, controls=True)).eval()
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(80, 60 + 2 * i, i * 0.2, i * 0.2 + 0.3) for i in range(10)]
    pm.instruments.append(piano)
    prompt = torch.as_tensor(codec.encode(pm).astype(np.int64))
    ids, with_controls = generate(model, prompt, 40, do_sample=True, seed=0, return_scores=True)
    _, without = generate(model, prompt, 40, do_sample=True, seed=0, rules=PlayingRules(controls="none"),
                          return_scores=True)
    assert abs(float(with_controls - without)) > 1e-3  # the controls reach the model's logits
