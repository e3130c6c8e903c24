"""One turn of a session (`Turn`: a phrase and its answer) and the latency figures drawn from turns.

A turn's latency is from the hand-over moment to its first answer note-on leaving the output port;
the times in between (the listener wakes, the phrase is fed, the first note is decoded and queued)
show where it goes. `stats` gives the percentiles the benchmark and tests report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from amadeus.live.phrase import Phrase
from amadeus.live.stream import Note


@dataclass
class Turn:
    """One phrase and its answer, with the figures the latency report needs."""

    index: int
    handover: float  # monotonic time of the hand-over (silence timer expiry, or controller press)
    phrase: Phrase
    prompt_ids: list[int] = field(default_factory=list)
    warm_ids: int = 0  # events already in the model's state at the hand-over
    reprimed: bool = False  # the warm prefix disagreed with the final encoding (should not happen)
    answer_ids: list[int] = field(default_factory=list)
    origin: float | None = None  # monotonic time of the answer's step 0 (its first note-on)
    first_step: int = 0  # the step of the first note-on (leading time shifts are not waited out)
    notes: list[Note] = field(default_factory=list)
    first_note_sent: float | None = None
    interrupted: bool = False
    # Where the hand-over latency goes (monotonic times): the listener wakes, the phrase is fed, the first
    # note-on is decoded and queued, then the scheduler sends it (first_note_sent).
    woke: float | None = None
    primed: float | None = None
    first_queued: float | None = None
    first_tokens: int = 0  # events sampled until the first note-on could be released (its step complete)
    generated: float | None = None  # the producer sampled its last event (the answer may still be playing)
    ended: float | None = None  # the answer was over: played out, interrupted or stopped
    asked: float | None = None  # when the answer was asked for, if not at the hand-over (answered again)

    @property
    def latency(self) -> float | None:
        """Seconds from the hand-over (or the request to answer again) to the first answer note-on."""
        if self.first_note_sent is None:
            return None
        return self.first_note_sent - (self.asked if self.asked is not None else self.handover)


def describe_turn(turn: Turn) -> str:
    """The line the session logs when a turn is over."""
    lat = "no note" if turn.latency is None else f"first note {turn.latency * 1000:.1f} ms after hand-over"
    ons = sum(1 for n in turn.notes if n.kind == "on")
    extra = ", interrupted" if turn.interrupted else ""
    return (f"turn {turn.index + 1}: phrase {len(turn.prompt_ids)} events ({turn.warm_ids} primed while "
            f"playing), answer {len(turn.answer_ids)} events / {ons} notes, {lat}{extra}")


def stats(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and max (nearest-rank percentiles) of `values`, in the values' unit."""
    if not values:
        return {"n": 0}
    s = sorted(values)

    def pct(q: float) -> float:
        return s[min(len(s) - 1, max(0, int(-(-q * len(s) // 100)) - 1))]

    return {"n": len(s), "p50": pct(50), "p95": pct(95), "p99": pct(99), "max": s[-1]}
