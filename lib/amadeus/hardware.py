"""The machine: which device a run uses, and what a measured figure was measured on."""

from __future__ import annotations

import platform

import torch

from amadeus.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, key: str = "device") -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cuda` without a CUDA device is a one-line error naming `key`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise UserError(f"{key}: {name!r} is not allowed; choose one of: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def machine() -> str:
    """The CPU model name (as lscpu prints it), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
