"""Stage preprocess@<source>: dataset/midi/<source>/ -> dataset/processed/<source>/ (*.data + manifest).

Reads params `preprocess` (PreprocessConfig, which lives with the library function amadeus.preprocess:
`amadeus preprocess` uses it outside the pipeline too) and `codec`.
"""

from __future__ import annotations

from pathlib import Path

from amadeus import codec
from amadeus.fileio import write_json
from amadeus.params import build, section
from amadeus.pipeline import paths
from amadeus.preprocess import PreprocessConfig, preprocess

__all__ = ["PreprocessConfig", "run"]

HEADLINE = ("files_ok", "files_skipped", "events", "music_seconds")
TIMINGS = ("seconds", "notes_per_second")


def run(params: dict, root: Path, source: str) -> dict:
    """Encode the source's MIDI files and write output/metrics/preprocess_<source>.json; returns the metrics."""
    section(params, f"sources.{source}")  # the source must be declared
    config = build(PreprocessConfig, section(params, "preprocess"), "preprocess")
    codec_config = build(codec.CodecConfig, section(params, "codec"), "codec")
    metrics = preprocess(paths.midi_dir(source, root), paths.processed_dir(source, root), config, codec_config)
    timings = {k: metrics.pop(k) for k in TIMINGS}  # measurements of this run, kept out of what DVC hashes
    write_json(paths.metrics_file("preprocess", source, root), metrics)
    write_json(paths.headline_file("preprocess", source, root), {k: metrics[k] for k in HEADLINE})
    write_json(paths.timings_file("preprocess", source, root), timings)
    print(f"preprocess {source}: {metrics['files_ok']}/{metrics['files_total']} files, "
          f"{metrics['notes']:,} notes, {metrics['events']:,} events, {metrics['music_seconds'] / 60:.1f} min "
          f"of music, {timings['notes_per_second']:,} notes/s, splits {metrics['splits']}"
          + (f", skipped {metrics['skipped_by_kind']}" if metrics["files_skipped"] else ""))
    return {**metrics, **timings}
