"""amadeus.native: the batch-1 kernels compute what the PyTorch path computes, and their absence is handled."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from amadeus import native
from amadeus.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from amadeus.native import perceiver_step
from amadeus.quant.convert import int8_with_random_calibration
from amadeus.quant.modules import Int8Linear

ON_THIS_CPU = native._cpu_has_features()
# The kernels need AVX-512 VNNI; elsewhere amadeus runs PyTorch's ops and these tests cannot run.
needs_kernels = pytest.mark.skipif(not ON_THIS_CPU, reason="this CPU has no AVX-512 VNNI: no kernels to test")


def test_kernels_are_built_exactly_where_the_cpu_can_run_them():
    assert native.available() == ON_THIS_CPU  # make setup installs a C compiler and builds them


@needs_kernels
@pytest.mark.parametrize("shape", [(768, 3072), (3072, 768), (32, 48)])
@pytest.mark.parametrize("rows", [1, 3, native.MAX_ROWS])
@pytest.mark.parametrize("mode", ["asymmetric_signed", "symmetric"])
def test_int8_linear_kernel_equals_the_pytorch_path_to_the_bit(shape, rows, mode):
    torch.manual_seed(rows)
    k, n = shape
    lin = torch.nn.Linear(k, n)
    m = Int8Linear.from_linear(lin, mode, input_range=(-2.5, 4.0))
    assert m.packed is not None
    x = torch.randn(rows, k) * 3  # some inputs outside the range: clipped alike
    fast = m.forward_2d(x)
    packed, m.packed = m.packed, None
    assert torch.equal(fast, m.forward_2d(x))
    m.packed = packed


@needs_kernels
def test_fused_projections_equal_separate_ones():
    torch.manual_seed(0)
    parts = [Int8Linear.from_linear(torch.nn.Linear(64, 64), input_range=(-1.0, 1.0)) for _ in range(3)]
    fused = native.PackedInt8Linear.concat([p.packed for p in parts])
    x = torch.randn(2, 64)
    assert torch.equal(fused(x), torch.cat([p.forward_2d(x) for p in parts], 1))
    other = Int8Linear.from_linear(torch.nn.Linear(64, 64), input_range=(-3.0, 1.0))
    assert native.PackedInt8Linear.concat([parts[0].packed, other.packed]) is None  # another input grid


@needs_kernels
@pytest.mark.parametrize("length", [1, 37, 300])
def test_one_query_attention_matches_sdpa_over_the_same_bfloat16_values(length):
    torch.manual_seed(length)
    cap, heads, d = 320, 4, 32
    kb = torch.randn(1, heads, cap, d).to(torch.bfloat16)  # a cache buffer; the first `length` rows used
    vb = torch.randn(1, heads, cap, d).to(torch.bfloat16)
    q = torch.randn(1, heads, 1, d)
    k, v = kb[:, :, :length], vb[:, :, :length]
    out = native.attend_one(q, k, v, d ** -0.5)
    expected = F.scaled_dot_product_attention(q, k.float(), v.float())
    assert (out - expected).abs().max().item() < 1e-5


def int8_perceiver() -> PerceiverAR:
    torch.manual_seed(0)
    cfg = PerceiverARConfig(max_seq_len=128, max_latents=48, num_channels=64, num_heads=2,
                            num_self_attention_layers=3, init_scale=0.2)
    return int8_with_random_calibration(PerceiverAR(cfg).eval())


def greedy(model: PerceiverAR, use_cache: bool, steps: int = 200, block: int = 16) -> torch.Tensor:
    """Greedy steps from a 20-token prompt with 3 latents: through the growth, block moves and sliding."""
    prompt = torch.randint(0, 388, (1, 20), generator=torch.Generator().manual_seed(1))
    logits, state = model.prefill(prompt, num_latents=3, use_cache=use_cache, latent_block=block)
    out = []
    for _ in range(steps):
        out.append(logits)
        logits, state = model.step(logits[:, :388].argmax(-1), state)
    return torch.stack(out, 1)


@needs_kernels
def test_int8_perceiver_steps_in_c_as_in_pytorch(monkeypatch):
    model = int8_perceiver()
    assert model.kv_dtype == torch.bfloat16 and perceiver_step.layer_steps(model) is not None
    fast = greedy(model, True)
    monkeypatch.setattr("amadeus.models.perceiver_ar.layer_steps", lambda model: None)
    slow = greedy(model, True)
    uncached = greedy(model, False)
    # the same tokens; logits equal up to float rounding, which can move an activation across an int8
    # rounding boundary now and then (then one step differs by one quantization level)
    assert torch.equal(fast.argmax(-1), slow.argmax(-1)) and torch.equal(fast.argmax(-1), uncached.argmax(-1))
    close = ((fast - slow).abs().amax(-1) < 1e-4).float().mean().item()
    assert close > 0.9, close


@needs_kernels
def test_no_compiler_is_one_line_and_pytorch_takes_over(tmp_path):
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PATH": str(tmp_path)}  # neither $CC nor cc/gcc on PATH
    code = ("import torch\nfrom amadeus import native\n"
            "from amadeus.quant.modules import Int8Linear\n"
            "m = Int8Linear.from_linear(torch.nn.Linear(32, 32), input_range=(-1.0, 1.0))\n"
            "print(native.available(), m.packed is None, m(torch.randn(1, 32)).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "torch.Size([1,", "32])"]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amadeus: no C compiler (cc) found"), lines
    assert not any((tmp_path / "cache").rglob("*.so"))  # nothing half-built left behind


def test_amadeus_native_0_turns_the_kernels_off(tmp_path):
    env = {**os.environ, "AMADEUS_NATIVE": "0"}
    code = "from amadeus import native\nprint(native.available())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "False" and done.stderr == ""


@needs_kernels
def test_new_weights_get_new_layer_steps():
    model = int8_perceiver()
    before, steps = greedy(model, True, steps=40), perceiver_step.layer_steps(model)
    for m in model.modules():
        if isinstance(m, Int8Linear):
            m.prepare()  # what loading a state dict does: new packed weights, the old ones freed
    assert perceiver_step.layer_steps(model) is not steps  # the C structs never point into freed weights
    assert perceiver_step.layer_steps(model) is perceiver_step.layer_steps(model)  # and are built once
    assert torch.equal(greedy(model, True, steps=40), before)
