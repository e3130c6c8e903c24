"""Stage evaluate: the continuations of the held-out prompts (output/<family>/<precision>/eval/) against
the real ones -> output/metrics/evaluate.json and evaluate.md (amadeus.pipeline.evaluate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amadeus.errors import main_entry
from amadeus.pipeline import evaluate
from amadeus.pipeline.params_check import load_params


@main_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    evaluate.run(load_params(args.params), Path("."))


if __name__ == "__main__":
    main()
