"""One set of defaults: every knob a stage reads is in params.yaml, with the value its dataclass
gives by default. Code and params.yaml can then never disagree about what "the default" means."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from amadeus.codec import CodecConfig
from amadeus.models.perceiver_ar import PerceiverARConfig
from amadeus.models.performance_rnn import PerformanceRNNConfig
from amadeus.pipeline.calibrate import CalibrateConfig
from amadeus.pipeline.evaluate import EvaluateConfig
from amadeus.pipeline.generate import GenerateConfig
from amadeus.pipeline.quantize import QuantizeConfig
from amadeus.pipeline.score import ScoreConfig
from amadeus.preprocess import PreprocessConfig
from amadeus.training import TrainConfig

PARAMS = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())

SECTIONS = {
    "codec": CodecConfig,
    "preprocess": PreprocessConfig,
    "models.performance_rnn": PerformanceRNNConfig,
    "models.perceiver_ar": PerceiverARConfig,
    "train.defaults": TrainConfig,
    "calibrate": CalibrateConfig,
    "quantize": QuantizeConfig,
    "generate": GenerateConfig,
    "score": ScoreConfig,
    "evaluate": EvaluateConfig,
}


def _section(name: str) -> dict:
    node = PARAMS
    for part in name.split("."):
        node = node[part]
    return node


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_dataclass_defaults_are_the_values_in_params_yaml(name):
    written = _section(name)
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[name])}
    assert sorted(written) == sorted(fields), f"{name}: params.yaml and {SECTIONS[name].__name__} list other knobs"
    different = {k: (_default(f), written[k]) for k, f in fields.items() if _default(f) != written[k]}
    assert not different, f"{name}: code default vs params.yaml: {different}"

