"""Stage train@<family>: dataset/processed/<datasets>/ -> save/<family>.sess, metrics, plots, TensorBoard.

Reads params `train.defaults`, `train.<family>` (overrides), `models.<family>`, `codec.flavour`, `datasets`.
Resumes save/<family>.sess when it was made with the same params (see amadeus.training).
"""

import argparse
import logging
from pathlib import Path

from amadeus.checkpoint import checkpoint_path
from amadeus.data import load_split
from amadeus.errors import exits_cleanly
from amadeus.params import load_yaml, section
from amadeus.training import Outputs, train, train_config


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", help="a model family under `models:` in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = load_yaml(args.params)
    family = args.family
    cfg = train_config(section(params, "train"), family)
    datasets = section(params, "datasets")
    folders = [Path("dataset/processed") / name for name in datasets]
    out = Outputs(checkpoint=checkpoint_path(family), tensorboard=Path(f"runs/{family}"),
                  plots=Path(f"output/plots/train_{family}.csv"),
                  metrics=Path(f"output/metrics/train_{family}.json"))
    result = train(family, section(params, f"models.{family}"), cfg, load_split(folders, "train"),
                   load_split(folders, "validation"), out,
                   params={"codec": {"flavour": section(params, "codec.flavour")}, "datasets": list(datasets)})
    if result["interrupted"]:
        raise KeyboardInterrupt  # saved; exit 130 so that DVC does not record the stage as done


if __name__ == "__main__":
    main()
