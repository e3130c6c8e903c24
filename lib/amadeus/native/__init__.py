"""Batch-1 CPU kernels (kernels.c): the int8 matrix-vector product and one-query attention over a
bfloat16 key/value cache, compiled on first use with the system's C compiler and called through ctypes.

They are used only where they compute what the PyTorch path computes (the same integers, float sums
in another order): the CPU has AVX-512 VNNI, the shapes are multiples of 16, the rows are few.
Elsewhere, or when `AMADEUS_NATIVE=0`, or when no compiler is found (said once on stderr), amadeus
runs PyTorch's ops, slower. The library is cached per source hash under `$XDG_CACHE_HOME/amadeus`
(`~/.cache/amadeus`), written atomically, so concurrent first uses are safe.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import torch

from amadeus.errors import main_entry

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma", "-fopenmp",
         "-ffp-contract=off", "-shared", "-fPIC"]
# the CPU features the flags above let the compiler use
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "fma")
MAX_ROWS = 8  # above this many rows PyTorch's matmul (compute-bound) is faster than streaming


def _cpu_has_features() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return all(f in flags for f in CPU_FLAGS)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "amadeus" / "native"


def _say(message: str) -> None:
    print(f"amadeus: {message}; batch-1 int8 generation uses PyTorch's slower ops", file=sys.stderr)


def build(quiet: bool = False) -> Path | None:
    """The compiled library's path (compiling it if needed), or None where the kernels cannot run."""
    if os.environ.get("AMADEUS_NATIVE", "1") == "0" or not _cpu_has_features():
        return None
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{digest}.so"
    if target.is_file():
        return target
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if compiler is None:
        if not quiet:
            _say("no C compiler (cc) found to build the native kernels")
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".so", dir=target.parent)
        os.close(fd)
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            Path(tmp).unlink(missing_ok=True)
            if not quiet:
                first = (done.stderr.strip().splitlines() or ["?"])[0]
                _say(f"building the native kernels failed ({compiler}: {first})")
            return None
        os.replace(tmp, target)
    except OSError as e:
        if not quiet:
            _say(f"cannot build the native kernels in {target.parent} ({e.strerror})")
        return None
    return target


@cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (see build). torch is imported first, so OpenMP resolves to the
    runtime PyTorch loaded."""
    path = build()
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    p, i, f, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long
    lib.int8_linear.argtypes = [p, i, i, i, p, p, p, p, p, f, f, i, p, p, i]
    lib.int8_linear.restype = None
    lib.attend_one.argtypes = [p, p, p, i, i, i, L, f, p, p, i]
    lib.attend_one.restype = None
    lib.layer_step.argtypes = [p, p, i, i, i, p, p, p, p, L, i, f, p, i]
    lib.layer_step.restype = None
    return lib


def available() -> bool:
    return library() is not None


def pack_int8(weight: torch.Tensor) -> torch.Tensor:
    """W [N, K] int8 -> [N/16, K/4, 16, 4], kernels.c's layout (N and K multiples of 16)."""
    n, k = weight.shape
    return weight.reshape(n // 16, 16, k // 4, 4).permute(0, 2, 1, 3).contiguous()


class LinearStruct(ctypes.Structure):  # kernels.c's Linear
    _fields_ = [("wp", ctypes.c_void_p), ("rowsum", ctypes.c_void_p), ("ss", ctypes.c_void_p),
                ("nzss", ctypes.c_void_p), ("bias_eff", ctypes.c_void_p), ("inv_sx", ctypes.c_float),
                ("zx", ctypes.c_float), ("has_zw", ctypes.c_int), ("n", ctypes.c_int), ("k", ctypes.c_int)]


class LayerStruct(ctypes.Structure):  # kernels.c's Layer
    _fields_ = [("norm_w", ctypes.c_void_p), ("norm_b", ctypes.c_void_p), ("proj", LinearStruct * 3),
                ("nproj", ctypes.c_int), ("out", LinearStruct), ("mlp_norm_w", ctypes.c_void_p),
                ("mlp_norm_b", ctypes.c_void_p), ("fc1", LinearStruct), ("fc2", LinearStruct)]


class PackedInt8Linear:
    """An int8 Linear's weights in kernels.c's layout with its folded constants (Int8Linear.prepare's),
    their addresses taken once: a call then costs one output allocation and one C call."""

    def __init__(self, weight: torch.Tensor, ss: torch.Tensor, nzss: torch.Tensor, bias_eff: torch.Tensor,
                 inv_sx: float, zx: float, has_zw: bool) -> None:
        self.n, self.k = weight.shape
        self.inv_sx, self.zx, self.has_zw = inv_sx, zx, bool(has_zw)
        self._keep((pack_int8(weight), weight.sum(1, dtype=torch.int32), ss.float().contiguous(),
                    nzss.float().contiguous(), bias_eff.float().contiguous()))

    def _keep(self, tensors: tuple[torch.Tensor, ...]) -> None:
        """Hold the packed weights, row sums, ss, nzss and bias_eff, and take their addresses once."""
        self.tensors = tensors
        self.pointers = [t.data_ptr() for t in tensors]

    @classmethod
    def concat(cls, parts: list[PackedInt8Linear]) -> PackedInt8Linear | None:
        """One product computing the parts' outputs side by side (one pass over x, one C call), or None
        when they quantize their input differently. The packed layout stacks by output blocks."""
        first = parts[0]
        if any((p.inv_sx, p.zx, p.k) != (first.inv_sx, first.zx, first.k) for p in parts):
            return None
        new = cls.__new__(cls)
        new.n, new.k = sum(p.n for p in parts), first.k
        new.inv_sx, new.zx, new.has_zw = first.inv_sx, first.zx, any(p.has_zw for p in parts)
        new._keep(tuple(torch.cat([p.tensors[i] for p in parts]) for i in range(len(first.tensors))))
        return new

    def as_struct(self) -> LinearStruct:
        return LinearStruct(*self.pointers, self.inv_sx, self.zx, int(self.has_zw), self.n, self.k)

    @staticmethod
    def fits(weight: torch.Tensor) -> bool:
        return available() and weight.dtype == torch.int8 and weight.device.type == "cpu" \
            and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """y [M, N] for x [M, K] float32, M <= MAX_ROWS."""
        x = x.contiguous()
        m = x.shape[0]
        y = torch.empty(m, self.n)
        scratch = torch.empty(m * self.k, dtype=torch.uint8)  # per call: a model may serve several threads
        library().int8_linear(x.data_ptr(), m, self.k, self.n, *self.pointers, self.inv_sx, self.zx,
                              int(self.has_zw), y.data_ptr(), scratch.data_ptr(), torch.get_num_threads())
        return y


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor | None:
    """softmax(scale q k^T) v for q [1, H, 1, D] float32 and k, v [1, H, L, D] bfloat16 views whose rows
    are contiguous (a cache buffer's first L rows) -> [1, H, 1, D]; None where the kernel does not apply."""
    lib = library()
    b, h, length, d = k.shape
    if (lib is None or b != 1 or q.shape[2] != 1 or d % 16 or d > 256 or k.dtype != torch.bfloat16
            or v.dtype != torch.bfloat16 or q.dtype != torch.float32 or k.stride() != v.stride()
            or k.stride(3) != 1 or k.stride(2) != d or q.device.type != "cpu"):
        return None
    q = q.contiguous()
    out = torch.empty(1, h, 1, d)
    scores = torch.empty(h * length)
    lib.attend_one(q.data_ptr(), k.data_ptr(), v.data_ptr(), h, length, d, k.stride(1), scale, out.data_ptr(),
                   scores.data_ptr(), torch.get_num_threads())
    return out


@main_entry
def main() -> None:
    """Build the kernels now and say where they are (make setup calls this)."""
    path = build()
    print(f"amadeus.native: {path}" if path else "amadeus.native: not built; PyTorch's ops are used")
