"""Training throughput on a GPU: tokens/s, model FLOPs utilisation (MFU) and peak memory.

    python bench/gpu_train.py [--steps 30] [--compile]                 # one GPU
    torchrun --nproc_per_node 8 bench/gpu_train.py [--steps 30]        # one process per GPU (DDP, NCCL)
    python bench/gpu_train.py --device cpu --tiny --steps 2            # the logic, on a CPU (tests)

Two models, on the pipeline's own data (the processed sample: `make repro` first):
- the README's MAESTRO preset Perceiver AR (perceiver-io's example: 2,048 tokens, 1,024 latents, 512
  channels, 8 self-attention layers, 28.5M parameters), batch 48 per GPU;
- a 3 x 512 Performance RNN, window 200, batch 64 per GPU.
Each trains `--steps` steps with AdamW (after `--warmup` untimed steps) under bf16 autocast on CUDA;
attention is torch's scaled_dot_product_attention, which picks its fused kernels itself; `--compile`
wraps the model in torch.compile. FLOPs per step are counted once by torch.utils.flop_counter (forward
and backward of every matrix product and attention), so MFU = FLOPs/s over the chip's dense bf16 peak.
With several processes the figures are the sum over GPUs (tokens/s) and the mean (MFU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks in TFLOPS, from NVIDIA's datasheets (the sparse figures are twice these):
# H100 SXM and H200 989.4, H100 PCIe 756, A100 312, L40S 362.05, L4 121.
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.05),
                    ("L4", 121.0))


@dataclass
class Run:
    name: str
    params: int
    tokens_per_step: int
    flops_per_step: float
    seconds_per_step: float
    peak_memory_bytes: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.seconds_per_step

    def mfu(self, peak_tflops: float | None) -> float | None:
        return None if not peak_tflops else self.flops_per_step / self.seconds_per_step / (peak_tflops * 1e12)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named `device_name` (None: not in the table, pass --peak-tflops)."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def pick_device(requested: str, local_rank: int) -> torch.device:
    """cuda:<local rank> (one process per GPU), or the CPU when asked or when there is no GPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    return torch.device("cuda", local_rank)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (as the pipeline trains there); None, full fp32, on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else None


def precision(device: torch.device) -> contextlib.AbstractContextManager:
    dtype = autocast_dtype(device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def models(tiny: bool) -> dict[str, tuple[torch.nn.Module, int, int]]:
    """name -> (model, window, batch per process)."""
    from amadeus.models.perceiver_ar import PerceiverAR, PerceiverARConfig
    from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig

    if tiny:
        return {"perceiver_ar": (PerceiverAR(PerceiverARConfig(max_seq_len=64, max_latents=16, num_channels=32,
                                                               num_heads=4, num_self_attention_layers=2)), 64, 2),
                "performance_rnn": (PerformanceRNN(PerformanceRNNConfig(embed_dim=16, input_size=32, hidden_size=32,
                                                                        num_layers=3, controls=False)), 32, 2)}
    par = PerceiverARConfig(vocab_size=389, max_seq_len=2048, max_latents=1024, num_channels=512, num_heads=8,
                            num_self_attention_layers=8, cross_attention_dropout=0.5, output_norm=True)
    rnn = PerformanceRNNConfig(hidden_size=512, num_layers=3, controls=False)
    return {"perceiver_ar": (PerceiverAR(par), 2048, 48), "performance_rnn": (PerformanceRNN(rnn), 200, 64)}


def count_flops(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """Forward + backward FLOPs of one training step on `batch` (matrix products and attention).

    Counted on a CPU copy for one window and scaled by the batch (the count is linear in it): on CUDA,
    cuDNN runs a GRU as one fused call that the counter does not see into; on the CPU it is matrix
    products."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    twin = copy.deepcopy(model).cpu().train()
    counter = FlopCounterMode(display=False)
    with counter:
        twin.loss(batch[:1].cpu()).backward()
    return float(counter.get_total_flops()) * len(batch)


class LossOf(torch.nn.Module):
    """A model whose forward is its training loss, as DistributedDataParallel and torch.compile wrap it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.loss(ids)


def train(name: str, model: torch.nn.Module, windows: torch.Tensor, batch: int, steps: int, warmup: int,
          device: torch.device, compile_model: bool, world: int) -> Run:
    model.to(device).train()
    flops = count_flops(model, windows[:batch].to(device))  # eager: compiling fuses, the products stay the same
    step_model: torch.nn.Module = LossOf(model)
    if world > 1:  # gradients all-reduced during backward, one process per GPU
        step_model = torch.nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        step_model = torch.compile(step_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(i: int) -> None:
        start = (i * batch) % (len(windows) - batch + 1)
        ids = windows[start:start + batch].to(device, non_blocking=True)
        with precision(device):
            loss = step_model(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    params = sum(p.numel() for p in model.parameters())
    return Run(name, params, batch * (windows.shape[1] - 1), flops, seconds, peak)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_windows(data: Path, window: int, count: int, seed: int) -> torch.Tensor:
    from amadeus import data as dataset
    from amadeus.windows import random_windows

    folders = sorted(p for p in data.iterdir() if (p / dataset.MANIFEST).is_file()) if data.is_dir() else []
    if not folders:
        sys.exit(f"{data}: no processed dataset; run `make repro` (or `dvc repro preprocess`) first")
    ids, _ = random_windows(dataset.load_split(folders, "train"), count, window, seed)
    if not len(ids):
        sys.exit(f"{data}: no training piece is {window + 1} events long")
    return ids


def main(argv: list[str] | None = None) -> list[Run]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (kernel choice, allocation)")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--compile", action="store_true", help="torch.compile the model's loss")
    ap.add_argument("--models", default="perceiver_ar,performance_rnn")
    ap.add_argument("--data", default="dataset/processed", help="the pipeline's processed dataset")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak (default: known GPUs)")
    ap.add_argument("--tiny", action="store_true", help="tiny models (a check of the script, not a measurement)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    rank, world, local_rank = distributed()
    device = pick_device(args.device, local_rank)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    torch.manual_seed(rank)
    runs = []
    for key, (model, window, batch) in models(args.tiny).items():
        if key not in args.models.split(","):
            continue
        windows = training_windows(Path(args.data), window, batch * 8, seed=rank)
        runs.append(train(key, model, windows, batch, args.steps, args.warmup, device, args.compile, world))
    if rank == 0:
        report(runs, name, peak, world, args)
    if world > 1:
        torch.distributed.destroy_process_group()
    return runs


def report(runs: list[Run], device_name: str, peak: float | None, world: int, args: argparse.Namespace) -> None:
    print(f"device: {device_name} x {world} process(es); torch {torch.__version__}; bf16 peak "
          f"{f'{peak:g} TFLOPS' if peak else 'unknown (MFU not computed)'}; {args.steps} steps after "
          f"{args.warmup} warm-up{'; torch.compile' if args.compile else ''}")
    print(f"{'model':<16} {'params':>12} {'tokens/s':>12} {'TFLOPS':>8} {'MFU':>6} {'peak memory':>12}")
    rows = []
    for r in runs:
        mfu = r.mfu(peak)
        tflops = r.flops_per_step / r.seconds_per_step / 1e12
        print(f"{r.name:<16} {r.params:>12,} {r.tokens_per_second * world:>12,.0f} {tflops:>8.2f} "
              f"{'-' if mfu is None else f'{mfu:.1%}':>6} {r.peak_memory_bytes / 2**30:>10.2f} GiB")
        rows.append({"model": r.name, "params": r.params, "tokens_per_second": r.tokens_per_second * world,
                     "tflops_per_process": tflops, "mfu": mfu, "peak_memory_bytes": r.peak_memory_bytes})
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "processes": world, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
