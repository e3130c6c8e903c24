"""Continuations of held-out prompts, measured against what the pianist really played next.

The evaluate stage's musical question is "does the model continue a performance as a pianist would?"
(docs/evaluation.md). `held_out_prompts` cuts prompts at offsets spread evenly over the held-out
pieces (validation and test), each with the real continuation that followed it as its reference.
`evaluate_continuations` measures the generated continuations, the real ones and a floor of random
ids with amadeus.music_stats, and gives every figure as a mean over prompts with a bootstrap 95%
interval, so two settings can be told apart, or seen not to differ. `markdown_table` renders it.

Where a prompt starts, and what it carries: the first note-on at or after its offset (an event
boundary); the prompt is the piece's events from there for `prompt_seconds`, the reference the next
`continuation_seconds`. Notes begun before the offset are not in the prompt, so their note-offs would
be stray: they are dropped, from the reference too, which then plays after the prompt exactly as the
piece did, less those notes (`EvalPrompt.held_at_offset` lists them). The velocity in force at the
offset is written first, so the first notes keep their loudness.

The continuation window is [0, continuation_seconds) after the prompt's end. Each continuation is
decoded after its prompt (notes the prompt left sounding are closed where the continuation says) and
cut to the window; one that stops short leaves a silence at the end, which counts. Notes begun in the
window give the per-note measures (long, capped, in key, notes per second, median length); every note
sounding in the window, carried ones included, gives polyphony and the longest silence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from amadeus import codec, metrics
from amadeus import music_stats as stats
from amadeus.keys import Key, estimate_key
from amadeus.vocab import (
    NOTE_OFF,
    NOTE_ON,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    cut_seconds,
    event_seconds,
    event_times,
    shift_id,
    shift_steps,
    strip_pad,
    total_steps,
)

SETS = ("generated", "real", "floor")  # the model's continuations, the pianist's, uniformly random ids
MEASURES = ("polyphony", "long_notes", "capped", "in_key", "longest_silence", "notes_per_second",
            "median_note_length", "discarded", "shared_run")
FRACTIONS = ("long_notes", "capped", "in_key", "discarded")  # 0..1 (shown as percentages)
RATIOS = ("polyphony", "notes_per_second", "median_note_length")  # compared as generated / real
DIFFERENCES = ("in_key", "long_notes", "capped", "longest_silence")  # compared as generated - real
_EPS = 1e-9  # times are multiples of 10 ms; this absorbs the float error of subtracting two of them


# --------------------------------------------------------------------------------------------------
# Prompts


@dataclass(frozen=True, eq=False)
class EvalPrompt:
    name: str                        # "<piece>@<offset>s"
    piece: str
    offset_seconds: float            # where the prompt starts in the piece (a note-on's time)
    ids: np.ndarray                  # the prompt's events, its time 0 at the offset
    reference: np.ndarray            # the real continuation: the piece's next continuation_seconds
    prompt_seconds: float
    continuation_seconds: float
    held_at_offset: tuple[int, ...]  # pitches sounding at the offset but begun before it (left out)


def held_out_prompts(pieces: Sequence[np.ndarray], names: Sequence[str], count: int = 16,
                     prompt_seconds: float = 5.0, continuation_seconds: float = 20.0,
                     seed: int = 0) -> list[EvalPrompt]:
    """Up to `count` prompts cut from the pieces (event ids), each with its real continuation.

    Prompts go to the pieces long enough for prompt + continuation in proportion to their length,
    and within a piece sit on an evenly spaced grid over all of it, shifted by a seeded phase (so
    another seed gives another prompt set), each snapped to the next note-on. Deterministic.
    """
    if len(pieces) != len(names):
        raise ValueError(f"held_out_prompts: {len(pieces)} pieces but {len(names)} names")
    if count < 1 or not prompt_seconds > 0 or not continuation_seconds > 0:
        raise ValueError("held_out_prompts: count must be >= 1 and the seconds > 0")
    prompt_steps = round(prompt_seconds * STEPS_PER_SECOND)
    window = prompt_steps + round(continuation_seconds * STEPS_PER_SECOND)
    pieces = [np.asarray(p, dtype=np.int64).ravel() for p in pieces]
    lengths = np.array([total_steps(p) for p in pieces])
    usable = np.flatnonzero(lengths >= window)
    if not len(usable):
        raise ValueError(f"held_out_prompts: no piece lasts {(window / STEPS_PER_SECOND):g} s "
                         f"(prompt {prompt_seconds:g} s + continuation {continuation_seconds:g} s)")
    rng = np.random.default_rng(seed)
    prompts = []
    for i, n in zip(usable, _apportion(count, lengths[usable]), strict=True):
        phase = rng.random()  # drawn for every usable piece, so one piece's share does not move another's
        if n == 0:
            continue
        ids, times = pieces[i], event_times(pieces[i])
        room = lengths[i] - window  # the latest offset that leaves a whole continuation
        onsets = np.unique(times[(ids >= NOTE_ON) & (ids < NOTE_OFF)])
        onsets = onsets[onsets <= room]
        if not len(onsets):
            continue
        targets = (np.arange(n) + phase) * room / n
        at = np.minimum(np.searchsorted(onsets, targets), len(onsets) - 1)  # the next note-on, else the last
        for offset in np.unique(onsets[at]).tolist():
            prompts.append(_prompt_at(ids, times, offset, prompt_steps, window, names[i]))
    return prompts


def _apportion(count: int, weights: np.ndarray) -> np.ndarray:
    """`count` split in proportion to the weights, by largest remainder (ties: the first)."""
    quota = count * weights / weights.sum()
    share = np.floor(quota).astype(np.int64)
    share[np.argsort(-(quota - share), kind="stable")[:count - share.sum()]] += 1
    return share


def _prompt_at(ids: np.ndarray, times: np.ndarray, offset: int, prompt_steps: int, window: int,
               piece: str) -> EvalPrompt:
    start = int(np.searchsorted(times, offset))  # the first event at the offset (right after a shift)
    events = cut_seconds(ids[start:], window / STEPS_PER_SECOND)
    events = _without_stray_note_offs(events)
    prompt = cut_seconds(events, prompt_steps / STEPS_PER_SECOND)
    reference = _after_steps(events, prompt_steps)
    before = ids[:start]
    velocities = np.flatnonzero((before >= VELOCITY) & (before < VOCAB_SIZE))
    if len(velocities) and not _velocity_first(prompt):
        prompt = np.concatenate([before[velocities[-1:]], prompt])
    on = np.bincount(before[before < NOTE_OFF], minlength=NOTE_OFF - NOTE_ON)
    off = np.bincount(before[(before >= NOTE_OFF) & (before < TIME_SHIFT)] - NOTE_OFF, minlength=TIME_SHIFT - NOTE_OFF)
    seconds = offset / STEPS_PER_SECOND
    return EvalPrompt(name=f"{piece}@{seconds:.2f}s", piece=piece, offset_seconds=seconds, ids=prompt,
                      reference=reference, prompt_seconds=prompt_steps / STEPS_PER_SECOND,
                      continuation_seconds=(window - prompt_steps) / STEPS_PER_SECOND,
                      held_at_offset=tuple(np.flatnonzero(on > off).tolist()))


def _velocity_first(ids: np.ndarray) -> bool:
    """True when a velocity event comes before the first note-on (or there is no note-on)."""
    vel = np.flatnonzero((ids >= VELOCITY) & (ids < VOCAB_SIZE))
    on = np.flatnonzero(ids < NOTE_OFF)
    return not len(on) or (len(vel) > 0 and vel[0] < on[0])


def _without_stray_note_offs(ids: np.ndarray) -> np.ndarray:
    """The events less note-offs of pitches with no open note (notes begun before the ids start)."""
    open_count = [0] * (NOTE_OFF - NOTE_ON)
    keep = np.ones(len(ids), dtype=bool)
    for i, event in enumerate(ids.tolist()):
        if NOTE_ON <= event < NOTE_OFF:
            open_count[event - NOTE_ON] += 1
        elif NOTE_OFF <= event < TIME_SHIFT:
            pitch = event - NOTE_OFF
            keep[i] = open_count[pitch] > 0
            open_count[pitch] -= keep[i]
    return ids[keep]


def _after_steps(ids: np.ndarray, steps: int) -> np.ndarray:
    """The events from `steps` 10 ms steps on (the complement of cut_seconds): a crossing shift keeps its rest."""
    times = event_times(ids)
    ends = times + shift_steps(ids)
    crossing = np.flatnonzero((times < steps) & (ends > steps))  # at most one shift
    head = np.array([shift_id(int(ends[c] - steps)) for c in crossing], dtype=np.int64)
    return np.concatenate([head, ids[times >= steps]])


# --------------------------------------------------------------------------------------------------
# Measures of one continuation


def continuation_notes(prompt_ids: np.ndarray, continuation_ids: np.ndarray, seconds: float,
                       cap_seconds: float, flavour: str = "magenta") -> np.ndarray:
    """Notes [N, 4] sounding in the continuation window, in seconds from its start (carried notes start < 0).

    The continuation is cut to `seconds` and decoded after its prompt with the decoder's note cap.
    """
    prompt = strip_pad(prompt_ids)
    continuation = cut_seconds(strip_pad(continuation_ids), seconds)
    decoded = codec.decode(np.concatenate([prompt, continuation]), flavour=flavour, max_note_seconds=cap_seconds)
    notes = metrics.note_array(decoded)
    notes[:, :2] -= event_seconds(prompt)
    return notes[notes[:, 1] > _EPS]


def measure(notes: np.ndarray, key: Key | None, seconds: float, cap_seconds: float,
            long_note_seconds: float = 3.0) -> dict[str, float]:
    """The note measures of one continuation (notes in seconds from its start; see the module docstring).

    NaN where undefined: the per-note measures of a window where no note begins, in_key without a key.
    """
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    notes = notes[(notes[:, 1] > _EPS) & (notes[:, 0] < seconds - _EPS)]
    begun = notes[notes[:, 0] > -_EPS]
    sounding = notes.copy()
    sounding[:, :2] = np.clip(sounding[:, :2], 0.0, seconds)
    return {
        "polyphony": stats.mean_polyphony(sounding),
        "long_notes": stats.long_note_fraction(begun, long_note_seconds),
        "capped": stats.capped_fraction(begun, cap_seconds),
        "in_key": stats.in_key_fraction(begun, key) if key is not None else math.nan,
        "longest_silence": stats.longest_silence(notes, start=0.0, end=seconds),
        "notes_per_second": len(begun) / seconds,
        "median_note_length": stats.median_note_length(begun),
    }


def _is_notes(x: np.ndarray) -> bool:
    return np.ndim(x) == 2


def _measure_one(prompt: np.ndarray, continuation: np.ndarray, key: Key | None, index: stats.SharedRunIndex,
                 seconds: float, cap_seconds: float, flavour: str, long_note_seconds: float,
                 ) -> tuple[dict[str, float], dict[str, int] | None]:
    """Measures of one continuation (event ids, or notes as continuation_notes gives them) and its discards."""
    if _is_notes(continuation):  # ids unknown: nothing to say about discards or copies
        values = measure(continuation, key, seconds, cap_seconds, long_note_seconds)
        return {**values, "discarded": math.nan, "shared_run": math.nan}, None
    events = cut_seconds(strip_pad(continuation), seconds)
    notes = continuation_notes(prompt, events, seconds, cap_seconds, flavour)
    values = measure(notes, key, seconds, cap_seconds, long_note_seconds)
    kinds = stats.discarded_events(np.concatenate([prompt, events]), cap_seconds, count_from=len(prompt))
    values["discarded"] = kinds["total"] / len(events) if len(events) else math.nan
    values["shared_run"] = float(index.longest(events))
    return values, kinds


def _event_count(continuation: np.ndarray) -> int:
    """Events of a continuation: its ids, or for notes the events their encoding has."""
    if not _is_notes(continuation):
        return len(strip_pad(continuation))
    notes = np.asarray(continuation, dtype=np.float64).reshape(-1, 4)
    notes = notes[notes[:, 0] > -_EPS]
    return len(codec.encode_notes(notes[:, 2].astype(np.int64), notes[:, 0], notes[:, 1],
                                  notes[:, 3].astype(np.int64)))


def prompt_key(prompt_ids: np.ndarray, flavour: str = "magenta") -> Key | None:
    """The prompt's Krumhansl-Schmuckler key (amadeus.keys), or None when no note of it has a length."""
    notes = metrics.note_array(codec.decode(strip_pad(prompt_ids), flavour=flavour))
    try:
        return estimate_key(notes).key
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# A set of continuations


Item = tuple[EvalPrompt | np.ndarray, np.ndarray, np.ndarray | None]  # (prompt, generated, reference)


def evaluate_continuations(items: Iterable[Item], training_pieces: Sequence[np.ndarray] | stats.SharedRunIndex,
                           cap_seconds: float, continuation_seconds: float | None = None,
                           flavour: str = "magenta", long_note_seconds: float = 3.0,
                           n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """The report of one model setting's continuations: per set, each measure's mean with a 95% interval.

    `items` are (prompt, generated, reference): the prompt an EvalPrompt or its event ids; generated
    and reference event ids (PAD is dropped), or notes as `continuation_notes` gives them (then
    `discarded` and `shared_run` are undefined); reference None takes the EvalPrompt's. The window is
    `continuation_seconds` (default: the EvalPrompts'). `cap_seconds` is the decoder's note cap.
    Sets: "generated", "real" (the references) and "floor" (per item, as many uniformly random ids
    as the generated continuation has events, after the same prompt). Per measure and set:
    {"mean", "low", "high"} over the items where it is defined (None where it is nowhere).
    "generated_vs_real" and "floor_vs_real" compare paired items: `<m>_ratio` (ratio of means) for
    RATIOS, `<m>_diff` (mean difference) for DIFFERENCES. Pass a SharedRunIndex as `training_pieces`
    to reuse it for several settings. JSON-able: NaN -> None, floats rounded to 4 decimals.
    """
    index = training_pieces if isinstance(training_pieces, stats.SharedRunIndex) \
        else stats.SharedRunIndex(training_pieces)
    values: dict[str, list[dict[str, float]]] = {name: [] for name in SETS}
    discards = {name: dict.fromkeys((*stats.DISCARD_KINDS, "total"), 0) for name in SETS}
    windows = set()
    for i, item in enumerate(items):
        prompt, generated, reference, seconds = _unpack(item, continuation_seconds, i)
        windows.add(seconds)
        if len(windows) > 1:
            raise ValueError(f"evaluate_continuations: the prompts have different continuation windows {windows}")
        key = prompt_key(prompt, flavour)
        floor = np.random.default_rng([seed, i]).integers(0, VOCAB_SIZE, _event_count(generated))
        for name, continuation in zip(SETS, (generated, reference, floor), strict=True):
            item_values, kinds = _measure_one(prompt, continuation, key, index, seconds, cap_seconds, flavour,
                                              long_note_seconds)
            values[name].append(item_values)
            for kind, count in (kinds or {}).items():
                discards[name][kind] += count
    if not values["generated"]:
        raise ValueError("evaluate_continuations: no items")

    def column(name: str, m: str) -> np.ndarray:
        return np.array([v[m] for v in values[name]], dtype=np.float64)

    report: dict = {"items": len(values["generated"]), "continuation_seconds": next(iter(windows)),
                    "cap_seconds": cap_seconds}
    for name in SETS:
        report[name] = {m: _interval(column(name, m), n_bootstrap, seed) for m in MEASURES}
    for name in ("generated", "floor"):
        comparison = {}
        for m in RATIOS:
            comparison[f"{m}_ratio"] = _paired(column(name, m), column("real", m), n_bootstrap, seed, ratio=True)
        for m in DIFFERENCES:
            comparison[f"{m}_diff"] = _paired(column(name, m), column("real", m), n_bootstrap, seed, ratio=False)
        report[f"{name}_vs_real"] = comparison
    report["silent"] = {name: int((column(name, "notes_per_second") == 0).sum()) for name in SETS}
    report["discarded_by_kind"] = discards
    return report


def _unpack(item: Item, continuation_seconds: float | None, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(prompt ids, generated, reference, window seconds) of one item."""
    prompt, generated, reference = item
    seconds = continuation_seconds
    if isinstance(prompt, EvalPrompt):
        reference = prompt.reference if reference is None else reference
        seconds = prompt.continuation_seconds if seconds is None else seconds
        prompt = prompt.ids
    if seconds is None:
        raise ValueError("evaluate_continuations: give continuation_seconds when prompts are plain ids")
    if reference is None:
        raise ValueError(f"evaluate_continuations: item {i} has no reference continuation")
    return strip_pad(prompt), generated, reference, seconds


def _rounded(x: float) -> float | None:
    return round(float(x), 4) if math.isfinite(x) else None


def _interval(values: np.ndarray, n: int, seed: int) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": None, "low": None, "high": None}
    mean, low, high = stats.bootstrap_ci(values, n=n, seed=seed)
    return {"mean": _rounded(mean), "low": _rounded(low), "high": _rounded(high)}


def _paired(candidate: np.ndarray, real: np.ndarray, n: int, seed: int, ratio: bool) -> dict[str, float | None]:
    both = np.isfinite(candidate) & np.isfinite(real)
    if not both.any():
        return {"mean": None, "low": None, "high": None}
    if not ratio:
        return _interval(candidate[both] - real[both], n, seed)
    mean, low, high = stats.bootstrap_ratio_ci(candidate[both], real[both], n=n, seed=seed)
    return {"mean": _rounded(mean), "low": _rounded(low), "high": _rounded(high)}


# --------------------------------------------------------------------------------------------------
# Markdown


_HEADINGS = {"polyphony": "polyphony", "long_notes": "long notes", "capped": "capped", "in_key": "in key",
             "longest_silence": "longest silence (s)", "notes_per_second": "notes/s",
             "median_note_length": "median length (s)", "discarded": "discarded", "shared_run": "shared run"}


def _results(report: dict, label: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """(label, result) of every evaluate_continuations result in a report nested by model and precision."""
    if "generated" in report and "items" in report:
        return [(" ".join(label) or "model", report)]
    return [found for key, value in report.items() if isinstance(value, dict)
            for found in _results(value, (*label, str(key)))]


def _cell(interval: dict, scale: float = 1.0, digits: int = 2, unit: str = "", sign: bool = False) -> str:
    """ "mean [low, high]" of an interval dict, times `scale`; "-" where undefined."""
    if interval.get("mean") is None:
        return "-"
    mean = f"{interval['mean'] * scale:{'+' if sign else ''}.{digits}f}{unit}"
    if interval.get("low") is None:
        return mean
    return f"{mean} [{interval['low'] * scale:.{digits}f}, {interval['high'] * scale:.{digits}f}]"


def _measure_cell(interval: dict, m: str, sign: bool = False) -> str:
    if m in FRACTIONS:
        return _cell(interval, 100.0, 1, "" if sign else "%", sign)
    return _cell(interval, digits=1 if m == "shared_run" else 2, sign=sign)


def markdown_table(report: dict) -> str:
    """Means and 95% intervals of a result of evaluate_continuations, or of a dict nesting several."""
    results = _results(report)
    if not results:
        raise ValueError("markdown_table: no evaluate_continuations result in the report")
    rows = [(label, result["items"], result["generated"]) for label, result in results]
    rows += [(f"{label}: floor (random ids)", result["items"], result["floor"]) for label, result in results]
    reals: list[tuple[str, int, dict]] = []  # settings evaluated on the same prompts share one row
    for label, result in results:
        if all(result["real"] != real for _, _, real in reals):
            reals.append((label, result["items"], result["real"]))
    rows += [("real continuations" + (f" ({label})" if len(reals) > 1 else ""), items, real)
             for label, items, real in reals]
    first = results[0][1]
    lines = [f"Continuations of held-out prompts, {first['continuation_seconds']:g} s each, notes capped at "
             f"{first['cap_seconds']:g} s: mean over prompts [bootstrap 95% interval].", "",
             "| set | prompts | " + " | ".join(_HEADINGS[m] for m in MEASURES) + " |",
             "|---|---:|" + "---:|" * len(MEASURES)]
    for label, items, sets in rows:
        cells = [_measure_cell(sets[m], m) for m in MEASURES]
        lines.append(f"| {label} | {items} | " + " | ".join(cells) + " |")
    names = [f"{m}_ratio" for m in RATIOS] + [f"{m}_diff" for m in DIFFERENCES]
    headings = [f"{_HEADINGS[m]} ×" for m in RATIOS] + [
        f"{_HEADINGS[m].replace(' (s)', '')} {'Δ s' if m == 'longest_silence' else 'Δ pts'}" for m in DIFFERENCES]
    lines += ["", "Against the real continuation of the same prompt (ratio of means ×, difference Δ):", "",
              "| set | " + " | ".join(headings) + " |", "|---|" + "---:|" * len(names)]
    for label, result in results:
        for what, suffix in (("generated_vs_real", ""), ("floor_vs_real", ": floor (random ids)")):
            comparison = result[what]
            cells = [_cell(comparison[f"{m}_ratio"]) for m in RATIOS]
            cells += [_measure_cell(comparison[f"{m}_diff"], m, sign=True) for m in DIFFERENCES]
            lines.append(f"| {label}{suffix} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
