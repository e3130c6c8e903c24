"""The quantization table: mode x clip on the pipeline's trained checkpoints, as the quantize stage does it.

    python bench/quantize_table.py [performance_rnn] [--json out.json]

For every weight mode and activation clip mode, runs `amadeus.pipeline.quantize.quantize_checkpoint` on
save/<family>.sess with stats/<family>.yaml (run `dvc repro` first) and prints size ratio, validation
NLL fp32/int8 on the same fixed windows, the relative delta and batch-1 tokens/s fp32/int8 measured
in the same run (threads as in params.yaml `quantize.threads`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

from amadeus.hardware import machine
from amadeus.params import load_yaml
from amadeus.pipeline import paths
from amadeus.pipeline.quantize import quantize_checkpoint

MODES = ("asymmetric_signed", "asymmetric_unsigned", "symmetric")
CLIPS = ("avg", "none", "n_std")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", nargs="?", default="performance_rnn")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    params = load_yaml("params.yaml")
    print(f"machine: {machine()}, {os.cpu_count()} CPUs; threads {params['quantize']['threads']}; "
          f"model {paths.checkpoint(args.family)}")
    print("| mode | clip | size ratio | val NLL fp32 | val NLL int8 | delta | tok/s fp32 | tok/s int8 | int8/fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for mode in MODES:
        for clip in CLIPS:
            p = copy.deepcopy(params)
            p["quantize"].update(mode=mode, clip=clip)
            m = quantize_checkpoint(p, Path("."), args.family).metrics
            rows.append(m)
            print(f"| {mode} | {clip} | {m['size_ratio']:.4f} | {m['val_nll_fp32']:.4f} | {m['val_nll_int8']:.4f} | "
                  f"{100 * m['nll_delta_rel']:+.3f}% | {m['tokens_per_second_fp32']:,.0f} | "
                  f"{m['tokens_per_second_int8']:,.0f} | {m['speedup']:.2f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
