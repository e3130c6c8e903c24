"""Stage evaluate: NLL and MGEval-style musical statistics per model and precision -> output/metrics/.

For each model family in params `models` and each precision whose checkpoint or generated pieces exist:
- val_nll / test_nll: nats/event over evenly spaced windows of the validation / test splits, with the
  evaluator training uses for val_nll (amadeus.nll);
- features: the generate stage's continuations (the `continuation` files listed in
  output/<family>/<precision>/index.json) against the held-out test pieces, all cut into
  `segment_seconds` segments, as overlap area and KL per feature (amadeus.metrics; docs/evaluation.md).
Scale: "ceiling" compares the train pieces (or the validation pieces: `ceiling_split`) with the test
pieces, real music against other real music; "floor" compares uniformly random event ids, decoded,
with the test pieces. With few held-out pieces the ceiling is one piece against another, so read it
as "how far apart two real pieces are", not as an upper bound a model cannot pass. `markdown` renders
the report; `run` writes output/metrics/evaluate.json (DVC metrics) and evaluate.md (a readable table).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi

from amadeus import codec, metrics
from amadeus.checkpoint import PRECISIONS, load_model
from amadeus.data import load_split
from amadeus.errors import UserError
from amadeus.fileio import atomic_open, write_json
from amadeus.nll import mean_nll
from amadeus.params import as_dict, build, knob, section
from amadeus.pipeline import paths
from amadeus.vocab import VOCAB_SIZE  # the real event ids (PAD excluded): the floor draws from these uniformly
from amadeus.windows import evenly_spaced_windows


@dataclass
class EvaluateConfig:
    """params.yaml `evaluate`: how the NLL windows and the musical statistics are taken."""

    segment_seconds: float = knob(10.0, gt=0, help="pieces are cut into segments this long")
    min_notes: int = knob(4, min=1, help="segments with fewer notes are dropped")
    max_segments: int = knob(200, min=2, help="per set; a seeded subset is kept beyond this")
    nll_window: int | None = knob(None, min=1, help="events per NLL window; null = the model's context_length "
                                  "(the window training uses by default), else 512")
    nll_max_windows: int = knob(32, min=1, help="per split, evenly spaced (32 x 512 = 16k scored events)")
    batch_size: int = knob(32, min=1)
    floor_pieces: int = knob(8, min=1, help="pieces of uniformly random event ids (the floor)")
    floor_events: int = knob(2000, min=10, help="event ids per floor piece")
    ceiling_split: str = knob("train", choices=("validation", "train"),
                              help="real pieces compared with the test pieces for the ceiling")
    seed: int = knob(0)


def decode(ids: np.ndarray, codec_params: dict) -> pretty_midi.PrettyMIDI:
    """Event ids -> PrettyMIDI with the (validated) params.yaml `codec` settings."""
    config = build(codec.CodecConfig, codec_params, "codec")
    return codec.decode(ids, flavour=config.flavour, max_note_seconds=config.max_note_seconds)


def segment_set(pieces: list[pretty_midi.PrettyMIDI], config: EvaluateConfig, salt: int) -> list[np.ndarray]:
    """All segments of the pieces, a seeded subset of `max_segments` beyond that (`salt` = which set)."""
    segs = [s for p in pieces for s in metrics.segments(metrics.note_array(p), config.segment_seconds,
                                                        config.min_notes)]
    if len(segs) > config.max_segments:
        keep = np.random.default_rng([config.seed, salt]).choice(len(segs), config.max_segments, replace=False)
        segs = [segs[i] for i in sorted(keep)]
    return segs


def compare(reference: dict, segs: list[np.ndarray], config: EvaluateConfig, what: str) -> dict:
    """MGEval OA / KL of a segment set against the reference features, or a note saying why there is none."""
    if len(segs) == 0:
        return {"segments": 0, "features": None, "note": f"{what}: no segment with >= {config.min_notes} notes"}
    result = metrics.compare_sets(reference, metrics.features(segs), seed=config.seed)
    overlaps = [c.overlap for c in result.values()]
    return {"segments": len(segs), "mean_overlap": round(float(np.mean(overlaps)), 4),
            "features": {name: c.as_dict() for name, c in result.items()}}


def checkpoint_nll(checkpoint: Path, splits: dict[str, list[np.ndarray]], codec_params: dict,
        config: EvaluateConfig) -> dict:
    """val_nll / test_nll of one checkpoint on evenly spaced windows, as its training measured val_nll."""
    model, ckpt = load_model(checkpoint, device="cpu")
    data_flavour = codec_params.get("flavour", "magenta")
    model_flavour = (ckpt.get("codec") or {}).get("flavour", data_flavour)
    window = config.nll_window or getattr(model, "context_length", None) or 512
    window = min(window, getattr(getattr(model, "config", None), "max_seq_len", window))
    out: dict = {"nll_window": window}
    for name, pieces in splits.items():
        if model_flavour != data_flavour:  # e.g. an imported perceiver-io checkpoint on magenta data
            pieces = [codec.encode(decode(p, codec_params), flavour=model_flavour) for p in pieces]
        ids, ctrl = evenly_spaced_windows(pieces, window, config.nll_max_windows,
                                          controls=bool(getattr(model, "uses_controls", False)))
        out[f"{name}_nll"] = round(mean_nll(model, ids, ctrl, config.batch_size), 4) if len(ids) else None
    return out


def read_continuations(folder: Path) -> tuple[list[pretty_midi.PrettyMIDI], list[str]]:
    """The continuations the generate stage listed in `index.json` (pieces[].files.continuation)."""
    index_path = folder / "index.json"
    if not index_path.exists():
        return [], []
    pieces, skipped = [], []
    for piece in json.loads(index_path.read_text()).get("pieces", []):
        path = folder / piece["files"]["continuation"]
        try:
            pieces.append(pretty_midi.PrettyMIDI(str(path)))
        except Exception as e:  # a broken or missing file is skipped and reported, never fatal
            skipped.append(f"{path.name}: {type(e).__name__}")
    return pieces, skipped


def build_report(params: dict, root: Path = Path(".")) -> dict:
    """The evaluate stage's report (what output/metrics/evaluate.json holds) for the workspace at `root`."""
    config = build(EvaluateConfig, params.get("evaluate"), "evaluate")
    families = section(params, "models")
    families = list(families) if isinstance(families, (list, dict)) else [families]
    datasets = section(params, "datasets")
    codec_params = section(params, "codec")
    folders = [paths.processed_dir(name, root) for name in datasets]
    split_ids = {split: load_split(folders, split) for split in ("validation", "test")}
    if not split_ids["test"]:
        raise UserError(f"no test pieces in {', '.join(map(str, folders))}: adjust preprocess.split")
    nll_splits = {"val": split_ids["validation"], "test": split_ids["test"]}

    test_segs = segment_set([decode(ids, codec_params) for ids in split_ids["test"]], config, salt=1)
    if not test_segs:
        raise UserError(f"the test pieces have no {config.segment_seconds}-second segment with "
                        f">= {config.min_notes} notes: lower evaluate.segment_seconds or evaluate.min_notes")
    reference = metrics.features(test_segs)

    report: dict = {
        "reference": {"what": f"test split of {', '.join(datasets)}", "pieces": len(split_ids["test"]),
                      "segments": len(test_segs)},
        "models": {},
    }
    for family in families:
        report["models"][family] = {}
        for precision in PRECISIONS:
            checkpoint = paths.checkpoint(family, precision, root)
            out_dir = paths.pieces_dir(family, precision, root)
            if not checkpoint.exists() and not out_dir.exists():
                continue
            entry: dict = {"checkpoint": str(checkpoint.relative_to(root)) if checkpoint.exists() else None}
            if checkpoint.exists():
                entry.update(checkpoint_nll(checkpoint, nll_splits, codec_params, config))
            pieces, skipped = read_continuations(out_dir)
            entry["pieces"] = len(pieces)
            if skipped:
                entry["skipped"] = skipped
            entry.update(compare(reference, segment_set(pieces, config, salt=2), config,
                                 f"continuations in {out_dir}/index.json"))
            report["models"][family][precision] = entry

    real = split_ids["validation"] if config.ceiling_split == "validation" else load_split(folders, "train")
    real_segs = segment_set([decode(ids, codec_params) for ids in real], config, salt=3)
    report["ceiling"] = {"what": f"{config.ceiling_split} pieces vs test pieces (real music against other real music)",
                         "pieces": len(real),
                         **compare(reference, real_segs, config, f"{config.ceiling_split} split")}
    rng = np.random.default_rng([config.seed, 4])
    noise = [rng.integers(0, VOCAB_SIZE, config.floor_events) for _ in range(config.floor_pieces)]
    floor_segs = segment_set([decode(ids, codec_params) for ids in noise], config, salt=5)
    report["floor"] = {"what": f"uniformly random event ids ({config.floor_pieces} x {config.floor_events}) "
                               "decoded, vs test pieces",
                       "pieces": config.floor_pieces, **compare(reference, floor_segs, config, "random ids")}
    report["settings"] = as_dict(config)
    return report


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def markdown(report: dict) -> str:
    """One table of NLL and per-feature OA / KL (model x precision, ceiling, floor), one of feature means."""
    rows = [(f"{family} {precision}", entry) for family, by_precision in report["models"].items()
            for precision, entry in by_precision.items()]
    rows += [("ceiling (real vs real)", report["ceiling"]), ("floor (random ids)", report["floor"])]
    names = list(metrics.FEATURES)
    lines = [
        "# Evaluation",
        "",
        f"Reference: {report['reference']['what']} ({report['reference']['pieces']} pieces, "
        f"{report['reference']['segments']} segments of {report['settings']['segment_seconds']:g} s). "
        "NLL in nats/event. Each feature cell: overlap area / KL(intra || inter) in nats "
        "(OA higher and KL lower = closer to real music; MGEval on seconds).",
        "",
        "| set | segments | val NLL | test NLL | mean OA | " + " | ".join(names) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(names),
    ]
    for label, entry in rows:
        feats = entry.get("features") or {}
        cells = [f"{feats[n]['overlap']:.2f} / {feats[n]['kl']:.2f}" if n in feats else "-" for n in names]
        lines.append(f"| {label} | {entry.get('segments', 0)} | {_fmt(entry.get('val_nll'))} | "
                     f"{_fmt(entry.get('test_nll'))} | {_fmt(entry.get('mean_overlap'))} | " + " | ".join(cells) + " |")
    scalars = list(metrics.SCALAR_FEATURES)
    lines += ["", "Means per segment (reference = test pieces):", "",
              "| set | " + " | ".join(scalars) + " |", "|---|" + "---:|" * len(scalars)]
    ref_feats = report["ceiling"].get("features") or next(
        (e["features"] for _, e in rows if e.get("features")), None)
    if ref_feats:
        lines.append("| reference | " + " | ".join(f"{ref_feats[s]['reference_mean']:.2f}" for s in scalars) + " |")
    for label, entry in rows:
        feats = entry.get("features")
        if feats:
            lines.append(f"| {label} | " + " | ".join(f"{feats[s]['candidate_mean']:.2f}" for s in scalars) + " |")
    return "\n".join(lines) + "\n"


def run(params: dict, root: Path) -> dict:
    """The whole evaluate stage: the report, written as JSON and as markdown (also printed); returns the report."""
    start = time.perf_counter()
    report = build_report(params, root)
    text = markdown(report)
    write_json(paths.metrics_file("evaluate", root=root), report)
    with atomic_open(paths.metrics_file("evaluate", root=root, suffix=".md"), "w") as f:
        f.write(text)
    print(text)
    print(f"evaluate: wrote output/metrics/evaluate.json and evaluate.md in {time.perf_counter() - start:.1f} s")
    return report
