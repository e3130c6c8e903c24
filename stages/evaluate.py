"""Stage evaluate: NLL and MGEval-style musical statistics per model and precision -> output/metrics/.

For each model family in params `models` and each precision whose checkpoint exists
(`save/<family>.sess`, `save/<family>.int8.sess`):
- val_nll / test_nll: nats/event over fixed windows of the validation / test splits;
- features: the generate stage's continuations (the `continuation` files listed in
  `output/<family>/<precision>/index.json`) against the held-out test pieces, all cut into
  `segment_seconds` segments, as overlap area and KL per feature (amadeus.metrics).
Scale: "ceiling" compares the validation pieces (or the train pieces: `ceiling_split`) with the test
pieces, real music against other real music; "floor" compares uniformly random event ids, decoded,
with the test pieces. With few held-out pieces the ceiling is one piece against another, so read it
as "how far apart two real pieces are", not as an upper bound a model cannot pass.
Writes output/metrics/evaluate.json (DVC metrics) and output/metrics/evaluate.md (a readable table).
"""

from __future__ import annotations

import argparse
import time

from amadeus.errors import exits_cleanly
from amadeus.evaluation import evaluate, markdown
from amadeus.fileio import atomic_open, write_json
from amadeus.params import load_yaml


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    start = time.perf_counter()
    report = evaluate(load_yaml(args.params))
    text = markdown(report)
    write_json("output/metrics/evaluate.json", report)
    with atomic_open("output/metrics/evaluate.md", "w") as f:
        f.write(text)
    print(text)
    print(f"evaluate: wrote output/metrics/evaluate.json and evaluate.md in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
