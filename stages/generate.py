"""Stage generate@<family>: save/<family>[.int8].sess -> output/<family>/<precision>/ + output/metrics.

For each precision in `generate.precisions`: `generate.unconditioned` pieces from nothing, then
continuations of the first `prompt_seconds` of the first `test_prompts` test-split pieces, then of
every MIDI file in `input_dir`. Per piece NAME: NAME.mid (the continuation), NAME.full.mid (prompt +
continuation), NAME.wav and NAME.png of the latter (boundary marked), NAME.npy (the new event ids,
uint16) and a line in index.json. Metrics: output/metrics/generate_<family>.json. The work is
amadeus.showcase.generate_showcase.
"""

from __future__ import annotations

import argparse
import sys

from amadeus.errors import exits_cleanly
from amadeus.params import load_yaml
from amadeus.showcase import generate_showcase


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", help="a model family, e.g. performance_rnn or perceiver_ar")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    # one summary line per precision is printed as it finishes; pieces, index.json and metrics are written
    generate_showcase(args.family, load_yaml(args.params), quiet=not sys.stderr.isatty())


if __name__ == "__main__":
    main()
