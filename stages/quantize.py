"""Stage quantize@<family>: save/<family>.sess + stats/<family>.yaml -> save/<family>.int8.sess + metrics.

Real int8 post-training quantization (amadeus.quant): int8 weights per output channel, static int8
activations from the calibration ranges, GRU gate arithmetic in float. The metrics compare fp32 and
int8 on identical validation windows and identical seeded generation, measured in this run.
"""

import argparse
import copy
import time

import torch
import yaml

from amadeus.checkpoint import load_model, save
from amadeus.data import load_split
from amadeus.errors import UserError, exits_cleanly
from amadeus.fileio import write_json
from amadeus.params import as_dict, build, load_yaml, section
from amadeus.quant import quantize_model, state_bytes
from amadeus.quant.workflow import CalibrateConfig, QuantizeConfig, compare_speed, fixed_windows, machine, mean_nll


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", help="model family, e.g. performance_rnn")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_yaml(args.params)
    calib = build(CalibrateConfig, section(params, "calibrate"), "calibrate")
    config = build(QuantizeConfig, section(params, "quantize"), "quantize")
    stats_path = f"stats/{args.family}.yaml"
    try:
        with open(stats_path) as f:
            stats = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{stats_path}: not found; run the calibrate stage first") from None
    model, ckpt = load_model(f"save/{args.family}.sess")
    model.eval()
    folders = [f"dataset/processed/{name}" for name in section(params, "datasets")]
    windows = fixed_windows(load_split(folders, "validation"), config.eval_batches, calib.batch_size,
                            calib.window, config.eval_seed, controls=getattr(model, "uses_controls", False))

    qmodel = copy.deepcopy(model)
    info = quantize_model(qmodel, stats, config.mode, config.clip, config.n_std, config.eltwise_dtype)
    nll_fp32, nll_int8 = mean_nll(model, windows), mean_nll(qmodel, windows)
    start = time.perf_counter()
    speed = compare_speed(model, qmodel, config.bench_tokens, config.bench_rounds, config.threads)
    fp32_bytes, int8_bytes = state_bytes(model), state_bytes(qmodel)

    out = dict(ckpt)
    out.update(precision="int8", model=qmodel.state_dict(), optimizer=None, scheduler=None, quant=info)
    out["params"] = {**(ckpt.get("params") or {}), "calibrate": as_dict(calib), "quantize": as_dict(config)}
    save(f"save/{args.family}.int8.sess", out)

    metrics = {
        "fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes, "size_ratio": round(int8_bytes / fp32_bytes, 4),
        "val_nll_fp32": round(nll_fp32, 5), "val_nll_int8": round(nll_int8, 5),
        "nll_delta_rel": round((nll_int8 - nll_fp32) / nll_fp32, 5),
        "tokens_per_second_fp32": speed["tokens_per_second_fp32"],
        "tokens_per_second_int8": speed["tokens_per_second_int8"],
        "speedup": speed["speedup"], "mode": config.mode, "clip": config.clip, "threads": config.threads,
        "eltwise_dtype": config.eltwise_dtype, "machine": machine(), "torch": torch.__version__,
    }
    write_json(f"output/metrics/quantize_{args.family}.json", metrics)
    print(f"quantize {args.family}: size x{metrics['size_ratio']}, NLL {nll_fp32:.4f} -> {nll_int8:.4f} "
          f"({metrics['nll_delta_rel']:+.2%}), {speed['tokens_per_second_fp32']} -> "
          f"{speed['tokens_per_second_int8']} tokens/s ({speed['speedup']}x, {config.threads} thread(s), "
          f"timed in {time.perf_counter() - start:.0f} s) -> save/{args.family}.int8.sess")


if __name__ == "__main__":
    main()
