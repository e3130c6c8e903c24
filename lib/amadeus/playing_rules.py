"""What a musician can ask of a continuation: a key, a register, how many notes at once, how loud,
how long a rest or a note may last, and what to tell a conditional model.

    rules = PlayingRules(key="F# major", lowest="C3", highest="C6", max_polyphony=4,
                         velocity_low=40, velocity_high=90, max_silence=2.0)
    ids = sampling.generate(model, prompt, 1000, do_sample=True, rules=rules)

Every field defaults to "no rule". The sampler enforces the rules by masking events before each
draw (amadeus.performance_state), so they hold exactly, not on average; `key_strength` set to a number
is the one soft rule (a logit penalty). Values are checked when the rules are made: a bad one raises
`RuleError` (a UserError) naming the field and what it accepts, and the CLI names its flag instead.

Pitches are MIDI numbers or note names in scientific pitch notation (C4 = 60, middle C; A0 = 21 is
the piano's lowest key, C8 = 108 its highest). Velocities are MIDI velocities 1..127; the sampler
allows the velocity bins the codec writes for them (see `velocity_bin`). Keys are parsed by
amadeus.keys ("F# major", "Bb minor", "C"); "auto" estimates the key from the prompt.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from amadeus.codec import velocity_of_bin
from amadeus.controls import CONTROL_DIM, control_vector
from amadeus.errors import UserError
from amadeus.keys import Key, KeyNameError, parse_key
from amadeus.params import knob
from amadeus.vocab import NOTE_OFF, NUM_PITCHES, NUM_VELOCITY_BINS, STEPS_PER_SECOND, VELOCITY_BIN_SIZE, event_seconds

AUTO_KEY = "auto"
LOCK = "lock"
CONTROL_MODES = ("prompt", "none")

_NOTE_NAME = re.compile(r"([a-g])([#♯b♭]?)(-?\d+)")
_PITCH_CLASS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_ACCIDENTAL = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


class RuleError(UserError):
    """A rule value outside what it accepts; `field` names the rule, `allowed` says what it takes."""

    def __init__(self, field: str, value: Any, allowed: str, subject: str | None = None):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{subject or field}: {value!r} is not allowed; {allowed}")

    def named(self, subject: str) -> RuleError:
        """The same error with another name for the rule (a CLI flag, a params.yaml key)."""
        return RuleError(self.field, self.value, self.allowed, subject)


def note_number(value: int | str, field: str = "pitch") -> int:
    """MIDI pitch 0..127 of a number or a note name ("C4" = 60, "F#2", "Bb1", "C-1" = 0)."""
    allowed = "use a MIDI number 0..127 or a note name such as C2, F#4, Bb5 (C4 = 60)"
    if isinstance(value, bool):
        raise RuleError(field, value, allowed)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value < NUM_PITCHES:
            raise RuleError(field, value, allowed)
        return value
    match = _NOTE_NAME.fullmatch(str(value).strip().lower())
    if match is None:
        raise RuleError(field, value, allowed)
    letter, accidental, octave = match.groups()
    pitch = 12 * (int(octave) + 1) + _PITCH_CLASS[letter] + _ACCIDENTAL[accidental]
    if not 0 <= pitch < NUM_PITCHES:
        raise RuleError(field, value, allowed)
    return pitch


def note_name(pitch: int) -> str:
    """Scientific pitch name of a MIDI pitch (60 -> "C4")."""
    return f"{_NAMES[pitch % 12]}{pitch // 12 - 1}"


def velocity_bin(velocity: int, flavour: str = "magenta") -> int:
    """The velocity bin (0..31: its event is VELOCITY + bin) the codec writes for a MIDI velocity.

    As codec.encode_notes: magenta bins velocities 1-4, 5-8, ..., 125-127 (note_seq, 32 bins of 4);
    perceiver-io takes velocity // 4 (krasserm's midi_processor).
    """
    velocity = min(max(int(velocity), 1), 127)
    return velocity // VELOCITY_BIN_SIZE if flavour == "perceiver-io" else (velocity - 1) // VELOCITY_BIN_SIZE


def _number(field: str, value: Any, allowed: str, *, integer: bool = False, low: float | None = None,
            high: float | None = None) -> float | int:
    given = value
    if isinstance(value, str):  # from a command line
        try:
            value = float(value)
        except ValueError:
            raise RuleError(field, given, allowed) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (integer and not float(value).is_integer()):
        raise RuleError(field, given, allowed)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RuleError(field, given, allowed)
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class PlayingRules:
    """The musician's rules for a continuation; every field's default is "no rule".

    Checked and normalised when made (pitches become MIDI numbers, keys their canonical names).
    `max_note_seconds` only ever shortens the decoder's own cap (codec max_note_seconds, 5 s).
    """

    key: str | None = knob(None, help="a key name ('F# major', 'Bb minor', 'C'), 'auto' (from the prompt), "
                                      "or none")
    key_strength: str | float = knob(LOCK, help="'lock': out-of-key notes are never played; a number: a logit "
                                                "penalty for them (0 = none)")
    lowest: int | str | None = knob(None, help="lowest note played: MIDI number or name (C4 = 60)")
    highest: int | str | None = knob(None, help="highest note played: MIDI number or name")
    max_polyphony: int | None = knob(None, min=1, help="at most this many notes sounding at once")
    velocity_low: int | None = knob(None, min=1, max=127, help="softest MIDI velocity played")
    velocity_high: int | None = knob(None, min=1, max=127, help="loudest MIDI velocity played")
    max_silence: float | None = knob(None, gt=0, help="seconds a rest may last at most")
    max_note_seconds: float | None = knob(None, gt=0, help="seconds a note may sound at most "
                                                           "(the decoder's cap if shorter)")
    controls: str | tuple[float, ...] = knob("prompt", help="conditional Performance RNN: 'prompt' (controls "
                                                            "from the prompt), 'none', or 24 numbers")

    def __post_init__(self):
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.key is not None:
            if str(self.key).strip().lower() == AUTO_KEY:
                put("key", AUTO_KEY)
            else:
                try:
                    put("key", parse_key(self.key).name)
                except KeyNameError:
                    raise RuleError("key", self.key, "use a key name such as 'F# major', 'Bb minor', 'C', "
                                                     "or 'auto' (estimated from the prompt)") from None
        strength = self.key_strength
        if not (isinstance(strength, str) and strength.strip().lower() == LOCK):
            put("key_strength", _number("key_strength", strength, "use 'lock' or a logit penalty >= 0", low=0.0))
        else:
            put("key_strength", LOCK)
        for name in ("lowest", "highest"):
            if getattr(self, name) is not None:
                put(name, note_number(getattr(self, name), name))
        if self.lowest is not None and self.highest is not None and self.lowest > self.highest:
            raise RuleError("lowest", note_name(self.lowest),
                            f"it must not be above highest ({note_name(self.highest)})")
        if self.max_polyphony is not None:
            put("max_polyphony", _number("max_polyphony", self.max_polyphony, "use an integer 1..128",
                                         integer=True, low=1, high=NUM_PITCHES))
        for name in ("velocity_low", "velocity_high"):
            if getattr(self, name) is not None:
                put(name, _number(name, getattr(self, name), "use a MIDI velocity 1..127", integer=True,
                                  low=1, high=127))
        if self.velocity_low is not None and self.velocity_high is not None \
                and self.velocity_low > self.velocity_high:
            raise RuleError("velocity_low", self.velocity_low,
                            f"it must not exceed velocity_high ({self.velocity_high})")
        one_step = 1 / STEPS_PER_SECOND
        for name in ("max_silence", "max_note_seconds"):
            if getattr(self, name) is not None:
                put(name, _number(name, getattr(self, name), f"use a number of seconds >= {one_step}",
                                  low=one_step))
        controls = self.controls
        if isinstance(controls, str):
            if controls.strip().lower() not in CONTROL_MODES:
                raise RuleError("controls", controls, f"use {' or '.join(CONTROL_MODES)}, or {CONTROL_DIM} numbers "
                                                      "(amadeus.controls layout)")
            put("controls", controls.strip().lower())
        else:
            vector = np.asarray(controls, dtype=np.float64).reshape(-1) if controls is not None else np.zeros(0)
            if vector.shape != (CONTROL_DIM,) or not np.isfinite(vector).all() or (vector < 0).any():
                raise RuleError("controls", controls, f"use {' or '.join(CONTROL_MODES)}, or {CONTROL_DIM} "
                                                      "non-negative numbers (amadeus.controls layout)")
            put("controls", tuple(float(v) for v in vector))
        if self.fixed_key is not None and self.key_strength == LOCK and not self.pitch_allowed().any():
            raise RuleError("key", self.key, f"no note from {note_name(self.lowest or 0)} to "
                                             f"{note_name(127 if self.highest is None else self.highest)} is in it")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, where: str = "rules") -> PlayingRules:
        """Rules from a mapping (e.g. a params.yaml section); errors name `where.field`."""
        raw = dict(raw or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise UserError(f"{where}.{unknown[0]}: unknown rule; allowed: {', '.join(names)}")
        try:
            return cls(**raw)
        except RuleError as e:
            raise e.named(f"{where}.{e.field}") from None

    @property
    def fixed_key(self) -> Key | None:
        """The key named in the rules (None for no key or 'auto')."""
        return None if self.key in (None, AUTO_KEY) else parse_key(self.key)

    @property
    def restricts_velocity(self) -> bool:
        return self.velocity_low is not None or self.velocity_high is not None

    def pitch_allowed(self, key: Key | None = None) -> np.ndarray:
        """bool [128]: pitches a note-on may strike under the register and, when locked, the key
        (`key` resolves 'auto'; default: the fixed key)."""
        allowed = np.zeros(NUM_PITCHES, dtype=bool)
        allowed[self.lowest or 0:(NUM_PITCHES - 1 if self.highest is None else self.highest) + 1] = True
        key = key or self.fixed_key
        if key is not None and self.key_strength == LOCK:
            allowed &= key.pitch_class_mask()[np.arange(NUM_PITCHES) % 12]
        return allowed

    def velocity_bins(self, flavour: str = "magenta") -> np.ndarray:
        """bool [32]: the velocity bins allowed (index = event id - VELOCITY): those the decoder plays
        at a velocity inside the range; for a range too narrow to hold one, the bins the codec writes
        for its velocities."""
        low, high = self.velocity_low or 1, 127 if self.velocity_high is None else self.velocity_high
        first = 0 if flavour == "perceiver-io" else 1  # the codec's number of bin 0
        played = np.array([velocity_of_bin(b + first, flavour) for b in range(NUM_VELOCITY_BINS)])
        allowed = (played >= low) & (played <= high)
        if not allowed.any():
            allowed[velocity_bin(low, flavour):velocity_bin(high, flavour) + 1] = True
        return allowed

    def velocity_allowed(self, velocity: int) -> bool:
        """Whether a MIDI velocity lies in the range (for the decoder's default before any velocity event)."""
        return (self.velocity_low or 1) <= velocity <= (127 if self.velocity_high is None else self.velocity_high)


DEFAULT_RULES = PlayingRules()  # no musician rule: only the decoder's consistency (amadeus.performance_state)


def prompt_controls(prompt_ids: np.ndarray, rules: PlayingRules) -> np.ndarray | None:
    """The [24] control vector `rules.controls` asks for, given one prompt; None = unconditioned.

    "prompt": the pitch-class histogram of the prompt's note-ons (or, when the rules name a key, that
    key's scale, evenly weighted) and its note density (note-ons per 2 s over the prompt's length, or
    over 2 s if shorter), as amadeus.controls computes them for training; an empty prompt without a
    named key gives None. "none": None. Explicit numbers are returned as they are.
    """
    if rules.controls == "none":
        return None
    if not isinstance(rules.controls, str):
        return np.asarray(rules.controls, dtype=np.float32)
    ids = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    ons = ids[ids < NOTE_OFF]
    key = rules.fixed_key
    if key is not None:
        histogram = key.pitch_class_mask().astype(np.float64)
    elif len(ons):
        histogram = np.bincount(ons % 12, minlength=12).astype(np.float64)
    else:
        return None
    density = None
    if len(ons):
        density = round(len(ons) * 2.0 / max(event_seconds(ids), 2.0))
    return control_vector(histogram, density)
