"""One new token through all layers of an int8 Perceiver AR in kernels.c's `layer_step`, batch 1.

A cached step otherwise dispatches about 45 small PyTorch ops per layer (863 for 19 layers,
bench/native_kernels.py), each costing microseconds around kernels that take tens. `layer_step` does a
layer's arithmetic in one C call: the same formulas as PerceiverAR._step_one (LayerNorm, int8
projections, rotary, the bfloat16 cache write, attention, MLP with exact GELU), equal up to float
rounding (tests/test_native.py)."""

from __future__ import annotations

import ctypes
import weakref

import torch

from amadeus import native


class LayerSteps:
    """kernels.c Layer structs for every layer of `model` (the hybrid one first); built once per set of
    weights (`key`), holding the tensors the structs point into."""

    def __init__(self, model: torch.nn.Module, key: list) -> None:
        self.key = key
        cfg = model.config
        self.channels, self.heads = cfg.num_channels, cfg.num_heads
        self.rot = model.rotary.dim
        self.rotates = [model._rotates(i) for i in range(len(model.layers) + 1)]
        self.structs = [self._layer(model.hybrid.q_norm, model.hybrid.attn, model.hybrid.mlp)]
        self.structs += [self._layer(layer.norm, layer.attn, layer.mlp) for layer in model.layers]
        self.eps = model.hybrid.q_norm.eps
        self.wide = model.hybrid.mlp.fc1.out_features
        self.addresses = [ctypes.addressof(s) for s in self.structs]

    def _layer(self, norm, attn, mlp) -> native.LayerStruct:
        s = native.LayerStruct()
        s.norm_w, s.norm_b = norm.weight.data_ptr(), norm.bias.data_ptr()
        fused = attn.fused_qkv()  # the Attention keeps it alive
        parts = [fused] if fused is not None else [attn.q_proj.packed, attn.k_proj.packed, attn.v_proj.packed]
        for i, part in enumerate(parts):
            s.proj[i] = part.as_struct()
        s.nproj = len(parts)
        s.out, s.fc1, s.fc2 = attn.o_proj.packed.as_struct(), mlp.fc1.packed.as_struct(), mlp.fc2.packed.as_struct()
        s.mlp_norm_w, s.mlp_norm_b = mlp.norm.weight.data_ptr(), mlp.norm.bias.data_ptr()
        return s

    def run(self, x: torch.Tensor, buffers: list, lengths: list[int], position: int, rotary: torch.nn.Module
            ) -> torch.Tensor:
        """x [C] float32 of the new token -> its output [C]; writes its keys/values into the buffers at
        row lengths[i] - 1 of layer i."""
        lib = native.library()
        x = x.reshape(-1).to(torch.float32, copy=True)
        c, h = self.channels, self.heads
        work = torch.empty(5 * c + self.wide + h * max(lengths) + self.wide // 4 + 1)
        cos = rotary.cos.data_ptr() + 4 * position * self.rot
        sin = rotary.sin.data_ptr() + 4 * position * self.rot
        threads = torch.get_num_threads()
        for i, address in enumerate(self.addresses):
            kb, vb = buffers[i]
            rotates = self.rotates[i] and self.rot > 0
            lib.layer_step(x.data_ptr(), address, c, h, self.rot, cos if rotates else None, sin if rotates else None,
                           kb.data_ptr(), vb.data_ptr(), kb.stride(1), lengths[i], self.eps, work.data_ptr(), threads)
        return x


def _linears(model: torch.nn.Module) -> list:
    blocks = [(model.hybrid.attn, model.hybrid.mlp)] + [(layer.attn, layer.mlp) for layer in model.layers]
    return [m for attn, mlp in blocks for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.fc1, mlp.fc2)]


def layer_steps(model: torch.nn.Module) -> LayerSteps | None:
    """The model's LayerSteps, or None where layer_step does not apply (not int8 with packed weights,
    no native kernels, a head size that is not a multiple of 16)."""
    head = model.config.num_channels // model.config.num_heads
    if not native.available() or head % 16 or head > 256 or model.kv_dtype != torch.bfloat16:
        return None
    packed = [getattr(m, "packed", None) for m in _linears(model)]
    if any(p is None for p in packed):
        return None
    norms = [model.hybrid.q_norm, model.hybrid.mlp.norm]
    norms += [n for layer in model.layers for n in (layer.norm, layer.mlp.norm)]
    # what the structs point into: the objects themselves (held by the key, so a freed one's id or address
    # cannot come back as a new one's) and the fused projections, which the fused_qkv calls refresh
    key = [*packed, *(t for n in norms for t in (n.weight, n.bias)),
           *(layer.attn.fused_qkv() for layer in [model.hybrid, *model.layers])]
    steps = _STEPS.get(model)
    if steps is None or len(steps.key) != len(key) or any(a is not b for a, b in zip(steps.key, key, strict=True)):
        steps = _STEPS[model] = LayerSteps(model, key)
    return steps


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its LayerSteps
