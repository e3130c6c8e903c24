"""The options of a live session (`LiveConfig`), checked when it is built, and the hand-over choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amadeus.errors import UserError
from amadeus.live.ports import ALL_NOTES_OFF, SUSTAIN

# Where takes go by default: `amadeus live` with nothing to hear the answer on, and `amadeus serve`.
DEFAULT_TAKES = "takes"
LEARN_FOLDER = "my-playing"  # under it, the studio's kept phrases (the player's track alone): learn my playing


@dataclass
class LiveConfig:
    silence: float = 0.8  # seconds all keys and the pedal must be up before the model answers
    handover: str = "silence"  # "silence", or "ccN" (e.g. "cc67"): pressing controller N hands over
    seconds: float = 10.0  # length of each answer (seconds of music from its first note)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.95  # the pipeline's generate.top_p (tests/test_cli_args.py)
    seed: int | None = None
    channel: int = 0  # MIDI channel of the answer
    echo: bool = False  # also send the player's input to the output (for --input-file with --synth)
    barge_in: bool = True  # a key pressed during the answer stops it and starts the next phrase
    warm: bool = True  # prime while the player plays (else one prefill at the hand-over)
    prime_interval: float = 0.05  # seconds between priming passes while listening
    lookahead: float = 1.0  # how far (seconds) generation may run ahead of playback
    drop_late: float = 0.1  # a note-on this late (s) is skipped, as Aria-Duet drops > 100 ms late messages
    max_prompt_events: int = 0  # 0 = whole phrase; else only the last N events prime the model (one prefill)
    turns: int = 0  # stop after this many answers (0 = until Ctrl-C / stop())
    handover_hint: float = 2.0  # with a hand-over controller: quiet this long (s), say the model waits for it
    rules: Any = None  # amadeus.playing_rules.PlayingRules for the answers (None = no musician's rule)

    def __post_init__(self) -> None:
        self.handover_cc = parse_handover(self.handover)
        from amadeus import sampling

        sampling.check_args(max_new_tokens=1, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                            do_sample=True)
        if not self.silence > 0:
            raise UserError(f"live: --silence must be > 0 ms, got {self.silence * 1000:g}")
        if not self.seconds > 0:
            raise UserError(f"live: --seconds must be > 0, got {self.seconds:g}")
        if not 0 <= self.channel <= 15:
            raise UserError(f"live: --channel must be 0..15, got {self.channel}")


def parse_handover(text: str) -> int | None:
    """"silence" -> None; "cc67" / "67" -> 67. CC64 (sustain) cannot be the hand-over pedal."""
    text = text.strip().lower()
    if text == "silence":
        return None
    number = text[2:] if text.startswith("cc") else text
    if not number.isdigit() or not 0 <= int(number) <= 127 or int(number) in (SUSTAIN, ALL_NOTES_OFF):
        raise UserError(f"live: --handover {text!r} is invalid; use 'silence' or 'ccN' with N in 0..127 other "
                        "than 64 (sustain) and 123, e.g. cc67 (soft pedal)")
    return int(number)
