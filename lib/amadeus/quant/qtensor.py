"""Linear (affine) 8-bit quantization: per-channel weights, per-tensor activation ranges.

Formulas follow Distiller's `q_utils.py` (docs/quantization.md#distiller-formulas), written in PyTorch's convention
`real = (q - zero_point) * scale`:

- asymmetric: the range is widened to contain 0 (so 0 is exact), 256 levels span [lo, hi];
  `asymmetric_signed` stores q in [-128, 127], `asymmetric_unsigned` in [0, 255]. Both are the same
  grid shifted by 128, so they give identical numbers; only the stored dtype differs.
- symmetric: zero_point 0, 127 levels each side of 0 (q in [-127, 127]).

Modes are stored by NAME (Distiller's enum values changed between versions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from amadeus.errors import UserError

MODES = ("asymmetric_signed", "asymmetric_unsigned", "symmetric")
CLIPS = ("avg", "none", "n_std")


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor or of each row of a matrix (PyTorch convention)."""

    scale: torch.Tensor  # float32, [] or [N]
    zero_point: torch.Tensor  # int32, same shape
    qmin: int
    qmax: int
    dtype: torch.dtype  # torch.int8 or torch.uint8 (storage dtype of q)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"quantize.mode: {mode!r} is not allowed; choose one of: {', '.join(MODES)}")
    return mode


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, mode: str) -> QParams:
    """Scale and zero point for values in [lo, hi] (tensors of equal shape: one per channel or [])."""
    check_mode(mode)
    lo = torch.as_tensor(lo, dtype=torch.float64)
    hi = torch.as_tensor(hi, dtype=torch.float64)
    if mode == "symmetric":
        sat = torch.maximum(lo.abs(), hi.abs())
        sat = torch.where(sat > 0, sat, torch.ones_like(sat))  # all-zero channel: any scale is exact
        scale = sat / 127.0
        zp = torch.zeros_like(scale, dtype=torch.int32)
        return QParams(scale.float(), zp, -127, 127, torch.int8)
    lo = torch.clamp(lo, max=0.0)  # Distiller: sat_min <- min(sat_min, 0), sat_max <- max(sat_max, 0)
    hi = torch.clamp(hi, min=0.0)
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    scale = span / 255.0
    # Distiller: zp = round(sat_min / scale) (half to even, as torch.round); q = round(x/scale) - zp
    zp = -torch.round(lo / scale)
    if mode == "asymmetric_signed":
        zp = zp - 128
        qmin, qmax, dtype = -128, 127, torch.int8
    else:
        qmin, qmax, dtype = 0, 255, torch.uint8
    return QParams(scale.float(), zp.to(torch.int32), qmin, qmax, dtype)


def quantize(x: torch.Tensor, qp: QParams, dim: int | None = None) -> torch.Tensor:
    """Round x to the grid of qp; `dim` is the channel dimension when qp holds one entry per channel."""
    scale, zp = qp.scale, qp.zero_point
    if dim is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        scale, zp = scale.view(shape), zp.view(shape)
    q = torch.round(x.float() / scale) + zp
    return q.clamp_(qp.qmin, qp.qmax).to(qp.dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               dim: int | None = None) -> torch.Tensor:
    if dim is not None:
        shape = [1] * q.dim()
        shape[dim] = -1
        scale, zero_point = scale.view(shape), zero_point.view(shape)
    return (q.to(torch.int32) - zero_point.to(torch.int32)).float() * scale


def quantize_per_channel(w: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output channel (row) quantization of a weight matrix with its true min/max (no clipping).

    Returns (q int8/uint8 [N, K], scale float32 [N], zero_point int32 [N]).
    """
    w = w.detach().float()
    flat = w.reshape(w.shape[0], -1)
    qp = qparams_from_range(flat.min(1).values, flat.max(1).values, mode)
    return quantize(w, qp, dim=0), qp.scale, qp.zero_point


def to_signed(q: torch.Tensor, zero_point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same grid as int8: uint8 q and its zero point both shift by -128 (exact)."""
    if q.dtype == torch.int8:
        return q, zero_point.to(torch.int32)
    return (q.to(torch.int16) - 128).to(torch.int8), zero_point.to(torch.int32) - 128


def clip_range(stats: dict, clip: str, n_std: float = 3.0) -> tuple[float, float]:
    """The activation range [lo, hi] of one tensor's calibration stats under a clip mode.

    avg: mean over calls of the per-call min/max (Distiller ClipMode.AVG); none: the true extremes;
    n_std: mean +- n_std * std, never wider than the true extremes (as Distiller).
    """
    if clip == "avg":
        lo, hi = stats["avg_min"], stats["avg_max"]
    elif clip == "none":
        lo, hi = stats["min"], stats["max"]
    elif clip == "n_std":
        lo = max(stats["mean"] - n_std * stats["std"], stats["min"])
        hi = min(stats["mean"] + n_std * stats["std"], stats["max"])
    else:
        raise UserError(f"quantize.clip: {clip!r} is not allowed; choose one of: {', '.join(CLIPS)}")
    return float(lo), float(hi)
