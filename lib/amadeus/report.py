"""A short readable summary of the pipeline's metrics (`amadeus report`, printed by `make repro`).

`dvc metrics show` lists every key of every metrics file in one very wide table; this prints the few
figures a person looks at first, per stage, then the evaluation table.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def summary(metrics_dir: str | Path | None = None) -> str:
    """The summary of the metrics files in `metrics_dir` (default: the pipeline's output/metrics)."""
    folder = Path(metrics_dir) if metrics_dir is not None else paths.metrics_dir()
    lines = []
    for source, path in _stage_files(folder, "preprocess"):
        m = _load(path)
        lines.append(f"preprocess {source}: {m.get('files_ok')}/{m.get('files_total')} "
                     f"files, {m.get('notes', 0):,} notes, {m.get('events', 0):,} events, "
                     f"{m.get('notes_per_second', 0):,} notes/s")
    for family, path in _stage_files(folder, "train"):
        m = _load(path)
        if m.get("unigram_nll"):
            below = 100 * (1 - m["val_nll"] / m["unigram_nll"])
            lines.append(f"train {family}: {m['parameters']:,} parameters, {m['steps']} steps "
                         f"in {m['seconds']:.0f} s ({m['tokens_per_second']:,.0f} tokens/s), val_nll "
                         f"{m['val_nll']:.3f} vs unigram {m['unigram_nll']:.3f} ({below:.1f}% below)")
    for family, path in _stage_files(folder, "quantize"):
        m = _load(path)
        if m:
            lines.append(f"quantize {family}: size x{m['size_ratio']}, val_nll "
                         f"{m['val_nll_fp32']:.4f} -> {m['val_nll_int8']:.4f} ({100 * m['nll_delta_rel']:+.2f}%), "
                         f"{m['tokens_per_second_fp32']:,.0f} -> {m['tokens_per_second_int8']:,.0f} "
                         "tokens/s at batch 1")
    for family, path in _stage_files(folder, "generate"):
        m = _load(path)
        for precision, p in m.items():
            if isinstance(p, dict):  # one entry per precision generated, beside the first one's figures
                lines.append(f"generate {family} {precision}: {p['pieces']} pieces, "
                             f"{p['tokens_per_second']:,.0f} events/s, {p['real_time_factor']:.1f}x real time")
    evaluation = folder / paths.metrics_file("evaluate", suffix=".md").name
    if evaluation.exists():
        lines += ["", evaluation.read_text().strip()]
    return "\n".join(lines) if lines else f"no metrics in {folder} yet: run `dvc repro`"


if __name__ == "__main__":
    print(summary())
