"""`.sess` checkpoints (docs/contracts.md#sess-checkpoints): a dict that `torch.load(path, weights_only=True)` reads.

Keys: format ("amadeus.sess/1"), family, config (dict), precision ("fp32" | "int8"), model (state
dict), optimizer, scheduler, step, rng (torch generator states as uint8 tensors: weights_only
forbids numpy objects), params (the params.yaml sections the run used), codec (dict with flavour).
The training loop adds: seconds (training time so far), wall, history ([step, train_loss, val_loss]
rows), acc, window, release_prior, and init_from (path, sha256, step of the checkpoint a fine-tune started
from, train_sha256 of the events it was tuned on). An int8 checkpoint adds `quant` (amadeus.quant.convert).

`load` trusts nothing in the file: anything that is not a checkpoint amadeus could have written is
refused with one line naming the file and what is wrong, and the tensors are compared with what
the config implies (a model built on the meta device) before anything is allocated from the config.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from amadeus.codec import CodecConfig
from amadeus.errors import UserError
from amadeus.fileio import atomic_open
from amadeus.models import FAMILIES, model_class, parameter_count_of
from amadeus.params import build
from amadeus.release_prior import ReleasePrior

FORMAT = "amadeus.sess/1"
PRECISIONS = ("fp32", "int8")
# Plain values (params, history, scheduler, ...) a file may hold: a real run has a few thousand; the
# cap keeps walking them, and `info` printing them, cheap even when shared references nest.
MAX_PLAIN_VALUES = 200_000
MAX_DEPTH = 32
# Buffers a config implies that the file does not store (Perceiver AR's rotary tables: max_seq_len x
# head dim x 2 floats) are allocated from the config alone, so their size is capped.
MAX_DERIVED_BYTES = 256 << 20
# Tensor elements an optimizer may keep per parameter element (AdamW keeps 2).
MAX_OPTIMIZER_RATIO = 4
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


def save(path: str | os.PathLike, ckpt: dict) -> None:
    """Write a checkpoint atomically (a crash mid-write leaves the previous file intact)."""
    with atomic_open(path, "wb") as f:
        torch.save(ckpt, f)


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint onto the CPU (weights_only: no code runs), refusing anything amadeus would not
    have written with one line: see docs/contracts.md#what-load-refuses."""
    return _load(path)[0]


def _load(path: str | os.PathLike) -> tuple[dict, Any, nn.Module]:
    """The checkpoint, its config dataclass and its model built on the meta device (no memory), all checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found (train one with `dvc repro`)")
    ckpt = _read(path)
    config = _check_fields(ckpt, path)
    return ckpt, config, _check_tensors(ckpt, config, path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model of a `.sess` (fp32 or int8), on `device`, in eval mode, and the checkpoint dict."""
    ckpt, config, _ = _load(path)  # the tensors match the config: building allocates only what the file holds
    model = model_class(ckpt["family"])(config)
    if ckpt.get("precision", "fp32") == "int8":
        try:
            from amadeus.quant import load_quantized
        except ImportError as e:
            raise UserError(f"{path}: an int8 checkpoint needs amadeus.quant, which is unavailable ({e})") from None
        model = load_quantized(ckpt, model, str(path))
    else:
        try:
            model.load_state_dict(ckpt["model"], strict=True)
        except RuntimeError as e:
            raise UserError(f"{path}: weights do not fit the {ckpt['family']} config it names: "
                            f"{str(e).splitlines()[0]}") from None
    # Decoding applies the prior the training fitted (amadeus.release_prior); it travels with the model.
    model.release_prior = ReleasePrior.from_dict(ckpt.get("release_prior"))
    return model.to(device).eval(), ckpt


# --- reading the bytes ------------------------------------------------------------------------------

def _refuse(path: Path, why: str) -> UserError:
    return UserError(f"{path}: not an amadeus checkpoint ({why})")


def _read(path: Path) -> Any:
    _check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps every refusal of its weights-only unpickler in advice to load the file unsafely,
        # which amadeus never gives: say what it found instead.
        text = str(e)
        if "global" in text.lower() or "REDUCE" in text or "BUILD" in text:
            raise _refuse(path, "contains code or objects other than tensors and plain values: refused") from None
        raise _refuse(path, "corrupt pickle") from None
    except MemoryError:
        raise _refuse(path, "too large to read into memory") from None
    except Exception as e:  # torch, zipfile and the unpickler raise many kinds on damaged bytes
        raise _refuse(path, _reason(e)) from None


def _reason(e: Exception) -> str:
    text = str(e)
    if "zip archive" in text or "central directory" in text or isinstance(e, zipfile.BadZipFile):
        return "truncated or corrupt zip archive"
    if "failed locating file" in text or "failed finding" in text:
        return "a zip archive without the members torch.save writes"
    if "record size" in text or "storage" in text or "size" in text:
        return "tensor data that does not match its description"
    return f"unreadable ({type(e).__name__})"


def _check_archive(path: Path) -> None:
    """torch.save writes a zip of stored (uncompressed) members under one folder with a data.pkl.
    Anything else is refused before torch reads it: a legacy pickle could declare storages of any
    size, and a compressed member could expand without bound."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    if magic != b"PK\x03\x04":
        raise _refuse(path, "not a zip archive, which torch.save writes" if magic else "empty file")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except Exception:  # BadZipFile, ValueError, struct.error, ...: a damaged directory
        raise _refuse(path, "truncated or corrupt zip archive") from None
    names = [i.filename for i in infos]
    root = names[0].split("/")[0] if names else ""
    if not root or f"{root}/data.pkl" not in names or any(not n.startswith(root + "/") for n in names):
        raise _refuse(path, "a zip archive without the members torch.save writes")
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or sum(i.file_size for i in infos) > size:
        raise _refuse(path, "compressed zip members, which torch.save never writes")


# --- the structure ----------------------------------------------------------------------------------

def _short(value: Any) -> str:
    """A value from the file, quoted for a message: repr (control characters escaped), at most 40 chars."""
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


def _name(key: Any) -> str:
    """A key from the file as it may appear in a message: plain names as they are, others quoted."""
    return key if isinstance(key, str) and _NAME.fullmatch(key) else _short(key)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_fields(ckpt: Any, path: Path) -> Any:
    """Every key's type; returns the config dataclass (validated as params.yaml is)."""
    if not isinstance(ckpt, dict):
        raise _refuse(path, f"it holds {_short(ckpt)}, not a dict")
    if ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an {FORMAT} checkpoint (format {_short(ckpt.get('format'))}); "
                        "use a .sess made by amadeus")
    for key in ("family", "config", "model"):
        if key not in ckpt:
            raise UserError(f"{path}: checkpoint has no '{key}'; the file is incomplete, retrain")

    def bad(key: str, what: str) -> UserError:
        return UserError(f"{path}: {key}: {what}")

    family = ckpt["family"]
    if not isinstance(family, str) or family not in FAMILIES:
        raise bad("family", f"{_short(family)} is not one of: {', '.join(FAMILIES)}")
    precision = ckpt.get("precision", "fp32")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise bad("precision", f"{_short(precision)} is not one of: {', '.join(PRECISIONS)}")
    raw = ckpt["config"]
    if isinstance(raw, Mapping):
        for k in raw:
            if not (isinstance(k, str) and _NAME.fullmatch(k)):
                raise bad("config", f"key {_short(k)} is not a config key")
    try:
        cls = model_class(family)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    config = build(cls.Config, raw, f"{path}: config")

    state = ckpt["model"]
    if not isinstance(state, Mapping) or not state:
        raise bad("model", f"expected a state dict (tensor name -> tensor), got {_short(state)}")
    for k, v in state.items():
        if not isinstance(k, str) or not _NAME.fullmatch(k):
            raise bad("model", f"tensor name {_short(k)} is not a module path")
        if not isinstance(v, torch.Tensor) or v.layout != torch.strided or v.device.type != "cpu":
            raise bad(f"model.{k}", f"expected a dense CPU tensor, got {_short(v)}")

    if "step" in ckpt and not (_is_int(ckpt["step"]) and ckpt["step"] >= 0):
        raise bad("step", f"expected a count of steps, got {_short(ckpt['step'])}")
    for key in ("seconds", "wall"):
        if key in ckpt and not (_is_number(ckpt[key]) and ckpt[key] >= 0):
            raise bad(key, f"expected seconds (a number >= 0), got {_short(ckpt[key])}")
    if "window" in ckpt and not (_is_int(ckpt["window"]) and ckpt["window"] >= 1):
        raise bad("window", f"expected a positive integer, got {_short(ckpt['window'])}")
    if "history" in ckpt:
        history = ckpt["history"]
        if not isinstance(history, (list, tuple)) or len(history) > MAX_PLAIN_VALUES:
            raise bad("history", f"expected a list of [step, train_loss, val_loss] rows, got {_short(history)}")
        for i, row in enumerate(history):
            if not (isinstance(row, (list, tuple)) and len(row) == 3 and _is_int(row[0])
                    and all(v is None or isinstance(v, float) or _is_int(v) for v in row[1:])):
                raise bad(f"history[{i}]", f"expected [step, train_loss, val_loss], got {_short(row)}")
    if "curve" in ckpt:
        curve = ckpt["curve"]
        if not isinstance(curve, (list, tuple)) or len(curve) > MAX_PLAIN_VALUES:
            raise bad("curve", f"expected a list of [step, train_loss] rows, got {_short(curve)}")
        for i, row in enumerate(curve):
            if not (isinstance(row, (list, tuple)) and len(row) == 2 and _is_int(row[0])
                    and (row[1] is None or isinstance(row[1], float) or _is_int(row[1]))):
                raise bad(f"curve[{i}]", f"expected [step, train_loss], got {_short(row)}")
    for key in ("acc", "log_acc"):
        acc = ckpt.get(key, [0.0, 0])
        if not (isinstance(acc, (list, tuple)) and len(acc) == 2 and _is_number(acc[0]) and _is_int(acc[1])):
            raise bad(key, f"expected [loss sum, count], got {_short(acc)}")
    stopped = ckpt.get("stopped_by")
    if stopped is not None and not (isinstance(stopped, str) and _NAME.fullmatch(stopped)):
        raise bad("stopped_by", f"expected why training stopped (e.g. 'max_steps'), got {_short(stopped)}")
    rng = ckpt.get("rng")
    if rng is not None:
        _check_rng(rng, bad)
    for key in ("optimizer", "scheduler", "params", "codec", "source", "quant", "release_prior", "init_from"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], Mapping):
            raise bad(key, f"expected a mapping, got {_short(ckpt[key])}")
    budget = [MAX_PLAIN_VALUES]
    for key in ("params", "codec", "source", "quant", "release_prior", "scheduler", "init_from"):
        if ckpt.get(key) is not None:
            _check_plain(ckpt[key], f"{path}: {key}", budget)
    if ckpt.get("codec") is not None:
        build(CodecConfig, ckpt["codec"], f"{path}: codec")
    try:
        ReleasePrior.from_dict(ckpt.get("release_prior"))
    except (ValueError, TypeError, AttributeError) as e:
        raise bad("release_prior", f"malformed ({e}); retrain or pass another file") from None
    scheduler = ckpt.get("scheduler")
    if scheduler:
        base = scheduler.get("base_lrs")
        if not (isinstance(base, list) and all(_is_number(v) for v in base) and _is_int(scheduler.get("last_epoch"))):
            raise bad("scheduler", "expected a learning-rate scheduler's state (base_lrs, last_epoch)")
    if precision == "int8":
        quant = ckpt.get("quant")
        if not isinstance(quant, Mapping):
            raise bad("quant", "missing: an int8 checkpoint records what was quantized; re-run the quantize stage")
        modules = quant.get("modules")
        if isinstance(modules, Mapping):
            for name in modules:
                if not (isinstance(name, str) and _NAME.fullmatch(name)):
                    raise bad("quant.modules", f"{_short(name)} is not a module name")
    return config


def _check_rng(rng: Any, bad: Any) -> None:
    if not isinstance(rng, Mapping):
        raise bad("rng", f"expected generator states, got {_short(rng)}")
    cpu = rng.get("torch")
    if cpu is not None and not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8
                                and cpu.shape == torch.get_rng_state().shape):
        raise bad("rng.torch", "not a CPU generator state (torch.get_rng_state)")
    cuda = rng.get("cuda")
    if cuda is not None and not (isinstance(cuda, (list, tuple))
                                 and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
        raise bad("rng.cuda", "not a list of CUDA generator states")


def _check_plain(obj: Any, where: str, budget: list[int], depth: int = 0) -> None:
    """Only plain values (no tensors), at most MAX_PLAIN_VALUES of them in all, nested at most MAX_DEPTH."""
    budget[0] -= 1
    if budget[0] < 0:
        raise UserError(f"{where}: more than {MAX_PLAIN_VALUES:,} values, which no amadeus run stores")
    if depth > MAX_DEPTH:
        raise UserError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]", budget, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise UserError(f"{where}: key {_short(k)} is not a name")
            _check_plain(v, f"{where}.{_name(k)}", budget, depth + 1)
    else:
        raise UserError(f"{where}: {_short(obj)} where plain values (numbers, strings, lists) belong")


# --- the tensors against the config -----------------------------------------------------------------

def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _check_tensors(ckpt: dict, config: Any, path: Path) -> nn.Module:
    """Build the model on the meta device (no memory) and compare its state dict with the file's."""
    family, state = ckpt["family"], ckpt["model"]
    try:
        with torch.device("meta"):
            model = model_class(family)(config)
    except UserError:
        raise
    except Exception as e:  # a config that passed validation but that the family cannot build
        raise UserError(f"{path}: config: a {family} model cannot be built from it ({type(e).__name__})") from None
    expected = model.state_dict()
    want = sum(t.numel() for t in expected.values())
    have = sum(t.numel() for t in state.values())
    if want > 2 * have:
        raise UserError(f"{path}: config implies {want:,} weights but the file holds {have:,}: "
                        "the config does not belong to these tensors")
    if ckpt.get("precision", "fp32") == "int8":
        # int8 modules compute their prepared form from values at construction, which a meta model
        # lacks: the names and shapes are checked by load_quantized (count checked above)
        return model
    missing = [k for k in expected if k not in state]
    if missing:
        raise UserError(f"{path}: model: no tensor '{missing[0]}', which the config implies "
                        f"({len(missing)} missing)")
    extra = [k for k in state if k not in expected]
    if extra:
        raise UserError(f"{path}: model: tensor '{extra[0]}' is not part of a {family} model with this config")
    for k, t in expected.items():
        got = state[k]
        if got.shape != t.shape:
            raise UserError(f"{path}: model: '{k}' is {_shape(got)} but the config implies {_shape(t)}")
        if got.dtype != t.dtype:
            raise UserError(f"{path}: model: '{k}' is {got.dtype} but the model needs {t.dtype}")
    stored = set(expected)
    derived = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n not in stored)
    if derived > MAX_DERIVED_BYTES:
        raise UserError(f"{path}: config implies {derived / 2**20:,.0f} MiB of tables that are not stored "
                        f"(at most {MAX_DERIVED_BYTES >> 20} MiB); its sizes (e.g. max_seq_len) are out of reach")
    if ckpt.get("precision", "fp32") == "fp32" and ckpt.get("optimizer"):
        _check_optimizer(ckpt["optimizer"], list(model.parameters()), path)
    return model


def _check_optimizer(opt: Mapping, params: list[torch.Tensor], path: Path) -> None:
    """An optimizer state that fits the model: one id per parameter, state tensors of parameter shapes."""
    groups, state = opt.get("param_groups"), opt.get("state")
    if not (isinstance(groups, list) and all(isinstance(g, Mapping) and isinstance(g.get("params"), list)
                                             for g in groups) and isinstance(state, Mapping)):
        raise UserError(f"{path}: optimizer: expected an optimizer's state (state, param_groups)")
    ids = [i for g in groups for i in g["params"]]
    if not all(_is_int(i) for i in ids) or sorted(ids) != list(range(len(params))):
        raise UserError(f"{path}: optimizer: its groups list {len(ids)} parameters; the model has {len(params)}")
    budget = [MAX_PLAIN_VALUES]
    for g in groups:
        _check_plain({k: v for k, v in g.items() if k != "params"}, f"{path}: optimizer.param_groups", budget)
    shapes = {tuple(p.shape) for p in params}
    total, limit = 0, MAX_OPTIMIZER_RATIO * sum(p.numel() for p in params)
    for i, entry in state.items():
        if not _is_int(i) or i not in range(len(params)) or not isinstance(entry, Mapping):
            raise UserError(f"{path}: optimizer.state: entry {_short(i)} is not a parameter's state")
        for name, v in entry.items():
            if isinstance(v, torch.Tensor):
                if v.dim() and tuple(v.shape) not in shapes:
                    raise UserError(f"{path}: optimizer.state.{i}.{_name(name)}: {_shape(v)} is no parameter's shape")
                total += v.numel()
            elif not (_is_number(v) or v is None or isinstance(v, bool)):
                raise UserError(f"{path}: optimizer.state.{i}.{_name(name)}: {_short(v)} is not a tensor or number")
    if total > limit:
        raise UserError(f"{path}: optimizer: holds {total:,} values for {limit // MAX_OPTIMIZER_RATIO:,} parameters")


# --- rng ---------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """Torch generator states as uint8 tensors (CPU, and every CUDA device when present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- amadeus info ------------------------------------------------------------------------------------

def _bytes(tensors: Any) -> int:
    """Bytes of the distinct storages among `tensors` (nested containers walked), as torch.save writes them."""
    seen: dict[int, int] = {}

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            seen[storage.data_ptr() or id(storage)] = storage.nbytes()
        elif isinstance(obj, Mapping):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(tensors)
    return sum(seen.values())


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def training_outcome(ckpt: Mapping) -> str | None:
    """Whether the run that made `ckpt` finished, ended early at its time cap, or stopped before its
    end (a signal, or a save mid-run): from `stopped_by` where training recorded it, else from the
    step and the budget in params.train; None when the checkpoint records neither."""
    train = (ckpt.get("params") or {}).get("train")
    step, stopped = ckpt.get("step"), ckpt.get("stopped_by")
    if not isinstance(train, Mapping) or not _is_int(step) or not _is_int(train.get("max_steps")):
        return f"stopped by {stopped}" if stopped else None
    max_steps, max_seconds, wall = train["max_steps"], train.get("max_seconds"), ckpt.get("wall")
    capped = _is_number(wall) and _is_number(max_seconds) and wall >= max_seconds
    if stopped == "max_seconds" or (stopped is None and step < max_steps and capped):
        cap = f" {max_seconds:g} s" if _is_number(max_seconds) else ""
        return f"ended early at step {step:,} of {max_steps:,}: the time cap (train.max_seconds{cap}) ran out"
    if stopped == "max_steps" or (stopped is None and step >= max_steps):
        return f"finished: all {max_steps:,} steps"
    if stopped == "interrupted":
        return f"not finished: interrupted at step {step:,} of {max_steps:,} (rerun to resume)"
    if stopped is None:
        return f"not finished: saved mid-run at step {step:,} of {max_steps:,} (rerun to resume)"
    return f"stopped by {stopped} at step {step:,} of {max_steps:,}"


def describe(path: str | os.PathLike) -> str:
    """What `amadeus info` prints: family, precision, step, how training ended, parameter count,
    sizes of the weights and of the optimizer state, config, params used."""
    ckpt, config, _ = _load(path)
    weights, optimizer = _bytes(ckpt["model"]), _bytes(ckpt.get("optimizer"))
    lines = [
        f"file:        {path} ({Path(path).stat().st_size:,} bytes)",
        f"format:      {ckpt['format']}",
        f"family:      {ckpt['family']}",
        f"precision:   {ckpt.get('precision', 'fp32')}",
        f"step:        {ckpt.get('step', '?')}",
        f"parameters:  {parameter_count_of(ckpt['family'], config):,}",
        f"weights:     {_mb(weights)} ({ckpt.get('precision', 'fp32')})",
        f"optimizer:   {_mb(optimizer) + ' (only needed to resume training)' if optimizer else 'none stored'}",
    ]
    outcome = training_outcome(ckpt)
    if outcome:
        lines.append(f"training:    {outcome}")
    base = ckpt.get("init_from")
    if base:  # a fine-tune: where its weights started
        lines.append(f"init_from:   {_short(base.get('path'))} (its step {_short(base.get('step'))}, "
                     f"sha256 {str(base.get('sha256'))[:12]})")
    if "wall" in ckpt:
        lines.append(f"trained:     {ckpt['wall']:.0f} s" + (f" ({ckpt['seconds']:.0f} s in steps)"
                                                           if "seconds" in ckpt else ""))
    history = ckpt.get("history") or []
    if history and history[-1][2] is not None:
        lines.append(f"val_nll:     {history[-1][2]:.4f} nats/event at step {history[-1][0]}")
    lines.append(f"codec:       {ckpt.get('codec')}")
    lines.append("config:")
    lines += ["  " + line for line in yaml.safe_dump(dict(ckpt["config"]), sort_keys=False).splitlines()]
    if ckpt.get("params"):
        lines.append("params:")
        lines += ["  " + line for line in yaml.safe_dump(_plain(ckpt["params"]), sort_keys=False).splitlines()]
    return "\n".join(lines)


def _plain(obj: Any) -> Any:
    """Containers as plain dict/list (tuples from the unpickler confuse yaml.safe_dump)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
