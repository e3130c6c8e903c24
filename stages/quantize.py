"""Stage quantize@<family>: save/<family>.sess + stats/<family>.yaml -> save/<family>.int8.sess
(amadeus.pipeline.quantize)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amadeus.errors import main_entry
from amadeus.pipeline import quantize
from amadeus.pipeline.params_check import load_params


@main_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", help="a model family under `models:` in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    quantize.run(load_params(args.params), Path("."), args.family)


if __name__ == "__main__":
    main()
