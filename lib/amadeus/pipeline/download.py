"""Stage download@<source>: fetch the dataset `sources.<source>` of params.yaml into dataset/midi/<source>/.

The section's settings are validated by its kind's config dataclass (amadeus.sources.SOURCE_KINDS);
downloads are cached in dataset/downloads/<source>/, so a rerun does not download again.
"""

from __future__ import annotations

from pathlib import Path

from amadeus.params import section
from amadeus.pipeline import paths
from amadeus.sources import FetchReport, fetch


def run(params: dict, root: Path, source: str) -> FetchReport:
    """Fill dataset/midi/<source>/ (nothing to do when it already holds what the settings fetch)."""
    paths.check_source_name(source)  # before its settings are looked up: the name becomes a folder
    settings = section(params, f"sources.{source}")
    r = fetch(source, settings, paths.midi_dir(source, root), cache=paths.downloads_dir(source, root))
    state = "up to date" if r.up_to_date else f"downloaded {r.downloaded_bytes / 1e6:.1f} MB"
    print(f"{r.name} ({r.kind}): {r.files} MIDI files, {r.bytes / 1e6:.1f} MB, {state}, "
          f"{r.skipped} skipped, split.csv: {'yes' if r.split else 'no'}, {r.seconds:.1f}s -> {r.record}")
    return r
