"""params.yaml validation, atomic writes and the .data format."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from amadeus import data
from amadeus.errors import UserError
from amadeus.fileio import atomic_open
from amadeus.params import build, knob


@dataclass
class Inner:
    size: int = knob(8, min=1)


@dataclass
class Example:
    lr: float = knob(1e-3, gt=0)
    device: str = knob("auto", choices=("auto", "cpu", "cuda"))
    steps: int = knob(100, min=1, max=10_000)
    bf16: bool = knob(False)
    split: list[float] = knob([0.8, 0.2])
    inner: Inner = field(default_factory=Inner)


def test_build_accepts_valid_values_and_fills_defaults() -> None:
    cfg = build(Example, {"lr": 1, "inner": {"size": 3}}, "train")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.inner.size == 3 and cfg.steps == 100 and cfg.split == [0.8, 0.2]


@pytest.mark.parametrize("raw, message", [
    ({"lrr": 1}, "params.yaml: train.lrr: unknown key; allowed: lr, device, steps, bf16, split, inner"),
    ({"lr": 0}, "params.yaml: train.lr: 0 is out of range; must be > 0"),
    ({"lr": "fast"}, "params.yaml: train.lr: expected a number, got 'fast'"),
    ({"device": "tpu"}, "params.yaml: train.device: 'tpu' is not allowed; choose one of: auto, cpu, cuda"),
    ({"steps": 2.5}, "params.yaml: train.steps: expected an integer, got 2.5"),
    ({"steps": True}, "params.yaml: train.steps: expected an integer, got True"),
    ({"steps": 10_001}, "params.yaml: train.steps: 10001 is out of range; must be <= 10000"),
    ({"bf16": "yes"}, "params.yaml: train.bf16: expected true or false, got 'yes'"),
    ({"split": [0.8, "x"]}, "params.yaml: train.split[1]: expected a number, got 'x'"),
    ({"inner": {"size": 0}}, "params.yaml: train.inner.size: 0 is out of range; must be >= 1"),
    ([1, 2], "params.yaml: train: expected a mapping, got list"),
])
def test_build_names_the_key_and_what_is_allowed(raw, message) -> None:
    with pytest.raises(UserError) as e:
        build(Example, raw, "train")
    assert str(e.value) == message


def test_atomic_open_leaves_old_file_when_writing_fails(tmp_path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("new")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_events_roundtrip_without_pickle_and_deterministic_bytes(tmp_path) -> None:
    ids = np.array([0, 127, 128, 255, 256, 355, 356, 387], dtype=np.int64)
    data.save_events(tmp_path / "a.data", ids)
    data.save_events(tmp_path / "b.data", ids)
    assert (tmp_path / "a.data").read_bytes() == (tmp_path / "b.data").read_bytes()
    back = np.load(tmp_path / "a.data", allow_pickle=False)
    assert back.dtype == np.uint16 and back.tolist() == ids.tolist()


def test_corrupt_data_file_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "x.data").write_bytes(b"not numpy")
    with pytest.raises(UserError, match="not a readable .data file"):
        data.load_events(tmp_path / "x.data")


def test_seeded_split_is_stable_and_has_every_split() -> None:
    names = [f"p{i}.mid" for i in range(10)]
    a = data.split_pieces(names, [0.8, 0.1, 0.1], seed=1)
    assert a == data.split_pieces(list(reversed(names)), [0.8, 0.1, 0.1], seed=1)
    assert sorted(a.values()) == ["test"] + ["train"] * 8 + ["validation"]
    assert any(a != data.split_pieces(names, [0.8, 0.1, 0.1], seed=s) for s in range(2, 6))
    three = data.split_pieces(names[:3], [0.8, 0.1, 0.1], seed=1)
    assert sorted(three.values()) == ["test", "train", "validation"]


def test_official_split_file_is_read_and_checked(tmp_path) -> None:
    (tmp_path / "split.csv").write_text("path,split\n2018/a.midi,train\n2018/b.midi,test\n")
    assert data.read_split_file(tmp_path) == {"2018/a.midi": "train", "2018/b.midi": "test"}
    (tmp_path / "split.csv").write_text("path,split\nc.mid,dev\n")
    with pytest.raises(UserError, match="'dev'"):
        data.read_split_file(tmp_path)
