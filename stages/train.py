"""Stage train@<family>: dataset/processed/<datasets>/ -> save/<family>.sess (amadeus.pipeline.train)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from amadeus.errors import main_entry
from amadeus.pipeline import train
from amadeus.pipeline.params_check import load_params


@main_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", help="a model family under `models:` in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train.run(load_params(args.params), Path("."), args.family)
    if result["interrupted"]:
        raise KeyboardInterrupt  # saved; exit 130 so that DVC does not record the stage as done


if __name__ == "__main__":
    main()
