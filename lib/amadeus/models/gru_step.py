"""Stepping a multi-layer GRU and its output head one event at a time (generation at small batch).

At batch 1 a step is a few matrix-vector products plus ~10 element-wise ops per layer, so its time
goes to reading the weights and to per-op dispatch (1-3 us per torch call). The plan cuts both:

- The first layer's input gates W_ih x + b_ih depend only on the event id (the controls are held
  for a whole generation), so they are computed once for every id into a table and looked up.
  That removes the largest matrix from every step (and, for a 3x512 fp32 model, brings the weights
  read per event from ~20 MB to ~16 MB, under what stays in this machine's L3 cache).
- A layer's new hidden state h_l feeds two products: the next layer's input gates (the head's
  logits at the top) now, and its own hidden gates W_hh h_l + b_hh at the next step. Both are
  computed right after the update, so with int8 weights h_l is quantized and multiplied once, by
  the two weight matrices stacked into one (`Int8Linear.stack`), instead of twice. The state
  therefore carries each layer's hidden gates for the next step along with h.

Works on `nn.GRU` (fp32, the trained model) and on `amadeus.quant`'s `DecomposedGRU` (int8). The
models do not know the int8 types: a projection that offers `forward_2d` (and a class-level `stack`
of two projections) is used through those, and a GRU's `step_dtype` says how its gate arithmetic
runs. So `amadeus.quant` builds on this module and never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn

Projection = Callable[[Tensor], Tensor]


def gru_update(gx: Tensor, gh: Tensor, h: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """One GRU cell update from its input gates gx = W_ih x + b_ih and hidden gates gh = W_hh h + b_hh.

    All [B, 3H] in PyTorch's gate order (r, z, n); h' = (1 - z) * n + z * h. The arithmetic runs in
    `dtype` (float16 on CUDA as in the Amadeus seed); the result is float32.
    """
    H = h.shape[-1]
    hh = h
    if dtype != torch.float32:
        gx, gh, hh = gx.to(dtype), gh.to(dtype), h.to(dtype)
    rz = torch.sigmoid(gx[:, :2 * H] + gh[:, :2 * H])  # r and z in one op: per-op cost decides at batch 1
    n = torch.tanh(torch.addcmul(gx[:, 2 * H:], rz[:, :H], gh[:, 2 * H:]))
    out = torch.lerp(n, hh, rz[:, H:])
    return out if dtype == torch.float32 else out.float()


class _RawLinear(NamedTuple):
    """One gate projection of an nn.GRU, read in place from its weights."""

    weight: Tensor
    bias: Tensor


def _gate_projections(gru: nn.Module) -> list[tuple[nn.Module | _RawLinear, nn.Module | _RawLinear]]:
    """Per layer: (input projection, hidden projection), each [N, in] -> [N, 3H]."""
    if isinstance(gru, nn.GRU):
        return [(_RawLinear(getattr(gru, f"weight_ih_l{i}"), getattr(gru, f"bias_ih_l{i}")),
                 _RawLinear(getattr(gru, f"weight_hh_l{i}"), getattr(gru, f"bias_hh_l{i}")))
                for i in range(gru.num_layers)]
    return [(c.fc_gate_x, c.fc_gate_h) for c in gru.cells]


def _fast(m: nn.Module | _RawLinear) -> Projection:
    """The cheapest 2-D call of a projection.

    A float matrix is copied transposed ([in, out], contiguous) and applied as addmm(b, x, W^T): at
    batch 1 that streams the weights at up to ~1.8x the rate of F.linear's [out, in] layout once
    they no longer fit in cache (bench/generate.py; 27 vs 15 GB/s on this project's EPYC VM).
    """
    if hasattr(m, "forward_2d"):  # an int8 projection applies itself best
        return m.forward_2d
    if isinstance(m, (_RawLinear, nn.Linear)):
        weight_t = m.weight.detach().t().contiguous()
        if m.bias is None:
            return partial(torch.mm, mat2=weight_t)
        return partial(torch.addmm, m.bias.detach(), mat2=weight_t)
    return m


def _both(first: nn.Module | _RawLinear, second: nn.Module | _RawLinear) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """x -> (first(x), second(x)): one int8 matmul over both weights when both quantize x alike."""
    stack = getattr(type(first), "stack", None) if type(first) is type(second) else None
    stacked = stack(first, second) if stack is not None else None
    if stacked is not None:
        n = first.out_features

        def fused(x: Tensor) -> tuple[Tensor, Tensor]:
            y = stacked.forward_2d(x)
            return y[:, :n], y[:, n:]
        fused.stacked = stacked  # (tests check the int8 path took this form)
        return fused
    a, b = _fast(first), _fast(second)
    return lambda x: (a(x), b(x))


class GRUStepPlan:
    """How one event goes through `gru` (nn.GRU or DecomposedGRU) and `head` (Linear or Int8Linear)."""

    @staticmethod
    def supports(gru: nn.Module) -> bool:
        """nn.GRU itself or amadeus.quant's DecomposedGRU (not, e.g., torch.ao's dynamic GRU)."""
        return type(gru) is nn.GRU or hasattr(gru, "cells")

    def __init__(self, gru: nn.Module, head: nn.Module) -> None:
        layers = _gate_projections(gru)
        self.dtype = getattr(gru, "step_dtype", torch.float32)
        self.input_gates: Projection = _fast(layers[0][0])  # layer 0, [N, input_size] -> [N, 3H]: the table
        self.hidden_gates: list[Projection] = [_fast(ph) for _, ph in layers]
        consumers = [px for px, _ in layers[1:]] + [head]  # who reads each layer's new h
        self.outputs = [_both(c, ph) for c, (_, ph) in zip(consumers, layers, strict=True)]

    def start(self, h: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The hidden gates of each layer for the next step, from its state h [B, H]."""
        return tuple(proj(hl) for proj, hl in zip(self.hidden_gates, h, strict=True))

    def step(self, gx: Tensor, h: tuple[Tensor, ...], gh: tuple[Tensor, ...]
             ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
        """First-layer input gates gx [B, 3H] -> (logits, new h per layer, next hidden gates per layer)."""
        new_h, new_gh = [], []
        for out, hl, ghl in zip(self.outputs, h, gh, strict=True):
            hl = gru_update(gx, ghl, hl, self.dtype)
            gx, g = out(hl)  # the next layer's input gates (logits at the top), this layer's next gates
            new_h.append(hl)
            new_gh.append(g)
        return gx, tuple(new_h), tuple(new_gh)
