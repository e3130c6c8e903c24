"""A short readable summary of the pipeline's metrics (`amadeus report`, printed by `make repro`).

`dvc metrics show` lists the headline numbers (metrics/); this prints the figures a person looks at
first from the full results (output/metrics/), one line per stage, family and precision, with the
speeds of the last run on this machine (timings/, which neither DVC nor git tracks) where present;
the evaluation's full tables are in output/metrics/evaluate.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from amadeus.errors import main_entry
from amadeus.pipeline import paths


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stage_files(folder: Path, stage: str) -> list[tuple[str, Path]]:
    """(source or family, path) of every metrics file of a per-source or per-family stage in `folder`."""
    pattern = paths.metrics_file(stage, "*").name
    return [(path.stem.removeprefix(f"{stage}_"), path) for path in sorted(folder.glob(pattern))]


def summary(metrics_dir: str | Path | None = None, timings_dir: str | Path | None = None) -> str:
    """The summary of the metrics files in `metrics_dir` (default: the pipeline's output/metrics) and the
    timings in `timings_dir` (default: the pipeline's timings/ when metrics_dir is the default, else none)."""
    folder = Path(metrics_dir) if metrics_dir is not None else paths.metrics_dir()
    if timings_dir is None and metrics_dir is None:
        timings_dir = paths.timings_file("x").parent
    timed = Path(timings_dir) if timings_dir is not None else None

    def timing(stage: str, name: str) -> dict:
        return _load(timed / paths.timings_file(stage, name).name) if timed is not None else {}

    lines = []
    for source, path in _stage_files(folder, "preprocess"):
        m, t = _load(path), timing("preprocess", source)
        speed = f", {t['notes_per_second']:,} notes/s" if "notes_per_second" in t else ""
        lines.append(f"preprocess {source}: {m.get('files_ok')}/{m.get('files_total')} "
                     f"files, {m.get('notes', 0):,} notes, {m.get('events', 0):,} events{speed}")
    for family, path in _stage_files(folder, "train"):
        m, t = _load(path), timing("train", family)
        if m.get("unigram_nll"):
            below = 100 * (1 - m["val_nll"] / m["unigram_nll"])
            stopped = m.get("stopped_by", "?")
            if stopped == "max_seconds":
                stopped = "THE TIME CAP train.max_seconds: cut short, the result depends on the machine's speed"
            speed = (f", last run {t['seconds_in_steps']:.0f} s in steps ({t['tokens_per_second']:,.0f} tokens/s)"
                     if "tokens_per_second" in t else "")
            lines.append(f"train {family}: {m['parameters']:,} parameters, {m['steps']} steps (stopped by "
                         f"{stopped}){speed}, val_nll {m['val_nll']:.3f} vs unigram {m['unigram_nll']:.3f} "
                         f"({below:.1f}% below)")
    for family, path in _stage_files(folder, "quantize"):
        m, t = _load(path), timing("quantize", family)
        if m:
            speed = (f", {t['tokens_per_second_fp32']:,.0f} -> {t['tokens_per_second_int8']:,.0f} tokens/s at "
                     "batch 1" if "tokens_per_second_int8" in t else "")
            lines.append(f"quantize {family}: size x{m['size_ratio']}, NLL on quantize's windows "
                         f"{m['val_nll_fp32']:.4f} -> {m['val_nll_int8']:.4f} ({100 * m['nll_delta_rel']:+.2f}%)"
                         + speed)
    for family, path in _stage_files(folder, "generate"):
        m, t = _load(path), timing("generate", family)
        for precision, p in m.items():
            if isinstance(p, dict):  # one entry per precision generated, beside the first one's figures
                evals = f" ({p['eval_continuations']} of held-out prompts)" if p.get("eval_continuations") else ""
                s = t.get(precision) or {}
                speed = (f", {s['tokens_per_second']:,.0f} events/s, {s['real_time_factor']:.1f}x real time"
                         if "tokens_per_second" in s else "")
                wall = f", {s['wall_seconds']:.0f} s in all" if "wall_seconds" in s else ""
                lines.append(f"generate {family} {precision}: {p['pieces']} pieces{evals}{speed}{wall}")
    for family, path in _stage_files(folder, "score"):
        for precision, p in _load(path).items():
            if isinstance(p, dict) and precision != "settings":
                lines.append(f"score {family} {precision}: " + _score_line(p))
    evaluation = _load(folder / paths.metrics_file("evaluate").name)
    for family, by_precision in (evaluation.get("models") or {}).items():
        for precision, entry in by_precision.items():
            lines.append(f"evaluate {family} {precision}: " + (entry.get("note") or _evaluate_line(entry)))
    anchors = evaluation.get("mgeval")
    if anchors:
        lines.append(f"evaluate anchors: mean overlap {_interval(anchors['ceiling'], 'mean_overlap')} for the train "
                     f"pieces, {_interval(anchors['floor'], 'mean_overlap')} for random ids "
                     f"(tables: {paths.metrics_file('evaluate', suffix='.md').as_posix()})")
    return "\n".join(lines) if lines else f"no metrics in {folder} yet: run `dvc repro`"


def _score_line(p: dict) -> str:
    """Windowed NLL per split, then the test split's teacher-forced NLL per class and with the prior."""
    windowed = [(split, e) for split, e in p.items() if isinstance(e, dict) and e.get("nll") is not None]
    parts = [f"{split} NLL {e['nll']:.3f}" for split, e in windowed]
    if windowed and "nll_windows" in windowed[0][1]:  # named for its windows: train's val_nll uses others
        first = windowed[0][1]
        parts[-1] += f" (score's {first['nll_windows']} windows of {first['nll_window']} events per split)"
    test = p.get("test") or next((e for e in p.values() if isinstance(e, dict) and "raw_nll" in e), None)
    if test and "raw_nll" in test:
        classes = test["class_nll"]
        parts.append("per class " + " ".join(f"{name} {c['raw']:.2f}" for name, c in classes.items()
                                             if c.get("raw") is not None))
        allowed = f"allowed events {test['allowed_nll']:.3f}"
        if "allowed_prior_nll" in test:
            allowed += (f" -> {test['allowed_prior_nll']:.3f} with the release prior (note-off probability "
                        f"{test['note_off_probability']:.2f} -> {test['prior_note_off_probability']:.2f}, "
                        f"rate {test['note_off_rate']:.2f})")
        parts.append(allowed)
    return "; ".join(parts) or "no figures"


def _interval(d: dict, key: str, scale: float = 1.0, digits: int = 2, sign: str = "") -> str:
    """ "mean [low, high]" of d[key] (an interval dict, or a value with key_low / key_high beside it)."""
    value = d.get(key)
    mean, low, high = (value.get("mean"), value.get("low"), value.get("high")) if isinstance(value, dict) \
        else (value, d.get(f"{key}_low"), d.get(f"{key}_high"))
    if mean is None:
        return "-"
    text = f"{mean * scale:{sign}.{digits}f}"
    return text if low is None else f"{text} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def _evaluate_line(entry: dict) -> str:
    """Generated against real, paired: the ratios and differences that name a wall of notes, and the overlap."""
    vs = entry.get("generated_vs_real") or {}
    return (f"{entry.get('items', 0)} prompts; vs real: polyphony x{_interval(vs, 'polyphony_ratio')}, notes/s "
            f"x{_interval(vs, 'notes_per_second_ratio')}, long notes {_interval(vs, 'long_notes_diff', 100, 1, '+')} "
            f"pts, in key {_interval(vs, 'in_key_diff', 100, 1, '+')} pts; mean overlap "
            f"{_interval(entry.get('mgeval') or {}, 'mean_overlap')}")


@main_entry
def main() -> None:
    """`python -m amadeus.report`: the same summary as `amadeus report`."""
    print(summary())


if __name__ == "__main__":
    main()
