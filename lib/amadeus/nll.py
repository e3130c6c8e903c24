"""The one NLL evaluator: a model's mean `loss` (nats/event) over fixed windows, in eval mode.

Training's val_nll / train_nll, the quantize stage's val_nll_fp32 / val_nll_int8 and the evaluate
stage's val_nll / test_nll are all this function, so they are measured alike. It averages the model's
own `loss`, so families that score only part of a window (Perceiver AR scores its latents) are
measured the way their training measured them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def mean_nll(model: nn.Module, ids: torch.Tensor | np.ndarray, controls: torch.Tensor | np.ndarray | None = None,
             batch_size: int = 32, device: str | torch.device = "cpu",
             amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> float:
    """Mean NLL in nats/event of `model` over the windows `ids` [N, W+1] (and their `controls`).

    The windows are scored `batch_size` rows at a time, under `amp()` (training's autocast); each
    batch's mean loss is weighted by its rows. Every row of a fixed-length window has the same number
    of scored positions, so this is the mean over all scored positions. The model's train/eval mode
    is restored afterwards.
    """
    ids = torch.as_tensor(ids)
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty [N, W+1] array, got shape {tuple(ids.shape)}")
    controls = torch.as_tensor(controls) if controls is not None else None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(ids), batch_size):
            x = ids[i:i + batch_size].long().to(device)
            # controls only when given: families without them take `loss(ids)` alone
            c = controls[i:i + batch_size].to(device) if controls is not None else None
            with amp():
                loss = model.loss(x) if c is None else model.loss(x, c)
            total += float(loss) * x.shape[0]
            count += x.shape[0]
    finally:
        model.train(was_training)
    return total / count
