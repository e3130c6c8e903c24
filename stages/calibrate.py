"""Stage calibrate@<family>: save/<family>.sess -> stats/<family>.yaml (amadeus.pipeline.calibrate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amadeus.errors import main_entry
from amadeus.pipeline import calibrate
from amadeus.pipeline.params_check import load_params


@main_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", help="a model family under `models:` in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    calibrate.run(load_params(args.params), Path("."), args.family)


if __name__ == "__main__":
    main()
