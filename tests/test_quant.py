"""amadeus.quant: statistics definitions, int8 tensors, the decomposed GRU, Int8Linear."""

import copy
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from amadeus.errors import UserError
from amadeus.fileio import write_yaml
from amadeus.quant import DecomposedGRU, Int8Linear, StatsCollector, clip_range, quantize_per_channel
from amadeus.quant.modules import EltwiseAdd, Int8Embedding
from amadeus.quant.qtensor import MODES, dequantize, qparams_from_range, quantize

KEYS = {"min", "max", "avg_min", "avg_max", "mean", "std", "shape"}


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.add = EltwiseAdd()
        self.act = nn.LeakyReLU(0.5, inplace=True)

    def forward(self, a, b):
        return self.act(self.add(a, b))


def test_stats_keys_and_definitions(tmp_path):
    m = Two()
    calls = [torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[-4.0, 4.0]])]
    with StatsCollector(m) as sc:
        for x in calls:
            m(x, torch.zeros_like(x))
    stats = sc.stats()
    assert set(stats) == {"add", "act"}
    s = stats["add"]["inputs"][0]
    assert set(s) == KEYS and set(stats["add"]["output"]) == KEYS and set(stats["add"]["inputs"]) == {0, 1}
    # per call: batch mean of per-sample min/max -> call 1: min 1, max 2; call 2: min -4, max 4
    assert s["min"] == -4 and s["max"] == 4
    assert s["avg_min"] == pytest.approx((1 - 4) / 2) and s["avg_max"] == pytest.approx((2 + 4) / 2)
    assert s["mean"] == pytest.approx((1.5 + 0.0) / 2)  # mean over calls of each call's mean
    assert s["std"] == pytest.approx(float(np.std([0, 1, 2, 3, -4, 4], ddof=1)), rel=1e-6)
    assert s["shape"] == "(1, 2)"
    # the in-place LeakyReLU: its input is recorded before it is overwritten
    assert stats["act"]["inputs"][0]["min"] == -4 and stats["act"]["output"]["min"] == -2
    # the YAML keeps integer input indices and plain floats
    write_yaml(tmp_path / "s.yaml", stats)
    back = yaml.safe_load((tmp_path / "s.yaml").read_text())
    assert back["add"]["inputs"][0]["avg_min"] == pytest.approx(-1.5)


def test_stats_never_called_and_named_subset():
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    with StatsCollector(m, names=["0"]) as sc:
        m[0](torch.ones(2, 3))
    assert list(sc.stats()) == ["0"]


def test_clip_ranges():
    s = {"min": -10.0, "max": 10.0, "avg_min": -2.0, "avg_max": 3.0, "mean": 1.0, "std": 2.0}
    assert clip_range(s, "avg") == (-2.0, 3.0)
    assert clip_range(s, "none") == (-10.0, 10.0)
    assert clip_range(s, "n_std", 2.0) == (-3.0, 5.0)
    assert clip_range(s, "n_std", 10.0) == (-10.0, 10.0)  # never wider than the true extremes
    with pytest.raises(UserError):
        clip_range(s, "gauss")


def test_qparams_match_distiller_example():
    # docs/quantization.md: AVG range [-0.0872, 0.6292], asymmetric signed -> scale 1/355.95, zero point -97
    qp = qparams_from_range(torch.tensor(-0.0872), torch.tensor(0.6292), "asymmetric_signed")
    assert 1 / qp.scale.item() == pytest.approx(355.95, abs=0.01)
    assert qp.zero_point.item() == -97


@pytest.mark.parametrize("mode", MODES)
def test_per_channel_roundtrip(mode):
    torch.manual_seed(0)
    w = torch.randn(64, 48) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different scale
    w[3] = 0.0  # an all-zero channel
    w[5] = w[5].abs() + 0.5  # an all-positive channel: the range still contains 0
    q, scale, zp = quantize_per_channel(w, mode)
    assert q.dtype == (torch.uint8 if mode == "asymmetric_unsigned" else torch.int8)
    assert scale.shape == zp.shape == (64,)
    deq = dequantize(q, scale, zp, dim=0)
    err = (deq - w).abs().max(1).values
    assert (err <= scale / 2 * 1.0001 + 1e-12).all()  # never worse than half a step per channel
    # the step is the channel's own range over the levels: 255 (asymmetric, range widened to 0) or 127
    nz = torch.arange(64) != 3
    if mode == "symmetric":
        expect = w.abs().max(1).values / 127
    else:
        expect = (w.max(1).values.clamp(min=0) - w.min(1).values.clamp(max=0)) / 255
    assert torch.allclose(scale[nz], expect[nz], rtol=1e-5)
    assert (deq[3] == 0).all()
    if mode == "symmetric":
        assert (zp == 0).all() and q.min() >= -127
    zero = quantize(torch.zeros(64, 1), qparams_from_range(w.min(1).values, w.max(1).values, mode), dim=0)
    assert (dequantize(zero, scale, zp, dim=0) == 0).all()  # zero is exact in every mode


def test_signed_and_unsigned_are_the_same_grid():
    w = torch.randn(16, 32)
    a = dequantize(*quantize_per_channel(w, "asymmetric_signed"), dim=0)
    b = dequantize(*quantize_per_channel(w, "asymmetric_unsigned"), dim=0)
    assert torch.equal(a, b)


def _gru_pair(layers=3, inp=24, hidden=48):
    torch.manual_seed(1)
    ref = nn.GRU(inp, hidden, layers, batch_first=True).eval()
    return ref, DecomposedGRU.from_gru(ref).eval()


@torch.no_grad()
def test_decomposed_gru_equals_nn_gru_over_500_steps():
    ref, dec = _gru_pair()
    x = torch.randn(2, 500, 24)
    h0 = torch.randn(3, 2, 48) * 0.5
    out_ref, h_ref = ref(x, h0)
    out, h = dec(x, h0)
    assert (out - out_ref).abs().max().item() <= 1e-5
    assert (h - h_ref).abs().max().item() <= 1e-5
    # stepping one event at a time with the state carried gives the same numbers
    h_step = h0
    for t in range(0, 500, 50):
        _, h_step = dec(x[:, t:t + 50], h_step)
    assert (h_step - h_ref).abs().max().item() <= 1e-5
    # a fresh state (None) is zeros, as nn.GRU
    assert (dec(x[:, :20])[0] - ref(x[:, :20])[0]).abs().max().item() <= 1e-5


def test_decomposed_gru_has_one_module_per_elementwise_op():
    _, dec = _gru_pair(layers=1)
    with StatsCollector(dec) as sc, torch.no_grad():
        dec(torch.randn(1, 5, 24))
    names = set(sc.stats())
    for op in ("add_r", "add_z", "add_n", "add_h", "mult_r", "mult_z", "sub_h", "fc_gate_x", "fc_gate_h"):
        assert f"cells.0.{op}" in names
    eltwise = [m for m in dec.modules() if type(m).__name__.startswith("Eltwise")]
    assert len({id(m) for m in eltwise}) == len(eltwise) == 7
    # every step is one call: the input Linear saw 5 per-step calls of shape (1, 24)
    assert sc.inputs["cells.0.fc_gate_x"][0].calls == 5
    assert sc.stats()["cells.0.fc_gate_x"]["inputs"][0]["shape"] == "(1, 24)"


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_int8_linear_close_to_linear(mode):
    torch.manual_seed(2)
    lin = nn.Linear(64, 96)
    x = torch.randn(10, 64)
    ref = lin(x)
    static = Int8Linear.from_linear(lin, mode, (float(x.min()), float(x.max())))
    dynamic = Int8Linear.from_linear(lin, mode, None)
    assert static.weight.dtype in (torch.int8, torch.uint8) and static.static and not dynamic.static
    for q in (static, dynamic):
        y = q(x)
        assert y.dtype == torch.float32 and y.shape == ref.shape
        rel = ((y - ref).norm() / ref.norm()).item()
        assert rel < 0.02, rel
    # [B, T, K] inputs keep their leading shape
    assert static(x.view(2, 5, 64)).shape == (2, 5, 96)


@torch.no_grad()
def test_int8_linear_clips_inputs_to_the_static_range_but_not_outputs():
    lin = nn.Linear(4, 3)
    nn.init.eye_(lin.weight[:, :3])
    q = Int8Linear.from_linear(lin, "asymmetric_signed", (-1.0, 1.0))
    big = torch.tensor([[100.0, -100.0, 0.5, 0.0]])
    y = q(big)
    clipped = lin(big.clamp(-1, 1))
    assert (y - clipped).abs().max().item() < 0.02
    wide = Int8Linear.from_linear(lin, "asymmetric_signed", (-200.0, 200.0))
    assert wide(big).abs().max().item() > 90  # the output itself is never requantized or clipped


@torch.no_grad()
def test_int8_embedding_lookup():
    emb = nn.Embedding(50, 16)
    q = Int8Embedding.from_embedding(emb)
    ids = torch.tensor([[1, 2, 49]])
    step = q.weight_scale[ids].unsqueeze(-1)
    assert q.weight.dtype == torch.int8
    assert ((q(ids) - emb(ids)).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@torch.no_grad()
def test_int8_gru_close_to_fp32(dtype):
    from amadeus.quant import quantize_model
    ref, cal = _gru_pair(layers=2)
    x = torch.rand(2, 60, 24) * 2 - 1
    with StatsCollector(cal) as sc:
        cal(x)
    stats = {f"gru.{k}": v for k, v in sc.stats().items()}
    qmodel = nn.Module()
    qmodel.gru = copy.deepcopy(ref)
    info = quantize_model(qmodel, stats, clip="none", eltwise_dtype=dtype)
    assert info["modules"]["gru"] == "gru" and info["modules"]["gru.cells.1.fc_gate_h"] == "linear"
    out_ref, h_ref = ref(x)
    out, h = qmodel.gru(x)
    assert out.dtype == torch.float32
    err = (out - out_ref).abs().max().item()
    assert err < 0.05, err
    assert not math.isnan(err)


@pytest.mark.parametrize("with_controls", [False, True])
@torch.no_grad()
def test_int8_performance_rnn_steps_as_it_runs_with_one_matmul_per_layer(with_controls):
    """Generation's fast step (amadeus.models.gru_step) on the int8 model gives the logits of the
    int8 model's own full-window pass: each layer's new state is quantized once and multiplied by
    its two readers' weights stacked, which needs their shared input range."""
    from amadeus.models import build_model
    from amadeus.quant import int8_with_random_calibration

    torch.manual_seed(0)
    fp32 = build_model("performance_rnn", dict(embed_dim=16, input_size=24, hidden_size=32, num_layers=3)).eval()
    model = int8_with_random_calibration(fp32)
    for first, second in model.quant_shared_inputs:
        a, b = model.get_submodule(first), model.get_submodule(second)
        assert torch.equal(a.input_scale, b.input_scale) and Int8Linear.stack(a, b) is not None
    ids = torch.randint(0, 388, (3, 30))
    ctrl = torch.rand(3, 24) if with_controls else None  # rows hold different controls: a table per row
    full = model(torch.cat([torch.full((3, 1), 355), ids], 1), ctrl)
    logits, state = model.prefill(ids[:, :0], ctrl)
    assert all(isinstance(getattr(out, "stacked", None), Int8Linear) for out in state.plan.outputs)
    stepped = [logits]
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, 1), full, atol=1e-4, rtol=1e-4)
    # reordering (beam search) moves each row's hidden gates and, per row, its table
    index = torch.tensor([2, 2, 0])
    moved = model.reorder_state(state, index)
    logits_moved, _ = model.step(ids[index, -1], moved)
    torch.testing.assert_close(logits_moved, model.step(ids[:, -1], state)[0][index], atol=1e-5, rtol=1e-5)
