"""Calibration statistics: forward hooks on every leaf module, summarised as in Distiller.

Per module: `inputs` (by positional index, tensors only) and `output`, each with
    min, max        extremes over all calls
    avg_min/avg_max mean over forward calls of the per-call minimum/maximum, where a call's value
                    is the batch mean of the per-sample min/max (sample = row of x.view(B, -1));
                    this is the Amadeus fork's definition (docs/quantization.md#calibration-statistics), not latest
                    Distiller's running mean that weighs the first call too much
    mean            mean over calls of the tensor mean
    std             standard deviation over all elements of all calls (Welford/Chan merge)
    shape           the tensor shape as a string, e.g. "(2, 512)" (last call)
A stepped RNN counts each step as a call. Inputs are recorded before the call (in-place modules
would overwrite them). Modules never called are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class TensorStats:
    def __init__(self) -> None:
        self.calls = 0
        self.min, self.max = math.inf, -math.inf
        self.avg_min = self.avg_max = self.mean = 0.0
        self.count, self.m, self.m2 = 0, 0.0, 0.0  # Welford state over all elements
        self.shape = ""

    @torch.no_grad()
    def update(self, t: torch.Tensor) -> None:
        x = t.detach().float()
        self.shape = str(tuple(x.shape))
        if x.numel() == 0:
            return
        flat = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
        lo, hi = torch.aminmax(flat, dim=1)
        bmean = x.mean()
        # one host sync per call: min, max, batch mean of per-sample min/max, mean, M2
        vals = torch.stack([lo.min(), hi.max(), lo.mean(), hi.mean(), bmean, ((x - bmean) ** 2).sum()])
        cmin, cmax, cavg_min, cavg_max, cmean, cm2 = vals.tolist()
        self.calls += 1
        n = self.calls
        self.min, self.max = min(self.min, cmin), max(self.max, cmax)
        self.avg_min += (cavg_min - self.avg_min) / n
        self.avg_max += (cavg_max - self.avg_max) / n
        self.mean += (cmean - self.mean) / n
        # Chan et al. parallel merge of (count, mean, M2) with this call's elements
        cnt = x.numel()
        total = self.count + cnt
        delta = cmean - self.m
        self.m += delta * cnt / total
        self.m2 += cm2 + delta * delta * self.count * cnt / total
        self.count = total

    def as_dict(self) -> dict:
        std = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0
        return {"min": self.min, "max": self.max, "avg_min": self.avg_min, "avg_max": self.avg_max,
                "mean": self.mean, "std": std, "shape": self.shape}


class StatsCollector:
    """Records input/output statistics of the leaf modules of `model` while it runs.

        with StatsCollector(model) as sc:
            for batch in batches: model.loss(batch)
        stats = sc.stats()   # {module name: {"inputs": {0: {...}}, "output": {...}}}
    """

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        wanted = set(names) if names is not None else None
        self.modules = {n: m for n, m in model.named_modules()
                        if n and not list(m.children()) and (wanted is None or n in wanted)}
        self.inputs: dict[str, dict[int, TensorStats]] = {n: {} for n in self.modules}
        self.outputs: dict[str, TensorStats] = {n: TensorStats() for n in self.modules}
        self._handles: list = []

    def __enter__(self) -> StatsCollector:
        for name, m in self.modules.items():
            # inputs before the call: an in-place module (LeakyReLU(inplace=True)) would overwrite them
            self._handles.append(m.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(m.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    self.inputs[name].setdefault(i, TensorStats()).update(a)
        return hook

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output) -> None:
            if isinstance(output, torch.Tensor):
                self.outputs[name].update(output)
        return hook

    def stats(self) -> dict:
        out = {}
        for name in self.modules:
            if self.outputs[name].calls == 0 and not self.inputs[name]:
                continue
            entry = {"inputs": {i: s.as_dict() for i, s in sorted(self.inputs[name].items())}}
            if self.outputs[name].calls:
                entry["output"] = self.outputs[name].as_dict()
            out[name] = entry
        return out
