"""A short readable summary of the pipeline's metrics (`amadeus report`, printed by `make repro`).

`dvc metrics show` lists every key of every metrics file in one very wide table; this prints the few
figures a person looks at first, per stage, then the evaluation table.
"""

from __future__ import annotations

import json
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary(metrics_dir: str | Path = "output/metrics") -> str:
    folder = Path(metrics_dir)
    lines = []
    for path in sorted(folder.glob("preprocess_*.json")):
        m = _load(path)
        lines.append(f"preprocess {path.stem.removeprefix('preprocess_')}: {m.get('files_ok')}/{m.get('files_total')} "
                     f"files, {m.get('notes', 0):,} notes, {m.get('events', 0):,} events, "
                     f"{m.get('notes_per_second', 0):,} notes/s")
    for path in sorted(folder.glob("train_*.json")):
        m = _load(path)
        if m.get("unigram_nll"):
            below = 100 * (1 - m["val_nll"] / m["unigram_nll"])
            family = path.stem.removeprefix("train_")
            lines.append(f"train {family}: {m['parameters']:,} parameters, {m['steps']} steps "
                         f"in {m['seconds']:.0f} s ({m['tokens_per_second']:,.0f} tokens/s), val_nll "
                         f"{m['val_nll']:.3f} vs unigram {m['unigram_nll']:.3f} ({below:.1f}% below)")
    for path in sorted(folder.glob("quantize_*.json")):
        m = _load(path)
        if m:
            lines.append(f"quantize {path.stem.removeprefix('quantize_')}: size x{m['size_ratio']}, val_nll "
                         f"{m['val_nll_fp32']:.4f} -> {m['val_nll_int8']:.4f} ({100 * m['nll_delta_rel']:+.2f}%), "
                         f"{m['tokens_per_second_fp32']:,.0f} -> {m['tokens_per_second_int8']:,.0f} "
                         "tokens/s at batch 1")
    for path in sorted(folder.glob("generate_*.json")):
        m = _load(path)
        for precision in ("fp32", "int8"):
            if precision in m:
                p = m[precision]
                lines.append(f"generate {path.stem.removeprefix('generate_')} {precision}: {p['pieces']} pieces, "
                             f"{p['tokens_per_second']:,.0f} events/s, {p['real_time_factor']:.1f}x real time")
    evaluation = folder / "evaluate.md"
    if evaluation.exists():
        lines += ["", evaluation.read_text().strip()]
    return "\n".join(lines) if lines else f"no metrics in {folder} yet: run `dvc repro`"


if __name__ == "__main__":
    print(summary())
