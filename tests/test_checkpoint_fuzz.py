"""Hostile .sess files: every one that is not a valid amadeus checkpoint is refused with one line that
names the file and what is wrong, before any large allocation and without running any code.

Real checkpoints (a trained Performance RNN with optimizer state, a Perceiver AR, an int8 model) are
mutated: random bytes, truncations, bit flips, zips with wrong members, pickles that try to run code,
and loadable files whose fields are wrong.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import random
import re
import resource
import time
import zipfile
from pathlib import Path

import pytest
import torch
from test_training import data, run  # noqa: F401  (data is a fixture)

from amadeus import checkpoint
from amadeus.errors import UserError
from amadeus.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
from amadeus.quant import quantize_model

ANSI = re.compile(r"\x1b\[")


def _dict_file(path: Path, net: torch.nn.Module, **extra) -> Path:
    torch.save({"format": "amadeus.sess/1", "family": net.family, "config": dataclasses.asdict(net.config),
                "precision": "fp32", "model": net.state_dict(), "step": 0, "params": {},
                "codec": {"flavour": "magenta"}, **extra}, path)
    return path


@pytest.fixture(scope="module")
def originals(tmp_path_factory, data):  # noqa: F811
    """Three valid checkpoints: trained RNN (with optimizer state), Perceiver AR, int8 RNN."""
    folder = tmp_path_factory.mktemp("ckpt")
    run(folder, data)
    rnn = folder / "save" / "m.sess"
    torch.manual_seed(0)
    par = PerceiverAR(PerceiverARConfig(max_seq_len=32, max_latents=16, num_channels=16, num_heads=2,
                                        num_self_attention_layers=1)).eval()
    net = PerformanceRNN(PerformanceRNNConfig(embed_dim=8, input_size=16, hidden_size=16, num_layers=1,
                                              dropout=0.0, controls=False)).eval()
    q = copy.deepcopy(net)
    info = quantize_model(q, None)
    int8 = _dict_file(folder / "q.int8.sess", net, precision="int8", model=q.state_dict(), quant=info)
    files = [rnn, _dict_file(folder / "par.sess", par), int8]
    for f in files:  # they are valid: the refusals below are about the mutations
        checkpoint.load_model(f)
    return files


def _refused(path: Path) -> str:
    with pytest.raises(UserError) as e:
        checkpoint.load_model(path)
    message = str(e.value)
    assert "\n" not in message and not ANSI.search(message), message
    assert str(path) in message, message
    assert "weights_only" not in message, message
    return message


def test_mutated_bytes_are_refused_with_one_line(originals, tmp_path) -> None:
    rng = random.Random(1234)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, tried, loaded = time.monotonic(), 0, 0
    target = tmp_path / "x.sess"
    for i in range(600):
        raw = bytearray(originals[i % len(originals)].read_bytes())
        kind = i % 4
        if kind == 0:
            blob = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 64, 4096])))
        elif kind == 1:
            blob = bytes(raw[:rng.randrange(len(raw))])
        elif kind == 2:
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            blob = bytes(raw)
        else:  # a stretch of the file overwritten by another stretch: lying offsets and lengths
            a, b = rng.randrange(len(raw)), rng.randrange(len(raw))
            n = rng.randint(1, 64)
            raw[a:a + n] = raw[b:b + n]
            blob = bytes(raw)
        target.write_bytes(blob)
        t0 = time.monotonic()
        try:
            checkpoint.load_model(target)
            loaded += 1  # a flip in a weight's bytes leaves a valid checkpoint: that is fine
        except UserError as e:
            message = str(e)
            assert "\n" not in message and not ANSI.search(message) and str(target) in message, message
            assert "weights_only" not in message, message
        assert time.monotonic() - t0 < 5, f"mutation {i} took too long"
        tried += 1
    assert tried == 600 and loaded < tried / 2
    assert time.monotonic() - start < 60
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 500, f"peak memory grew {grown_mb:.0f} MB"


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.sess"
    torch.save({"format": "amadeus.sess/1", "family": "performance_rnn", "payload": Evil()}, path)
    message = _refused(path)
    assert "refused" in message
    assert not marker.exists()


def test_zips_with_wrong_members_are_refused(originals, tmp_path) -> None:
    good = originals[0]
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cases = {
        "empty.sess": {},
        "nodata.sess": {k: v for k, v in members.items() if not k.endswith("data.pkl")},
        "other.sess": {"hello.txt": b"hi"},
    }
    for name, content in cases.items():
        path = tmp_path / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for member, blob in content.items():
                z.writestr(member, blob)
        _refused(path)
    compressed = tmp_path / "deflated.sess"
    with zipfile.ZipFile(compressed, "w", zipfile.ZIP_DEFLATED) as z:
        for member, blob in members.items():
            z.writestr(member, blob)
    _refused(compressed)
    (tmp_path / "empty-file.sess").write_bytes(b"")
    _refused(tmp_path / "empty-file.sess")


def _wrong(base: dict) -> dict[str, dict]:
    """Loadable files whose contents are wrong, one field at a time."""
    cases = {}

    def case(name, **change):
        ckpt = copy.deepcopy(base)
        for key, value in change.items():
            if value is _DROP:
                ckpt.pop(key, None)
            else:
                ckpt[key] = value
        cases[name] = ckpt

    case("config-a-list", config=[1, 2])
    case("family-a-list", family=["performance_rnn"])
    case("unknown-family", family="transformer-xl")
    case("model-an-int", model=7)
    case("no-model", model=_DROP)
    case("history-a-string", history="lots")
    case("wall-a-list", wall=[1])
    case("step-a-string", step="ten")
    case("huge-config", config={**base["config"], "hidden_size": 2 ** 20, "num_layers": 16})
    case("config-unknown-key", config={**base["config"], "colour": "blue"})
    shapes = dict(base["model"])
    first = next(iter(shapes))
    shapes[first] = torch.zeros(3, 3)
    case("wrong-shape", model=shapes)
    missing = dict(base["model"])
    missing.pop(first)
    case("missing-tensor", model=missing)
    case("precision-odd", precision="int4")
    case("codec-mp3", codec={"flavour": "mp3"})
    return cases


_DROP = object()


def test_structurally_wrong_files_are_refused_before_allocating(originals, tmp_path) -> None:
    base = torch.load(originals[0], weights_only=True)
    for name, ckpt in _wrong(base).items():
        path = tmp_path / f"{name}.sess"
        torch.save(ckpt, path)
        t0 = time.monotonic()
        message = _refused(path)
        assert time.monotonic() - t0 < 3, f"{name}: {message}"


def test_int8_records_that_are_wrong_are_refused(originals, tmp_path) -> None:
    base = torch.load(originals[2], weights_only=True)
    quant = base["quant"]
    no_mode = copy.deepcopy(base)
    no_mode["quant"] = {k: v for k, v in quant.items() if k != "mode"}
    nowhere = copy.deepcopy(base)
    modules = nowhere["quant"].get("modules")
    assert isinstance(modules, dict) and modules, "the int8 record lists its modules"
    name = next(iter(modules))
    modules["no.such.module"] = modules.pop(name)
    no_record = copy.deepcopy(base)
    no_record.pop("quant")
    for label, ckpt in {"no-mode": no_mode, "no-such-module": nowhere, "no-record": no_record}.items():
        path = tmp_path / f"{label}.int8.sess"
        torch.save(ckpt, path)
        _refused(path)


def test_amadeus_info_refuses_a_huge_config_fast(originals, tmp_path) -> None:
    base = torch.load(originals[0], weights_only=True)
    base["config"] = {**base["config"], "hidden_size": 2 ** 20, "num_layers": 16}
    path = tmp_path / "huge.sess"
    torch.save(base, path)
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        checkpoint.describe(path)
    assert time.monotonic() - t0 < 3 and str(path) in str(e.value)
    buf = io.StringIO()
    buf.write(checkpoint.describe(originals[0]))
    assert "weights:" in buf.getvalue() and "optimizer:" in buf.getvalue()
