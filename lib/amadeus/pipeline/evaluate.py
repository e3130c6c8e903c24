"""Stage evaluate: the generated continuations of the held-out prompts against the real ones
-> output/metrics/evaluate.json and evaluate.md.

The prompts are recomputed from the `generate:` prompt knobs (amadeus.pipeline.eval_prompts), which
gives each its reference, what the pianist played next; output/<family>/<precision>/eval/index.json
lists the continuations the generate stage made of the same prompts (a mismatch stops the stage:
the outputs are stale). Per family and precision:
- the measures of amadeus.continuation_eval (polyphony, long and capped notes, in-key fraction,
  silence, note rate and length, discarded events, runs shared with the training data), each a mean
  over prompts with a bootstrap 95% interval, for the generated continuations, the real ones and a
  floor of random ids, and the paired ratios and differences against the real ones;
- MGEval-style overlap area and KL per feature (amadeus.metrics; docs/evaluation.md) of the generated
  continuations against the real continuations, both cut into `segment_seconds` segments. The interval
  on the mean overlap resamples the prompts (the reference, the real continuations, stays fixed). A
  resample repeats some prompts, which makes its distance sample lumpier and its overlap lower, so the
  interval sits mostly below the estimate: compare two settings' intervals with each other.
Two anchors for the overlap: "ceiling", segments of the train pieces against the real continuations
(other real music: what a model that plays like a pianist, but not this pianist's next bars, would
score), and "floor", uniformly random ids after each prompt. The models' NLL is the score stage's
(output/metrics/score_<family>.json): a change of sampling settings reruns generate and this stage only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amadeus import codec, metrics
from amadeus import music_stats as stats
from amadeus.continuation_eval import EvalPrompt, continuation_notes, evaluate_continuations, markdown_table
from amadeus.data import load_split
from amadeus.errors import UserError
from amadeus.fileio import atomic_open, write_json
from amadeus.params import as_dict, build, knob, section, seed_knob
from amadeus.pipeline import paths
from amadeus.pipeline.eval_prompts import HeldOut, held_out, prompt_config
from amadeus.vocab import VOCAB_SIZE, strip_pad  # the real event ids (PAD excluded): the floor draws from these


@dataclass
class EvaluateConfig:
    """params.yaml `evaluate`: how the continuations are measured."""

    segment_seconds: float = knob(10.0, gt=0, help="continuations are cut into segments this long for MGEval")
    min_notes: int = knob(4, min=1, help="segments with fewer notes are dropped")
    max_segments: int = knob(200, min=2, help="train-split segments of the ceiling: a seeded subset beyond this")
    long_note_seconds: float = knob(3.0, gt=0, help="a note longer than this counts as long")
    bootstrap: int = knob(1000, min=10, help="resamples of the prompts for the measures' 95% intervals")
    overlap_bootstrap: int = knob(200, min=0, help="resamples for the interval on the mean overlap (0 = none)")
    seed: int = seed_knob(0)


# --------------------------------------------------------------------------------------------------
# MGEval overlap of segment sets


def window_segments(prompt: EvalPrompt, ids: np.ndarray, cap_seconds: float, flavour: str,
                    config: EvaluateConfig) -> list[np.ndarray]:
    """The segments of one continuation: its notes begun in the window (decoded after the prompt)."""
    notes = continuation_notes(prompt.ids, ids, prompt.continuation_seconds, cap_seconds, flavour)
    return metrics.segments(notes[notes[:, 0] >= 0], config.segment_seconds, config.min_notes)


def overlap(reference: dict[str, np.ndarray], groups: list[list[np.ndarray]], config: EvaluateConfig,
            what: str, salt: int) -> dict:
    """MGEval OA / KL of a candidate set against the reference features, and a bootstrap interval on the
    mean overlap that resamples the candidate's groups (one per prompt, or per segment) with replacement."""
    segs = [s for group in groups for s in group]
    if not segs:
        return {"segments": 0, "mean_overlap": None, "features": None,
                "note": f"{what}: no segment with >= {config.min_notes} notes"}
    values = metrics.features(segs)
    result = metrics.compare_sets(reference, values, seed=config.seed)
    out: dict = {"segments": len(segs),
                 "mean_overlap": round(float(np.mean([c.overlap for c in result.values()])), 4)}
    if config.overlap_bootstrap:
        owner = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        rows = [np.flatnonzero(owner == g) for g in range(len(groups))]
        rng = np.random.default_rng([config.seed, salt])
        means = []
        for _ in range(config.overlap_bootstrap):
            pick = np.concatenate([rows[g] for g in rng.integers(0, len(groups), len(groups))])
            if not len(pick):  # only groups without segments were drawn
                continue
            resampled = metrics.compare_sets(reference, {k: v[pick] for k, v in values.items()}, seed=config.seed)
            means.append(np.mean([c.overlap for c in resampled.values()]))
        low, high = np.quantile(means, [0.025, 0.975])
        out.update(mean_overlap_low=round(float(low), 4), mean_overlap_high=round(float(high), 4))
    out["features"] = {name: c.as_dict() for name, c in result.items()}
    return out


# --------------------------------------------------------------------------------------------------
# The continuations of one checkpoint


def read_continuations(folder: Path, held: HeldOut) -> tuple[dict | None, list[np.ndarray]]:
    """eval/index.json of one checkpoint and its continuations' ids, in prompt order; (None, []) when
    that precision was not generated. Stale outputs (other prompts) are an error."""
    index_path = folder / "index.json"
    if not index_path.exists():
        return None, []
    index = json.loads(index_path.read_text())
    if index.get("prompts") != held.settings:
        raise UserError(f"{index_path}: made with prompts {index.get('prompts')}, but params.yaml gives "
                        f"{held.settings}; rerun the generate stage (`dvc repro`)")
    listed = [c["name"] for c in index.get("continuations", [])]
    if index.get("skipped") is None and listed != [p.name for p in held.prompts]:
        raise UserError(f"{index_path}: lists {len(listed)} continuations, not the {len(held.prompts)} held-out "
                        "prompts; rerun the generate stage (`dvc repro`)")
    ids = []
    for entry in index.get("continuations", []):
        try:
            ids.append(np.load(folder / entry["file"], allow_pickle=False).astype(np.int64))
        except (OSError, ValueError) as e:
            raise UserError(f"{folder / entry['file']}: unreadable continuation ({type(e).__name__}); "
                            "rerun the generate stage") from None
    return index, ids


def generated_precisions(family: str, root: Path) -> list[str]:
    """The precisions the generate stage wrote eval continuations of, fp32 before int8 (sorted)."""
    family_dir = paths.family_output_dir(family, root)
    if not family_dir.is_dir():
        return []
    return sorted(p.name for p in family_dir.iterdir()
                  if (paths.eval_dir(family, p.name, root) / "index.json").is_file())


def random_continuations(held: HeldOut, lengths: list[int], seed: int) -> list[np.ndarray]:
    """Uniformly random event ids after each prompt, as many as `lengths` says: the overlap's floor."""
    return [np.random.default_rng([seed, 7, i]).integers(0, VOCAB_SIZE, n) for i, n in enumerate(lengths)]


# --------------------------------------------------------------------------------------------------
# The report


def build_report(params: dict, root: Path = Path(".")) -> dict:
    """The evaluate stage's report (what output/metrics/evaluate.json holds) for the workspace at `root`."""
    config = build(EvaluateConfig, params.get("evaluate"), "evaluate")
    families = section(params, "models")
    families = list(families) if isinstance(families, (list, dict)) else [families]
    datasets = list(section(params, "datasets"))
    cap_seconds = build(codec.CodecConfig, section(params, "codec"), "codec").max_note_seconds
    held = held_out(root, datasets, prompt_config(params.get("generate")))
    report: dict = {"prompts": {**held.settings, "prompts": len(held.prompts)}, "models": {},
                    "settings": as_dict(config)}
    if not held.prompts:
        report["note"] = "generate.eval_prompts is 0: no continuations to evaluate"
        return report
    flavour = held.flavour
    train = load_split([paths.processed_dir(name, root) for name in datasets], "train")
    shared_runs = stats.SharedRunIndex(train)

    # The reference of the overlap: the real continuations, in segments, grouped by prompt.
    real = [window_segments(p, p.reference, cap_seconds, flavour, config) for p in held.prompts]
    real_segs = [s for group in real for s in group]
    if not real_segs:
        raise UserError(f"the real continuations have no {config.segment_seconds:g}-second segment with >= "
                        f"{config.min_notes} notes: lower evaluate.segment_seconds or evaluate.min_notes")
    reference = metrics.features(real_segs)
    report["prompts"]["reference_segments"] = len(real_segs)

    for family in families:
        report["models"][family] = {}
        for precision in generated_precisions(family, root):
            folder = paths.eval_dir(family, precision, root)
            index, generated = read_continuations(folder, held)
            if index is None:
                continue
            if index.get("skipped"):
                report["models"][family][precision] = {"note": index["skipped"]}
                continue
            items = [(p, ids, None) for p, ids in zip(held.prompts, generated, strict=True)]
            entry = evaluate_continuations(items, shared_runs, cap_seconds, flavour=flavour,
                                           long_note_seconds=config.long_note_seconds,
                                           n_bootstrap=config.bootstrap, seed=config.seed)
            groups = [window_segments(p, ids, cap_seconds, flavour, config)
                      for p, ids in zip(held.prompts, generated, strict=True)]
            entry["mgeval"] = overlap(reference, groups, config, f"{family} {precision} continuations", salt=1)
            report["models"][family][precision] = entry

    train_segs = [s for ids in train for s in metrics.segments(
        metrics.note_array(codec.decode(ids, flavour=flavour, max_note_seconds=cap_seconds)),
        config.segment_seconds, config.min_notes)]
    if len(train_segs) > config.max_segments:
        keep = np.random.default_rng([config.seed, 3]).choice(len(train_segs), config.max_segments, replace=False)
        train_segs = [train_segs[i] for i in sorted(keep)]
    noise = random_continuations(held, [len(strip_pad(p.reference)) for p in held.prompts], config.seed)
    floor = [window_segments(p, ids, cap_seconds, flavour, config) for p, ids in zip(held.prompts, noise, strict=True)]
    report["mgeval"] = {
        "reference": {"what": "the real continuations of the held-out prompts", "segments": len(real_segs)},
        "ceiling": {"what": "train-split pieces vs the real continuations (other real music)",
                    **overlap(reference, [[s] for s in train_segs], config, "train split", salt=2)},
        "floor": {"what": "uniformly random ids after each prompt, as many as its real continuation has",
                  **overlap(reference, floor, config, "random ids", salt=3)},
    }
    return report


# --------------------------------------------------------------------------------------------------
# Markdown


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _mean_overlap(entry: dict) -> str:
    if entry.get("mean_overlap") is None:
        return "-"
    if entry.get("mean_overlap_low") is None:
        return f"{entry['mean_overlap']:.3f}"
    return f"{entry['mean_overlap']:.3f} [{entry['mean_overlap_low']:.3f}, {entry['mean_overlap_high']:.3f}]"


def markdown(report: dict) -> str:
    """The continuation measures' table (amadeus.continuation_eval.markdown_table), then the MGEval
    tables: per-feature OA / KL and the scalar features' means, per model and precision and the anchors."""
    p = report["prompts"]
    lines = ["# Evaluation", "",
             f"{p['prompts']} held-out prompts of {p['prompt_seconds']:g} s from the {' + '.join(p['splits'])} "
             f"pieces of {', '.join(p['datasets'])}, each continued for {p['continuation_seconds']:g} s "
             "(generate stage) and compared with what the pianist played next. NLL: output/metrics/score_*.json.",
             ""]
    if report.get("note"):
        return "\n".join([*lines, report["note"]]) + "\n"
    notes = [f"- {family} {precision}: {entry['note']}" for family, by_precision in report["models"].items()
             for precision, entry in by_precision.items() if "note" in entry]
    if any("generated" in entry for by_precision in report["models"].values() for entry in by_precision.values()):
        lines += ["## Continuations against the real ones", "", markdown_table(report["models"]).rstrip(), ""]
    else:
        lines += ["No continuations found: run the generate stage.", ""]
    lines += notes + ([""] if notes else [])

    rows = [(f"{family} {precision}", entry["mgeval"]) for family, by_precision in report["models"].items()
            for precision, entry in by_precision.items() if "mgeval" in entry]
    rows += [("ceiling (train pieces)", report["mgeval"]["ceiling"]),
             ("floor (random ids)", report["mgeval"]["floor"])]
    names = list(metrics.FEATURES)
    lines += [
        "## MGEval overlap with the real continuations", "",
        f"Reference: {report['mgeval']['reference']['segments']} segments of "
        f"{report['settings']['segment_seconds']:g} s of the real continuations. Mean overlap area "
        "[bootstrap 95% interval over prompts]; each feature: overlap area / KL(intra || inter) in nats "
        "(OA higher and KL lower = closer to the real continuations).",
        "",
        "| set | segments | mean OA | " + " | ".join(names) + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    for label, entry in rows:
        feats = entry.get("features") or {}
        cells = [f"{feats[n]['overlap']:.2f} / {feats[n]['kl']:.2f}" if n in feats else "-" for n in names]
        lines.append(f"| {label} | {entry.get('segments', 0)} | {_mean_overlap(entry)} | " + " | ".join(cells) + " |")
    scalars = list(metrics.SCALAR_FEATURES)
    lines += ["", "Means per segment:", "", "| set | " + " | ".join(scalars) + " |", "|---|" + "---:|" * len(scalars)]
    ref_feats = next((e["features"] for _, e in rows if e.get("features")), None)
    if ref_feats:
        lines.append("| real continuations | " + " | ".join(_fmt(ref_feats[s]["reference_mean"]) for s in scalars)
                     + " |")
    for label, entry in rows:
        feats = entry.get("features")
        if feats:
            lines.append(f"| {label} | " + " | ".join(_fmt(feats[s]["candidate_mean"]) for s in scalars) + " |")
    return "\n".join(lines) + "\n"


# The musical summary per model and precision in `dvc metrics show`: the generated continuations' means,
# then the real continuations' (the target), and the MGEval mean overlap with them.
HEADLINE_MEASURES = ("notes_per_second", "polyphony", "in_key", "long_notes")


def headline(report: dict) -> dict:
    """A few numbers per model: `<family>.<precision>.<measure>` means (intervals: evaluate.md)."""
    out: dict = {}
    real = None
    for family, by_precision in report.get("models", {}).items():
        for precision, entry in by_precision.items():
            if "generated" not in entry:
                continue
            row = {m: (entry["generated"].get(m) or {}).get("mean") for m in HEADLINE_MEASURES}
            row["mgeval_overlap"] = (entry.get("mgeval") or {}).get("mean_overlap")
            out.setdefault(family, {})[precision] = row
            real = real or {m: (entry.get("real", {}).get(m) or {}).get("mean") for m in HEADLINE_MEASURES}
    if real:
        out["real"] = real
    return out


def run(params: dict, root: Path) -> dict:
    """The whole evaluate stage: the report, written as JSON and as markdown (also printed); returns the report."""
    start = time.perf_counter()
    report = build_report(params, root)
    text = markdown(report)
    write_json(paths.metrics_file("evaluate", root=root), report)
    write_json(paths.headline_file("evaluate", root=root), headline(report))
    with atomic_open(paths.metrics_file("evaluate", root=root, suffix=".md"), "w") as f:
        f.write(text)
    print(text)
    print(f"evaluate: wrote output/metrics/evaluate.json and evaluate.md in {time.perf_counter() - start:.1f} s")
    return report
