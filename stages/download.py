"""Stage download@<name>: fetch the dataset `sources.<name>` of params.yaml into dataset/midi/<name>/."""

from __future__ import annotations

import argparse
from pathlib import Path

from amadeus.errors import exits_cleanly
from amadeus.params import load_yaml, section
from amadeus.sources import fetch


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("name", help="a key of the `sources` section of params.yaml")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--out", default="dataset/midi", help="parent folder of the source's output")
    ap.add_argument("--cache", default="dataset/downloads", help="where downloads are kept between runs")
    args = ap.parse_args(argv)

    settings = section(load_yaml(args.params), f"sources.{args.name}")
    r = fetch(args.name, settings, Path(args.out) / args.name, cache=Path(args.cache) / args.name)
    state = "up to date" if r.up_to_date else f"downloaded {r.downloaded_bytes / 1e6:.1f} MB"
    print(f"{r.name} ({r.kind}): {r.files} MIDI files, {r.bytes / 1e6:.1f} MB, {state}, "
          f"{r.skipped} skipped, split.csv: {'yes' if r.split else 'no'}, {r.seconds:.1f}s -> {r.record}")


if __name__ == "__main__":
    main()
