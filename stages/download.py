"""Stage download@<source>: sources.<source> of params.yaml -> dataset/midi/<source>/ (amadeus.pipeline.download)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amadeus.errors import main_entry
from amadeus.pipeline import download
from amadeus.pipeline.params_check import load_params


@main_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", help="a key of the `sources` section of params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    download.run(load_params(args.params), Path("."), args.source)


if __name__ == "__main__":
    main()
