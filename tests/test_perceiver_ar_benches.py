"""bench/perceiver_ar_long.py and bench/perceiver_ar_blocks.py on a tiny model: what their figures
rest on (per-phase timing through the block schedule, teacher-forced NLL in generation's own order)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amadeus.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from amadeus.quant.convert import int8_with_random_calibration

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import perceiver_ar_blocks  # noqa: E402
import perceiver_ar_long  # noqa: E402


def tiny() -> PerceiverAR:
    torch.manual_seed(0)
    return PerceiverAR(PerceiverARConfig(max_seq_len=64, max_latents=16, num_channels=32, num_heads=2,
                                         num_self_attention_layers=1, init_scale=0.2)).eval()


def test_sustained_run_times_every_step_of_both_phases():
    model = int8_with_random_calibration(tiny())
    times = perceiver_ar_long.step_times(model, 48, 1, 40, 4)
    assert len(times) == 40 and all(t > 0 for t in times)
    out = perceiver_ar_long.sustained(model, 40, 4)
    # 15 steps until the window is full, 25 past it
    assert out["tokens"] == 40 and out["growing"] > 0 and out["past_the_window"] > 0
    assert math.isclose(40 / out["tokens_per_second"], 15 / out["growing"] + 25 / out["past_the_window"], rel_tol=0.02)


def test_teacher_forced_nll_is_generations_own_prediction_of_the_next_event():
    model = tiny()
    events = np.random.default_rng(0).integers(0, 388, 48 + 60)
    nll1, full, _ = perceiver_ar_blocks.teacher_forced(model, events, 1)
    nll8, _, _ = perceiver_ar_blocks.teacher_forced(model, events, 8)
    assert len(nll1) == len(nll8) == 60 and full == 15
    assert nll1[:full + 1] == nll8[:full + 1]  # the same splits until the first block moves
    assert nll1[full + 2:] != nll8[full + 2:]
    # the first prediction is the prompt's forward pass with one latent
    ids = torch.as_tensor(events[:48])[None]
    first = -F.log_softmax(model(ids, prefix_len=47)[0, -1], -1)[events[48]].item()
    assert math.isclose(nll1[0], first, rel_tol=1e-5)
