"""Stage quantize@<family>: save/<family>.sess + stats/<family>.yaml -> save/<family>.int8.sess + metrics.

Real int8 post-training quantization (amadeus.quant): int8 weights per output channel, static int8
activations from the calibration ranges, GRU gate arithmetic in float. The metrics compare fp32 and
int8 on identical validation windows and identical seeded generation, measured in this run.
"""

import argparse

from amadeus.checkpoint import checkpoint_path, save
from amadeus.errors import exits_cleanly
from amadeus.fileio import write_json
from amadeus.params import load_yaml
from amadeus.quant.workflow import quantize_checkpoint


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", help="model family, e.g. performance_rnn")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    result = quantize_checkpoint(args.family, load_yaml(args.params))
    out = checkpoint_path(args.family, "int8")
    save(out, result.checkpoint)
    write_json(f"output/metrics/quantize_{args.family}.json", result.metrics)
    m = result.metrics
    print(f"quantize {args.family}: size x{m['size_ratio']}, NLL {result.nll_fp32:.4f} -> {result.nll_int8:.4f} "
          f"({m['nll_delta_rel']:+.2%}), {m['tokens_per_second_fp32']} -> {m['tokens_per_second_int8']} tokens/s "
          f"({m['speedup']}x, {m['threads']} thread(s), timed in {result.timed_seconds:.0f} s) "
          f"-> {out}")


if __name__ == "__main__":
    main()
