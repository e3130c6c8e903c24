"""Params a later stage would trip over are refused where they are read, with one line naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amadeus.codec import CodecConfig
from amadeus.errors import UserError
from amadeus.models.perceiver_ar import PerceiverARConfig
from amadeus.params import SECTIONS, build, load_yaml
from amadeus.pipeline.generate import GenerateConfig
from amadeus.pipeline.train import train_config
from amadeus.preprocess import PreprocessConfig
from amadeus.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("raw, message", [
    ({"num_heads": 5}, "params.yaml: models.perceiver_ar.num_heads: 5 must divide num_channels (192)"),
    ({"max_latents": 300}, "params.yaml: models.perceiver_ar.max_latents: 300 must be <= max_seq_len (256)"),
    ({"rotary_channels": 100}, "params.yaml: models.perceiver_ar.rotary_channels: 100 gives 100 rotated"),
    ({"rotary_channels": 3}, "rotated channels per head; they must be even"),
    ({"vocab_size": 500}, "params.yaml: models.perceiver_ar.vocab_size: 500 must be 389"),
    ({"pad_id": 0}, "params.yaml: models.perceiver_ar.pad_id: 0 must be 388"),
])
def test_perceiver_ar_cross_field_rules(raw, message) -> None:
    with pytest.raises(UserError) as e:
        build(PerceiverARConfig, raw, "models.perceiver_ar")
    assert str(e.value).startswith(message) or message in str(e.value)
    assert "\n" not in str(e.value)


def test_the_default_perceiver_ar_config_passes_its_rules() -> None:
    cfg = build(PerceiverARConfig, yaml.safe_load((ROOT / "params.yaml").read_text())["models"]["perceiver_ar"],
                "models.perceiver_ar")
    assert cfg.num_channels % cfg.num_heads == 0 and cfg.max_latents <= cfg.max_seq_len


@pytest.mark.parametrize("cls, where, raw, message", [
    (TrainConfig, "train.defaults", {"seed": 2**70}, "train.defaults.seed: 1180591620717411303424 does not fit"),
    (TrainConfig, "train.defaults", {"seed": 2**63}, "train.defaults.seed: 9223372036854775808 does not fit"),
    (TrainConfig, "train.defaults", {"seed": -1}, "train.defaults.seed: -1 is out of range; must be >= 0"),
    (GenerateConfig, "generate", {"seed": 2**62 + 1}, "generate.seed: 4611686018427387905 is out of range"),
    (PreprocessConfig, "preprocess", {"split": [0.8, float("nan"), 0.1]},
     "preprocess.split[1]: nan is not a finite number"),
    (TrainConfig, "train.defaults", {"lr": float("inf")}, "train.defaults.lr: inf is not a finite number"),
    (TrainConfig, "train.defaults", {"lr": 10**400}, "is not a finite number"),
    (CodecConfig, "codec", {"max_note_seconds": 0}, "codec.max_note_seconds: 0 is out of range; must be > 0"),
    (CodecConfig, "codec", {"flavour": "mp3"}, "codec.flavour: 'mp3' is not allowed"),
])
def test_values_a_later_stage_would_reject(cls, where, raw, message) -> None:
    with pytest.raises(UserError) as e:
        build(cls, raw, where)
    assert message in str(e.value) and str(e.value).startswith("params.yaml: ") and "\n" not in str(e.value)


def test_a_where_that_names_its_file_is_not_prefixed_twice() -> None:
    with pytest.raises(UserError) as e:
        build(PerceiverARConfig, {"num_heads": 5}, "save/perceiver_ar.sess: config")
    assert str(e.value) == "save/perceiver_ar.sess: config.num_heads: 5 must divide num_channels (192)"


def test_train_section_must_be_a_mapping() -> None:
    with pytest.raises(UserError, match=r"^params.yaml: train: expected a mapping .*got list$"):
        train_config([1, 2], "performance_rnn")
    with pytest.raises(UserError, match=r"^params.yaml: train.defaults: expected a mapping"):
        train_config({"defaults": [1]}, "performance_rnn")


@pytest.mark.parametrize("change, message", [
    ({"train": [1, 2]}, "error: params.yaml: train: expected a mapping"),
    ({"codec": {"flavour": "mp3"}}, "error: params.yaml: codec.flavour: 'mp3' is not allowed"),
    ({"datasets": "maestro-sample"}, "error: params.yaml: datasets: expected a list of source names"),
])
def test_the_train_stage_refuses_with_one_line_and_exit_2(tmp_path, change, message) -> None:
    """Refused before any data is read or any checkpoint written (the stage's own folder stays empty)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(change)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "performance_rnn"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("text, message", [
    ("sources: {a: {kind: local, path: x}}\ndatasets: [a]\ntrian: {}\n", "trian: unknown section; allowed: sources"),
    ("sources: {a: {kind: local, path: x}}\ndatasets: [a]\ngenerate:\n", "generate: empty section"),
    ("sources: {a: {kind: local, path: x}}\ndatasets: [a, b]\n", "datasets: 'b' is not a declared source; declared: a"),
])
def test_the_file_as_a_whole_is_checked_when_loaded(tmp_path, text, message) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_yaml(path)
    assert str(e.value).startswith(f"{path}: {message}")
    assert "\n" not in str(e.value)


def test_the_real_params_file_loads() -> None:
    assert set(load_yaml(ROOT / "params.yaml")) <= set(SECTIONS)


@pytest.mark.parametrize("value", [0, 100000, "1"])
def test_generate_refuses_num_latents_the_checkpoint_cannot_take(value) -> None:
    from amadeus.models import build_model
    from amadeus.pipeline.generate import _check_num_latents

    model = build_model("perceiver_ar", {"num_channels": 32, "num_heads": 2, "max_seq_len": 32,
                                         "max_latents": 8})
    with pytest.raises(UserError, match=r"num_latents: .* must be an integer in 1\.\.8"):
        _check_num_latents({"num_latents": value}, model, "perceiver_ar")
    _check_num_latents({"num_latents": 8}, model, "perceiver_ar")


def test_generate_refuses_an_input_dir_that_is_a_file_or_missing(tmp_path) -> None:
    from amadeus.pipeline.generate import collect_inputs

    (tmp_path / "phrase.mid").write_bytes(b"")
    for where, why in [("phrase.mid", "is a file, not a folder"), ("inptu", "does not exist")]:
        config = build(GenerateConfig, {"input_dir": where}, "generate")
        with pytest.raises(UserError, match=f"generate.input_dir: {where} {why}"):
            collect_inputs(tmp_path, config, "magenta")
    assert collect_inputs(tmp_path, build(GenerateConfig, {}, "generate"), "magenta") == ([], [])


def test_a_mistake_in_a_later_section_stops_the_first_stage(tmp_path) -> None:
    """Validated as a whole: a bad `evaluate` key stops `download` before it fetches anything."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"]["bootstrap"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "download.py"), "maestro-sample"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: params.yaml: evaluate.bootstrap: -1"), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("change, message", [
    ({"models": {"transformer": {}}}, "models.transformer: unknown model family"),
    ({"generate": {"model_kwargs": {"perceiver_ar": {"num_latents": 100000}}}},
     "generate.model_kwargs.perceiver_ar.num_latents: 100000 is out of range; must be an integer in 1..128"),
    ({"sources": {"../up": {"kind": "local", "path": "x"}}}, "../up"),
    ({"score": {"batch_size": 0}}, "score.batch_size"),
])
def test_validate_builds_every_section(change, message) -> None:
    from amadeus.pipeline.params_check import validate

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    validate(params)
    for key, value in change.items():
        params[key] = {**params[key], **value} if key == "generate" else value
    if "sources" in change:
        params["datasets"] = []
    with pytest.raises(UserError, match=re.escape(message)):
        validate(params)


def test_an_input_dir_that_is_not_there_stops_the_first_stage(tmp_path) -> None:
    """generate.input_dir is checked with the rest of the file: a typo stops `download`, not just `generate`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"]["input_dir"] = "my-phrasez"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "download.py"), "maestro-sample"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: params.yaml: generate.input_dir: my-phrasez does not exist", done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
