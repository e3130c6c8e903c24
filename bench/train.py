"""Training throughput of the Performance RNN: whole-window nn.GRU vs a per-event GRUCell loop.

The candidate is amadeus' training step (embedding -> controls -> Linear -> nn.GRU over the whole
window in one call -> head -> loss -> backward -> AdamW). The baseline is the same model with the
same weights stepped event by event through nn.GRUCell in a Python loop, as the peer
implementation (djosix/Performance-RNN-PyTorch, docs/performance-rnn.md#model) trains. Both run in one process,
interleaved, threads pinned; the median of the repeats is reported with the ratio.

    python bench/train.py              # 3x512 GRU, batch 64, window 200
    python bench/train.py --quick      # smoke test: a tiny model, a few seconds
    python bench/train.py --bf16       # also the candidate under bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from amadeus.controls import CONTROL_DIM
from amadeus.hardware import machine
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
from amadeus.vocab import VOCAB_SIZE


class CellLoop(nn.Module):
    """The same network as `model`, with one nn.GRUCell per layer stepped in a Python loop."""

    def __init__(self, model: PerformanceRNN):
        super().__init__()
        self.model = model  # shares embedding, projection and head (and their weights)
        gru = model.gru
        self.cells = nn.ModuleList()
        for layer in range(gru.num_layers):
            cell = nn.GRUCell(gru.input_size if layer == 0 else gru.hidden_size, gru.hidden_size)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(gru, f"{name}_l{layer}"))
            self.cells.append(cell)

    def loss(self, ids: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m._inputs(m.shifted_inputs(ids), controls)
        h = [x.new_zeros(x.shape[0], c.hidden_size) for c in self.cells]
        outputs = []
        for t in range(x.shape[1]):
            inp = x[:, t]
            for i, cell in enumerate(self.cells):
                h[i] = cell(inp, h[i])
                inp = h[i]
            outputs.append(m.head(inp))
        logits = torch.stack(outputs, dim=1)
        return F.cross_entropy(logits.float().reshape(-1, VOCAB_SIZE), ids.reshape(-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke testing")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (pinned)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--bf16", action="store_true", help="also time the candidate under bf16 autocast")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.quick:
        config = PerformanceRNNConfig(embed_dim=16, input_size=32, hidden_size=32, num_layers=3, dropout=0.0)
        batch, window, repeats = 4, 20, 2
    else:  # the 3x512 preset (dropout off so both paths compute the same function)
        config = PerformanceRNNConfig(embed_dim=256, input_size=512, hidden_size=512, num_layers=3, dropout=0.0)
        batch, window, repeats = args.batch, args.window, args.repeats
    torch.manual_seed(0)
    model = PerformanceRNN(config).to(device).train()
    baseline = CellLoop(model).to(device).train()
    ids = torch.randint(0, VOCAB_SIZE, (batch, window + 1), device=device)
    ctrl = torch.rand(batch, window + 1, CONTROL_DIM, device=device)

    with torch.no_grad():  # the two paths are the same network (eval: no random control dropout)
        model.eval()
        diff = abs(float(model.loss(ids, ctrl)) - float(baseline.loss(ids, ctrl)))
        model.train()
    assert diff < 1e-3, f"loop and nn.GRU disagree: {diff}"

    def timed(net: nn.Module, bf16: bool) -> float:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = net.loss(ids, ctrl)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return batch * (window + 1) / (time.perf_counter() - t0)

    variants = {"nn.GRU whole window (fp32)": (model, False), "GRUCell loop (fp32)": (baseline, False)}
    if args.bf16:
        variants["nn.GRU whole window (bf16 autocast)"] = (model, True)
    for net, bf16 in variants.values():  # warm-up
        timed(net, bf16)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so load changes hit every variant alike
        for name, (net, bf16) in variants.items():
            rates[name].append(timed(net, bf16))
    median = {name: statistics.median(r) for name, r in rates.items()}
    base = median["GRUCell loop (fp32)"]
    print(f"machine: {machine()}; torch {torch.__version__}; device {device}; threads {torch.get_num_threads()}")
    print(f"model: {config.num_layers}x{config.hidden_size} GRU, batch {batch}, window {window}, "
          f"{repeats} interleaved repeats (median); loop-vs-GRU loss difference {diff:.1e}")
    for name, rate in median.items():
        print(f"  {name:38s} {rate:10,.0f} tokens/s   {rate / base:5.2f}x the loop")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "device": str(device), "threads": torch.get_num_threads(),
                       "batch": batch, "window": window, "tokens_per_second": median}, f, indent=2)


if __name__ == "__main__":
    main()
