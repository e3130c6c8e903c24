"""What the page's settings panel sends (`StudioSettings`), checked, and turned into a live session's options.

The page speaks in a musician's words (creativity, bars, soft / loud); this module is the one place
that maps them onto `LiveConfig` and `PlayingRules`. A bad value raises `SettingError`: one line that
names the setting as the page labels it and says what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from amadeus.errors import UserError
from amadeus.live.config import LiveConfig

# The page's "dynamics" choice -> MIDI velocities the answer may use (None: any).
DYNAMICS: dict[str, tuple[int, int] | None] = {"any": None, "soft": (20, 60), "medium": (50, 95),
                                               "loud": (85, 127)}
HANDOVERS = ("silence", "cc67")
LENGTH_UNITS = ("seconds", "bars")
MAX_SECONDS = 120.0  # an answer longer than two minutes is a piece, not a reply


class SettingError(UserError):
    """A setting the page sent that cannot be used: the message names it in the page's words."""


@dataclass
class StudioSettings:
    model: str = ""  # a model id of the server's catalogue ("" = its default)
    temperature: float = 1.0  # "creativity"
    top_p: float = 0.95  # the pipeline's generate.top_p
    length_unit: str = "seconds"
    seconds: float = 10.0
    bars: float = 4.0
    bpm: float = 120.0
    beats_per_bar: int = 4
    silence_ms: float = 800.0
    handover: str = "silence"
    key: str | None = None  # None (any), "auto", or a key name
    lowest: str | None = None
    highest: str | None = None
    max_polyphony: int | None = None
    dynamics: str = "any"
    keep_phrases: bool = False  # also save each phrase, alone, for "learn my playing"

    @classmethod
    def from_page(cls, values: Any, base: StudioSettings | None = None) -> StudioSettings:
        """`base` updated by the page's `values`; unknown keys and wrong types are refused by name."""
        if not isinstance(values, dict):
            raise SettingError("settings: expected an object of setting: value")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise SettingError(f"settings: unknown setting {unknown[0]!r}; known: {', '.join(fields)}")
        current = dataclasses.asdict(base or cls())
        for name, value in values.items():
            current[name] = _coerce(name, value, current[name], fields[name].type)
        settings = cls(**current)
        settings.check()
        return settings

    def answer_seconds(self) -> float:
        """The answer's length in seconds: bars are counted at the page's tempo and meter."""
        if self.length_unit == "bars":
            return self.bars * self.beats_per_bar * 60.0 / self.bpm
        return self.seconds

    def check(self) -> None:
        if self.length_unit not in LENGTH_UNITS:
            raise SettingError(f"length: unit {self.length_unit!r}; use one of {', '.join(LENGTH_UNITS)}")
        _in_range("creativity (temperature)", self.temperature, 0.05, 3.0)
        _in_range("top-p", self.top_p, 0.01, 1.0)
        _in_range("bars", self.bars, 0.25, 64)
        _in_range("tempo (bpm)", self.bpm, 20, 400)
        _in_range("beats per bar", self.beats_per_bar, 1, 16)
        _in_range("length (seconds)", self.answer_seconds(), 0.25, MAX_SECONDS)
        _in_range("hand-over silence (ms)", self.silence_ms, 50, 10_000)
        if self.handover not in HANDOVERS:
            raise SettingError(f"hand-over: {self.handover!r}; use one of {', '.join(HANDOVERS)}")
        if self.dynamics not in DYNAMICS:
            raise SettingError(f"dynamics: {self.dynamics!r}; use one of {', '.join(DYNAMICS)}")
        if self.max_polyphony is not None:
            _in_range("notes at once", self.max_polyphony, 1, 88)
        self.rules()  # key and register names are checked by the rules themselves

    def rules(self) -> Any:
        """The `PlayingRules` these settings ask of the answer (None: no rule at all)."""
        from amadeus.playing_rules import PlayingRules, RuleError

        velocities = DYNAMICS[self.dynamics]
        asked = {"key": self.key, "lowest": self.lowest, "highest": self.highest,
                 "max_polyphony": self.max_polyphony,
                 "velocity_low": velocities[0] if velocities else None,
                 "velocity_high": velocities[1] if velocities else None}
        if all(v is None for v in asked.values()):
            return None
        names = {"key": "key", "lowest": "lowest note", "highest": "highest note", "max_polyphony": "notes at once",
                 "velocity_low": "dynamics", "velocity_high": "dynamics"}
        try:
            return PlayingRules(**asked)
        except RuleError as e:
            raise SettingError(str(e.named(names.get(e.field, e.field)))) from None

    def live_config(self, seed: int | None = None) -> LiveConfig:
        """The live session's options for these settings (the hand-over button works with either choice)."""
        try:
            return LiveConfig(silence=self.silence_ms / 1000.0, handover=self.handover, seconds=self.answer_seconds(),
                              temperature=self.temperature, top_p=self.top_p, seed=seed, rules=self.rules(),
                              lookahead=2.0)  # the page shows the planned notes up to 2 s before they sound
        except UserError as e:
            raise SettingError(f"settings: {e}") from None


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        raise SettingError(f"{name}: {value!r} is out of range; use {low:g} to {high:g}")


def _coerce(name: str, value: Any, default: Any, kind: str) -> Any:
    """The page's JSON value as the field's type (numbers may come as strings from form inputs)."""
    if value == "" or value is None:
        if "None" in kind:
            return None
        raise SettingError(f"{name}: a value is needed")
    try:
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("int"):
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        return str(value).strip() or (None if "None" in kind else default)
    except (TypeError, ValueError, OverflowError):
        raise SettingError(f"{name}: {value!r} is not a {kind.split(' ')[0]}") from None
