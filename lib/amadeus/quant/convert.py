"""Swap a model's modules for their quantizable / int8 forms, and rebuild an int8 model from a checkpoint.

Generic over architectures: every `nn.GRU` becomes a `DecomposedGRU`, every `nn.Linear` an
`Int8Linear`, every `nn.Embedding` an `Int8Embedding` (unless named in `skip`). What was converted is
recorded by module name in the checkpoint's `quant` entry, so `load_quantized` can rebuild the same
structure from the fp32 architecture without pickled classes (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from amadeus.errors import UserError
from amadeus.quant.modules import DecomposedGRU, Int8Embedding, Int8Linear
from amadeus.quant.qtensor import MODES, check_mode, clip_range
from amadeus.quant.stats import StatsCollector
from amadeus.vocab import PAD_ID

FORMAT = "amadeus.quant/1"
ELTWISE_DTYPES = ("auto", "float16", "float32")


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def decompose_grus(model: nn.Module, skip: Iterable[str] = ()) -> list[str]:
    """Replace every nn.GRU (in place) by an equivalent DecomposedGRU; returns their names."""
    skip = set(skip)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.GRU) and n not in skip]
    for n in names:
        _set(model, n, DecomposedGRU.from_gru(model.get_submodule(n)))
    return names


def set_eltwise_dtype(model: nn.Module, dtype: str) -> None:
    if dtype not in ELTWISE_DTYPES:
        raise UserError(f"quantize.eltwise_dtype: {dtype!r} is not allowed; choose one of: "
                        f"{', '.join(ELTWISE_DTYPES)}")
    for m in model.modules():
        if isinstance(m, DecomposedGRU):
            m.eltwise_dtype = dtype


def calibration_model(model: nn.Module) -> nn.Module:
    """An fp32 copy of `model` with its GRUs decomposed (what the calibration hooks observe)."""
    m = copy.deepcopy(model).float().eval()
    decompose_grus(m)
    return m


@torch.no_grad()
def calibrate(model: nn.Module, ids: torch.Tensor, controls: torch.Tensor | None = None, batch_size: int = 4,
              threads: int | None = None) -> dict:
    """Statistics of every leaf module of `model` (GRUs decomposed) over the teacher-forced windows
    ids [N, W+1] (and their controls), `batch_size` rows per call: the per-call averages depend on it."""
    cm = calibration_model(model)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with StatsCollector(cm) as sc:
            for i in range(0, len(ids), batch_size):
                x = ids[i:i + batch_size]
                if controls is None:
                    cm.loss(x)
                else:
                    cm.loss(x, controls[i:i + batch_size])
    finally:
        torch.set_num_threads(old)
    return sc.stats()


def quantize_model(model: nn.Module, stats: dict | None, mode: str = "asymmetric_signed", clip: str = "avg",
                   n_std: float = 3.0, eltwise_dtype: str = "auto", skip: Iterable[str] = ()) -> dict:
    """Convert `model` in place to int8; returns the `quant` record for the checkpoint.

    With `stats` (calibration YAML as a dict) every Linear gets a static input range under `clip`;
    a Linear without an entry is an error (the stats belong to another model). Without stats the
    input ranges are dynamic (each call's min/max). Modules named in `skip` or in the model's
    `quant_skip` attribute stay float.
    """
    check_mode(mode)
    # a family names modules that must stay float, e.g. an embedding whose weight is also the tied
    # output projection (read as a float matrix outside the module)
    skip = set(skip) | set(getattr(model, "quant_skip", ()))
    kinds: dict[str, str] = {n: "gru" for n in decompose_grus(model, skip)}
    set_eltwise_dtype(model, eltwise_dtype)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in skip]
    ranges = _input_ranges(linears, stats, clip, n_std, getattr(model, "quant_shared_inputs", ()))
    for name, m in list(model.named_modules()):
        if name in skip:
            continue
        if isinstance(m, nn.Linear):
            _set(model, name, Int8Linear.from_linear(m, mode, ranges.get(name)))
            kinds[name] = "linear"
        elif isinstance(m, nn.Embedding):
            _set(model, name, Int8Embedding.from_embedding(m, mode))
            kinds[name] = "embedding"
    model.eval()
    return {"format": FORMAT, "mode": mode, "clip": clip if stats is not None else "dynamic",
            "n_std": float(n_std), "eltwise_dtype": eltwise_dtype, "modules": kinds}


def _input_ranges(linears: list[str], stats: dict | None, clip: str, n_std: float,
                  shared: Iterable[Iterable[str]]) -> dict[str, tuple[float, float]]:
    """Each Linear's static input range under `clip` (none without stats). Linears that the model
    says read the same tensor (`quant_shared_inputs`) get the union of their ranges: a tensor has
    one quantization, so it can be quantized once for all its readers."""
    if stats is None:
        return {}
    ranges = {}
    for name in linears:
        entry = stats.get(name, {}).get("inputs", {}).get(0)
        if entry is None:
            raise UserError(f"calibration stats: no input statistics for module '{name}'; "
                            "rerun the calibrate stage for this model")
        ranges[name] = clip_range(entry, clip, n_std)
    for group in shared:
        group = [n for n in group if n in ranges]
        if group:
            union = (min(ranges[n][0] for n in group), max(ranges[n][1] for n in group))
            ranges.update({n: union for n in group})
    return ranges


KINDS = {"gru": nn.GRU, "linear": nn.Linear, "embedding": nn.Embedding}


def quantized_structure(model: nn.Module, info: dict, state: Mapping[str, object], where: str = "checkpoint") -> None:
    """Swap (in place) the modules `info["modules"]` names for their int8 forms, without weights.

    Works on a meta-device model too, which is how amadeus.checkpoint compares a file's tensors with
    what its config implies before allocating anything. A name the model lacks, or a module of
    another kind than recorded, is a UserError starting with `where`."""
    if not isinstance(info, Mapping) or info.get("format") != FORMAT:
        raise UserError(f"{where}: precision int8 but no '{FORMAT}' quant record; re-run the quantize stage")
    mode = info.get("mode")
    if mode not in MODES:
        raise UserError(f"{where}: quant.mode: {mode!r} is not one of: {', '.join(MODES)}")
    kinds = info.get("modules")
    if not isinstance(kinds, Mapping) or not all(isinstance(k, str) for k in kinds):
        raise UserError(f"{where}: quant.modules: expected a mapping of module name -> kind")
    for name, kind in kinds.items():
        if kind not in KINDS:
            raise UserError(f"{where}: quant.modules.{name}: unknown kind {kind!r}; expected one of: "
                            f"{', '.join(KINDS)}")

    def module(name: str, kind: str) -> nn.Module:
        try:
            m = model.get_submodule(name) if name else None
        except AttributeError:
            m = None
        if not isinstance(m, KINDS[kind]):
            raise UserError(f"{where}: quant.modules.{name}: the model has no {kind} module of that name")
        return m

    for name, kind in kinds.items():  # GRUs first: their cells' Linears are listed by their new names
        if kind == "gru":
            _set(model, name, DecomposedGRU.from_gru(module(name, kind)))
    eltwise = info.get("eltwise_dtype", "auto")
    if eltwise not in ELTWISE_DTYPES:
        raise UserError(f"{where}: quant.eltwise_dtype: {eltwise!r} is not one of: {', '.join(ELTWISE_DTYPES)}")
    set_eltwise_dtype(model, eltwise)
    for name, kind in kinds.items():
        if kind == "linear":
            lin = module(name, kind)
            static = f"{name}.input_scale" in state
            _set(model, name, Int8Linear(lin.in_features, lin.out_features, lin.bias is not None, mode, static))
        elif kind == "embedding":
            emb = module(name, kind)
            _set(model, name, Int8Embedding(emb.num_embeddings, emb.embedding_dim, mode, emb.padding_idx))


def load_quantized(ckpt: dict, model: nn.Module, where: str = "checkpoint") -> nn.Module:
    """Turn the fp32-architecture `model` (built from ckpt["config"]) into the int8 model of `ckpt`;
    `where` (the file) starts every refusal."""
    state = ckpt["model"]
    quantized_structure(model, ckpt.get("quant"), state, where)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{where}: int8 weights do not fit the model: {str(e).splitlines()[0]}") from None
    for m in model.modules():
        if isinstance(m, (Int8Linear, Int8Embedding)):
            m.prepare()
    return model.eval()


def int8_with_random_calibration(model: nn.Module, seed: int = 0) -> nn.Module:
    """An int8 copy of `model` with static ranges from 4 batches of random windows: for speed
    benchmarks, where the weights are random too and only the arithmetic matters."""
    length = min(201, getattr(model, "context_length", 200) + 1)  # windows the model can take
    ids = torch.from_numpy(np.random.default_rng(seed).integers(0, PAD_ID, (16, length)))
    q = copy.deepcopy(model)
    quantize_model(q, calibrate(model, ids, batch_size=4))
    return q.eval()


def state_bytes(model_or_state: nn.Module | dict) -> int:
    """Bytes of a state dict saved with torch.save (how the size ratio compares fp32 and int8)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()
