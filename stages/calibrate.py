"""Stage calibrate@<family>: save/<family>.sess -> stats/<family>.yaml (activation statistics).

Forward hooks observe every leaf module (the GRU decomposed into Linears and one module per
element-wise op) over `calibrate.batches` seeded validation windows; see amadeus.quant.stats.
"""

import argparse
import time

from amadeus.checkpoint import checkpoint_path, load_model
from amadeus.data import load_split
from amadeus.errors import exits_cleanly
from amadeus.fileio import write_yaml
from amadeus.params import build, load_yaml, section
from amadeus.quant.workflow import CalibrateConfig, calibrate, fixed_windows


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", help="model family, e.g. performance_rnn")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_yaml(args.params)
    config = build(CalibrateConfig, section(params, "calibrate"), "calibrate")
    folders = [f"dataset/processed/{name}" for name in section(params, "datasets")]
    model, _ = load_model(checkpoint_path(args.family))
    windows = fixed_windows(load_split(folders, "validation"), config.batches, config.batch_size,
                            config.window, config.seed, controls=getattr(model, "uses_controls", False))
    start = time.perf_counter()
    stats = calibrate(model, windows, config.threads)
    write_yaml(f"stats/{args.family}.yaml", stats)
    print(f"calibrate {args.family}: {len(stats)} modules over {config.batches} x {config.batch_size} windows "
          f"of {config.window} events in {time.perf_counter() - start:.1f} s -> stats/{args.family}.yaml")


if __name__ == "__main__":
    main()
