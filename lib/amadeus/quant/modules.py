"""Quantizable building blocks: element-wise ops as modules, a decomposed GRU, int8 Linear/Embedding.

The decomposed GRU computes exactly what `nn.GRU` computes, but from explicit modules so that
calibration hooks see every tensor: per layer a `fc_gate_x` Linear (input -> 3H gates), a `fc_gate_h`
Linear (hidden -> 3H gates) and one module per element-wise add/multiply. Unlike the Amadeus fork of
Distiller (docs/quantization.md#the-gru-in-the-amadeus-fork), no element-wise module is reused for
several operations, so each one's statistics describe one tensor.

`Int8Linear` holds real int8 weights (one scale and zero point per output channel). Its CPU fast path
quantizes the input to int8 with a static range from calibration and multiplies with
`torch._int_mm` (int8 x int8 -> int32); the int32 result is rescaled to float32 and never
requantized, so outputs (e.g. logits) are not clipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amadeus import native
from amadeus.models.gru_step import gru_update
from amadeus.quant.qtensor import check_mode, dequantize, qparams_from_range, quantize_per_channel, to_signed

# ---------------------------------------------------------------------------------------------------
# element-wise operations as modules (one instance per operation, so hooks record one tensor each)


class EltwiseAdd(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class EltwiseSub(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b


class EltwiseMult(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


# ---------------------------------------------------------------------------------------------------
# int8 Linear and Embedding


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 per output channel.

    With an input range (static mode) the input is quantized per tensor to int8 with that range
    (values outside are clipped to it) and the product runs in `torch._int_mm`. Without one
    (dynamic mode) the range is each call's own min/max. On devices other than CPU the weights are
    dequantized per call and multiplied in the input's dtype (int8 storage, float compute).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 mode: str = "asymmetric_signed", static: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.mode = check_mode(mode)
        # zero points are stored in the weights' own 8-bit type (they lie on the same grid)
        qdtype = torch.uint8 if mode == "asymmetric_unsigned" else torch.int8
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=qdtype))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("weight_zero_point", torch.zeros(out_features, dtype=qdtype))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.static = static
        if static:
            # input_range: the clipped calibration range [lo, hi] the scale was made from (kept for the record)
            self.register_buffer("input_range", torch.zeros(2))
            self.register_buffer("input_scale", torch.ones(()))
            self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int8))
        self.prepare()

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str = "asymmetric_signed",
                    input_range: tuple[float, float] | None = None) -> Int8Linear:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, mode,
                static=input_range is not None)
        q, scale, zp = quantize_per_channel(linear.weight, mode)
        m.weight.copy_(q)
        m.weight_scale.copy_(scale)
        m.weight_zero_point.copy_(zp)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach().float())
        if input_range is not None:
            # activations: always a signed int8 grid (the unsigned grid is the same one shifted by 128)
            act_mode = "symmetric" if mode == "symmetric" else "asymmetric_signed"
            qp = qparams_from_range(torch.tensor(input_range[0]), torch.tensor(input_range[1]), act_mode)
            m.input_range.copy_(torch.tensor(input_range))
            m.input_scale.copy_(qp.scale)
            m.input_zero_point.copy_(qp.zero_point)
        m.prepare()
        return m.to(linear.weight.device)

    @classmethod
    def stack(cls, first: Int8Linear, second: Int8Linear) -> Int8Linear | None:
        """One Int8Linear computing [first(x), second(x)] with one quantization of x and one matmul,
        or None when the two do not quantize their input alike (or are not static CPU modules)."""
        same = (first.static and second.static and first.mode == second.mode
                and first.in_features == second.in_features and first.weight.device.type == "cpu"
                and second.weight.device.type == "cpu"
                and bool(first.input_scale == second.input_scale)
                and bool(first.input_zero_point == second.input_zero_point))
        if not same:
            return None
        m = cls(first.in_features, first.out_features + second.out_features, True, first.mode, static=True)
        with torch.no_grad():
            for name in ("weight", "weight_scale", "weight_zero_point"):
                getattr(m, name).copy_(torch.cat([getattr(first, name), getattr(second, name)]))
            m.bias.copy_(torch.cat([first._bias, second._bias]))
            for name in ("input_range", "input_scale", "input_zero_point"):
                getattr(m, name).copy_(getattr(first, name))
        m.prepare()
        return m

    def _apply(self, fn, recurse=True):  # .to(device) moves buffers; the derived constants follow
        super()._apply(fn, recurse)
        self.prepare()
        return self

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale, self.weight_zero_point, dim=0)

    @torch.no_grad()
    def prepare(self) -> None:
        """Derive the runtime constants from the stored buffers (call after loading a state dict).

        For x = s_x (xq - z_x) and W = s_w (Wq - z_w) per row n:
            y_n = s_x s_wn [acc_n - z_wn sum(xq) - z_x rowsum(Wq)_n + K z_x z_wn] + b_n
        with acc = xq Wq^T; everything but acc and sum(xq) is folded into constants here.
        """
        q, zw = to_signed(self.weight, self.weight_zero_point)
        self._wq = q.contiguous()
        self._wt = self._wq.t()  # _int_mm's fast CPU path takes the weight as a transposed [K, N] view
        self._zw = zw.float()
        self._rowsum = self._wq.sum(1, dtype=torch.int32).float()
        self._has_zw = bool((zw != 0).any())
        bias = self.bias if self.bias is not None else torch.zeros(self.out_features, device=q.device)
        self._bias = bias.float()
        if self.static:
            sx, zx = self.input_scale.float(), float(self.input_zero_point)
            ss = sx * self.weight_scale
            self._inv_sx = float(1.0 / sx)
            self._zx = self.input_zero_point.float()
            self._ss = ss
            self._nzss = -self._zw * ss
            self._bias_eff = bias.float() + ss * zx * (self.in_features * self._zw - self._rowsum)
        # the weights again in amadeus.native's layout, for its few-rows kernel (same results, faster);
        # `packed` is public: a model may fuse several of them (amadeus.models.perceiver_ar.Attention)
        self.packed = None
        if self.static and native.PackedInt8Linear.fits(self._wq):
            self.packed = native.PackedInt8Linear(self._wq, self._ss, self._nzss, self._bias_eff, self._inv_sx,
                                                   float(self.input_zero_point), self._has_zw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self.forward_2d(x.reshape(-1, self.in_features))
        return y.view(*shape[:-1], self.out_features)

    def forward_2d(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias.to(x.dtype)
                            if self.bias is not None else None)
        if not self.static:
            return self._dynamic(x)
        if self.packed is not None and x.shape[0] <= native.MAX_ROWS and x.dtype == torch.float32:
            return self.packed(x)
        xf = torch.add(self._zx, x, alpha=self._inv_sx).round_().clamp_(-128, 127)  # integers, still float
        acc = torch._int_mm(xf.to(torch.int8), self._wt)
        if self._has_zw:
            xs = xf.sum(1, keepdim=True)  # exact (|sum| < 2^24); cheaper here than on the int8 copy
            return torch.addcmul(torch.addcmul(self._bias_eff, xs, self._nzss), acc, self._ss)
        return torch.addcmul(self._bias_eff, acc, self._ss)

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        lo, hi = torch.aminmax(x)
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        sx = ((hi - lo) / 255.0).clamp(min=1e-12)
        zx = -torch.round(lo / sx) - 128
        xq = (x / sx).round_().add_(zx).clamp_(-128, 127).to(torch.int8)
        acc = torch._int_mm(xq, self._wt).float()
        xs = xq.sum(1, keepdim=True, dtype=torch.float32)
        acc = acc - zx * self._rowsum - self._zw * (xs - self.in_features * zx)
        return acc * (sx * self.weight_scale) + self._bias

    def extra_repr(self) -> str:
        kind = "static" if self.static else "dynamic"
        return f"in={self.in_features}, out={self.out_features}, mode={self.mode}, input={kind}"


class Int8Embedding(nn.Module):
    """Embedding table stored as int8 per row (one scale and zero point per id).

    A lookup is a gather with no arithmetic to speed up, so the table is dequantized once into a
    float32 cache that is not part of the state dict: the file is 4x smaller, lookups as fast.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "asymmetric_signed",
                 padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.mode = check_mode(mode)
        self.padding_idx = padding_idx
        qdtype = torch.uint8 if mode == "asymmetric_unsigned" else torch.int8
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=qdtype))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))
        self.register_buffer("weight_zero_point", torch.zeros(num_embeddings, dtype=qdtype))
        self.prepare()

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, mode: str = "asymmetric_signed") -> Int8Embedding:
        m = cls(emb.num_embeddings, emb.embedding_dim, mode, emb.padding_idx)
        q, scale, zp = quantize_per_channel(emb.weight, mode)
        m.weight.copy_(q)
        m.weight_scale.copy_(scale)
        m.weight_zero_point.copy_(zp)
        m.prepare()
        return m.to(emb.weight.device)

    @torch.no_grad()
    def prepare(self) -> None:
        self._table = dequantize(self.weight, self.weight_scale, self.weight_zero_point, dim=0)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.prepare()
        return self

    def dequantized_weight(self) -> torch.Tensor:
        """The float table (what a tied output projection multiplies with)."""
        return self._table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self._table, self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode}"


# ---------------------------------------------------------------------------------------------------
# the GRU, decomposed


def _linear2d(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.forward_2d(x) if isinstance(m, Int8Linear) else m(x)


class GRUCell(nn.Module):
    """One GRU layer step from explicit modules (PyTorch gate order r, z, n):

        r = sigmoid(x_r + h_r)          add_r, act_r
        z = sigmoid(x_z + h_z)          add_z, act_z
        n = tanh(x_n + r * h_n)         mult_r, add_n, act_n   (h_n includes b_hn, as nn.GRU)
        h' = n + z * (h - n)            sub_h, mult_z, add_h   (= (1 - z) * n + z * h)
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.fc_gate_x = nn.Linear(input_size, 3 * hidden_size)
        self.fc_gate_h = nn.Linear(hidden_size, 3 * hidden_size)
        self.add_r, self.add_z, self.add_n, self.add_h = EltwiseAdd(), EltwiseAdd(), EltwiseAdd(), EltwiseAdd()
        self.mult_r, self.mult_z = EltwiseMult(), EltwiseMult()
        self.sub_h = EltwiseSub()
        self.act_r, self.act_z, self.act_n = nn.Sigmoid(), nn.Sigmoid(), nn.Tanh()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Reference step through every module (what calibration observes)."""
        xr, xz, xn = self.fc_gate_x(x).chunk(3, -1)
        hr, hz, hn = self.fc_gate_h(h).chunk(3, -1)
        r = self.act_r(self.add_r(xr, hr))
        z = self.act_z(self.add_z(xz, hz))
        n = self.act_n(self.add_n(xn, self.mult_r(r, hn)))
        return self.add_h(n, self.mult_z(z, self.sub_h(h, n)))

    def fast_step(self, gx: torch.Tensor, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The same arithmetic without module calls, on precomputed input gates gx [B, 3H], the gate
        arithmetic in `dtype` (float16 as in the Amadeus seed, or float32). Returns h' in float32."""
        return gru_update(gx, _linear2d(self.fc_gate_h, h), h, dtype)


def eltwise_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: float16 on CUDA (fast half arithmetic, as the seed); float32 on CPU, where float16 has
    no native arithmetic without AVX512-FP16 and only adds conversions (measured in bench/quantize.py)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


class DecomposedGRU(nn.Module):
    """A drop-in for `nn.GRU(batch_first=True)`: `out, h_n = gru(x [B,T,in], h0 [L,B,H] | None)`.

    In fp32 (calibration) every step goes through the cell's modules, each step counting as one
    call for the statistics (as Distiller's stepped RNN). Once its Linears are int8, the input
    projection of a whole layer runs as one matmul over all T steps and each step's gate arithmetic
    uses `eltwise_dtype` without module-call overhead.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.cells = nn.ModuleList(
            GRUCell(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers))
        self.dropout = nn.Dropout(dropout)  # between layers, training only (as nn.GRU)
        self.eltwise_dtype = "float32"

    @classmethod
    def from_gru(cls, gru: nn.GRU) -> DecomposedGRU:
        if not gru.batch_first or gru.bidirectional or not gru.bias or gru.proj_size:
            raise ValueError("DecomposedGRU supports nn.GRU(batch_first=True, bias=True), one direction, "
                             "no projection")
        m = cls(gru.input_size, gru.hidden_size, gru.num_layers, gru.dropout)
        with torch.no_grad():
            for i, cell in enumerate(m.cells):
                cell.fc_gate_x.weight.copy_(getattr(gru, f"weight_ih_l{i}"))
                cell.fc_gate_x.bias.copy_(getattr(gru, f"bias_ih_l{i}"))
                cell.fc_gate_h.weight.copy_(getattr(gru, f"weight_hh_l{i}"))
                cell.fc_gate_h.bias.copy_(getattr(gru, f"bias_hh_l{i}"))
        return m.to(gru.weight_ih_l0.device).train(gru.training)

    @property
    def quantized(self) -> bool:
        return isinstance(self.cells[0].fc_gate_h, Int8Linear)

    @property
    def step_dtype(self) -> torch.dtype:
        """The dtype of the gate arithmetic (read by amadeus.models.gru_step's plan)."""
        return eltwise_dtype(self.eltwise_dtype, self.cells[0].fc_gate_h.weight.device)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, B, self.hidden_size, dtype=torch.float32)
        fast = self.quantized and not self.training
        dtype = eltwise_dtype(self.eltwise_dtype, x.device)
        layer_in, h_n = x, []
        for i, cell in enumerate(self.cells):
            h = h0[i]
            outs = []
            if fast and T == 1:  # generation: one event, no reshapes
                h = cell.fast_step(_linear2d(cell.fc_gate_x, layer_in[:, 0]), h, dtype)
                outs.append(h)
            elif fast:
                gx = cell.fc_gate_x(layer_in).float()  # one matmul for all T steps
                for t in range(T):
                    h = cell.fast_step(gx[:, t], h, dtype)
                    outs.append(h)
            else:
                for t in range(T):
                    h = cell(layer_in[:, t], h)
                    outs.append(h)
            layer_in = outs[0].unsqueeze(1) if T == 1 else torch.stack(outs, 1)
            if i < self.num_layers - 1:
                layer_in = self.dropout(layer_in)
            h_n.append(h)
        return layer_in, torch.stack(h_n, 0)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, eltwise={self.eltwise_dtype}"
