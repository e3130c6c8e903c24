"""amadeus.quant end to end: calibrate, quantize, save an .int8.sess, load it with weights_only=True."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amadeus.controls import CONTROL_DIM
from amadeus.nll import mean_nll
from amadeus.pipeline.quantize import compare_speed
from amadeus.quant import Int8Linear, calibrate, load_quantized, quantize_model, state_bytes
from amadeus.windows import random_windows

V = 388


class StandIn(nn.Module):
    """The Performance RNN's shape as the quant contract sees it: embedding -> gru -> head."""

    def __init__(self, embed=32, hidden=48, layers=2):
        super().__init__()
        self.embedding = nn.Embedding(V, embed)
        self.gru = nn.GRU(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, V)

    def forward(self, ids, h=None):
        out, h = self.gru(self.embedding(ids), h)
        return self.head(out), h

    def loss(self, ids, controls=None):
        logits, _ = self(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))

    def prefill(self, ids):
        logits, h = self(ids)
        return logits[:, -1], h

    def step(self, ids, h):
        logits, h = self(ids[:, None], h)
        return logits[:, 0], h


def _pieces(n=4, length=300, seed=0):
    rng = np.random.default_rng(seed)
    # a little structure (runs of repeated ids) so that a model is not flat noise
    return [np.repeat(rng.integers(0, V, length // 3), 3).astype(np.uint16) for _ in range(n)]


def test_random_windows_are_seeded():
    a, no_controls = random_windows(_pieces(), 6, 50, seed=7)
    assert a.shape == (6, 51) and a.dtype == torch.long and no_controls is None
    assert torch.equal(a, random_windows(_pieces(), 6, 50, seed=7)[0])
    assert not torch.equal(a, random_windows(_pieces(), 6, 50, seed=8)[0])
    assert torch.equal(a[:2], random_windows(_pieces(), 2, 50, seed=7)[0])  # a prefix: more batches, same first ones
    ids, ctrl = random_windows(_pieces(), 3, 50, seed=7, controls=True)
    assert torch.equal(ids, a[:3]) and ctrl.shape == (3, 51, CONTROL_DIM) and ctrl.dtype == torch.float32
    assert len(random_windows(_pieces(length=30), 2, 50, seed=7)[0]) == 0  # no piece long enough


@pytest.mark.parametrize("mode", ["asymmetric_signed", "asymmetric_unsigned", "symmetric"])
def test_quantized_checkpoint_roundtrip(tmp_path, mode):
    torch.manual_seed(0)
    model = StandIn().eval()
    ids, _ = random_windows(_pieces(), 4, 40, seed=1)
    stats = calibrate(model, ids, batch_size=2)
    assert "gru.cells.1.fc_gate_h" in stats and "head" in stats and "gru.cells.0.mult_r" in stats
    qmodel = copy.deepcopy(model)
    info = quantize_model(qmodel, stats, mode=mode, clip="avg")
    assert isinstance(qmodel.head, Int8Linear) and qmodel.head.static
    ckpt = {"format": "amadeus.sess/1", "family": "standin", "config": {}, "precision": "int8",
            "model": qmodel.state_dict(), "optimizer": None, "quant": info}
    path = tmp_path / "m.int8.sess"
    torch.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)  # no pickled classes, no torch.ao
    qdtype = torch.uint8 if mode == "asymmetric_unsigned" else torch.int8
    assert loaded["model"]["gru.cells.0.fc_gate_x.weight"].dtype == qdtype
    assert loaded["model"]["head.weight"].dtype == qdtype
    assert loaded["model"]["embedding.weight"].dtype == qdtype
    assert loaded["quant"]["mode"] == mode  # stored by name
    fresh = load_quantized(loaded, StandIn())
    with torch.no_grad():
        assert torch.equal(fresh(ids[:2])[0], qmodel(ids[:2])[0])  # same int8 model after the round trip
    nll32, nll8 = mean_nll(model, ids, batch_size=2), mean_nll(fresh, ids, batch_size=2)
    assert abs(nll8 - nll32) / nll32 < 0.02


def test_load_rejects_mismatched_weights():
    model = StandIn()
    q = copy.deepcopy(model)
    info = quantize_model(q, None)
    assert info["clip"] == "dynamic"
    state = q.state_dict()
    state["head.weight"] = state["head.weight"][:10]
    from amadeus.errors import UserError
    with pytest.raises(UserError):
        load_quantized({"model": state, "quant": info}, StandIn())
    with pytest.raises(UserError):
        load_quantized({"model": state, "quant": {}}, StandIn())


def test_size_ratio_on_3x512_model():
    torch.manual_seed(0)
    model = StandIn(embed=512, hidden=512, layers=3)
    q = copy.deepcopy(model)
    quantize_model(q, None)
    ratio = state_bytes(q) / state_bytes(model)
    assert ratio <= 0.27, ratio


def test_performance_rnn_quantizes_and_speed_is_measured():
    from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
    torch.manual_seed(0)
    model = PerformanceRNN(PerformanceRNNConfig(embed_dim=16, input_size=32, hidden_size=32, num_layers=2)).eval()
    ids, ctrl = random_windows(_pieces(), 4, 30, seed=1, controls=model.uses_controls)
    stats = calibrate(model, ids, ctrl, batch_size=2)
    q = copy.deepcopy(model)
    quantize_model(q, stats)
    assert abs(mean_nll(q, ids, ctrl, batch_size=2) - mean_nll(model, ids, ctrl, batch_size=2)) < 0.05
    speed = compare_speed(model, q, tokens=20, rounds=1, threads=1)
    assert speed["tokens_per_second_fp32"] > 0 and speed["tokens_per_second_int8"] > 0
