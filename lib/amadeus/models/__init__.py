"""The model families, by name. Every family follows the protocol of docs/contracts.md:

`Model(config)` with `Model.Config` (a params dataclass) and `model.family`; `forward(ids) -> logits`;
`loss(ids [B,W+1], controls=None) -> mean NLL (nats/event)`; `prefill(ids, **kw) -> (logits [B,V],
state)`; `step(ids [B], state) -> (logits, state)`; `reorder_state(state, index) -> state`.
Optional attributes the training loop reads: `uses_controls` (bool: pass control features) and
`context_length` (int: the window to train on when `train.window` is null).

Families are imported on first use, so a family whose module is missing or broken does not stop
the others from working.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

from amadeus.errors import UserError
from amadeus.params import build

# family name -> "module:class"
FAMILIES: dict[str, str] = {
    "performance_rnn": "amadeus.models.performance_rnn:PerformanceRNN",
    "perceiver_ar": "amadeus.models.perceiver_ar:PerceiverAR",
}


def model_class(family: str) -> type[nn.Module]:
    if family not in FAMILIES:
        raise UserError(f"model family {family!r} is unknown; choose one of: {', '.join(FAMILIES)}")
    module, name = FAMILIES[family].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"model family {family!r} is not available ({e})") from None
    cls = getattr(mod, name, None) or getattr(mod, "Model", None)  # a module may export `Model` instead
    if cls is None:
        raise UserError(f"model family {family!r}: {module} defines neither {name} nor Model")
    return cls


def config_class(family: str) -> type:
    return model_class(family).Config


def build_config(family: str, config: Mapping[str, Any] | Any) -> Any:
    """The family's config dataclass from a mapping (validated like params.yaml) or as given."""
    cls = config_class(family)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return config
    return build(cls, dict(config or {}), f"models.{family}")


def build_model(family: str, config: Mapping[str, Any] | Any) -> nn.Module:
    """A fresh model of `family` from its config (dataclass or mapping, e.g. params `models.<family>`)."""
    return model_class(family)(build_config(family, config))


def parameter_count(model: nn.Module | Mapping[str, Any]) -> int:
    """Parameters of a model, or the elements of the tensors in a state dict."""
    if isinstance(model, nn.Module):
        return sum(p.numel() for p in model.parameters())
    return sum(t.numel() for t in model.values() if hasattr(t, "numel"))


def parameter_count_of(family: str, config: Mapping[str, Any] | Any) -> int:
    """Parameters a model of `family` with `config` would have, counted without allocating it."""
    import torch

    with torch.device("meta"):
        return parameter_count(build_model(family, config))
