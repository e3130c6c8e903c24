"""Stage train@<family>: dataset/processed/<datasets>/ -> save/<family>.sess (amadeus.pipeline.train).

With `train.<family>.nproc` > 1 the stage starts itself again under torchrun on this machine (one
process per GPU, data-parallel: docs/distributed.md); started by torchrun already, it trains as the
launch says (`torchrun --nproc_per_node N stages/train.py <family>` by hand, several machines too).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from amadeus import distributed
from amadeus.errors import main_entry
from amadeus.params import section
from amadeus.pipeline import train
from amadeus.pipeline.params_check import load_params


@main_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", help="a model family under `models:` in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    launch = distributed.launch_from_env()
    # under torchrun only rank 0 tells the story (the others would repeat it)
    logging.basicConfig(level=logging.INFO if launch is None or launch.is_main else logging.WARNING,
                        format="%(message)s")
    params = load_params(args.params)
    nproc = train.train_config(section(params, "train"), args.family).nproc
    if nproc > 1 and not distributed.under_torchrun():
        # exec, not a child: DVC's signals (and its wait) reach torchrun, which passes them to the workers
        command = distributed.torchrun_command(nproc, str(Path(__file__).resolve()),
                                               sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)
    result = train.run(params, Path("."), args.family)
    if result["interrupted"]:
        raise KeyboardInterrupt  # saved; exit 130 so that DVC does not record the stage as done


if __name__ == "__main__":
    main()
