"""params.yaml `generate.rules` and `generate.constrain` reach the sampler, and bad values are one line."""

from __future__ import annotations

import pytest

from amadeus.errors import UserError
from amadeus.params import build
from amadeus.pipeline.generate import GenerateConfig, playing_rules


def test_rules_from_params_are_playing_rules():
    config = build(GenerateConfig, {"rules": {"key": "F# major", "lowest": "C2", "max_polyphony": 6}}, "generate")
    rules = playing_rules(config)
    assert rules.key == "F# major" and rules.lowest == 36 and rules.max_polyphony == 6


@pytest.mark.parametrize("rules, needle", [({"keys": "C"}, "generate.rules.keys: unknown key"),
                                           ({"key": "H# major"}, "generate.rules:"),
                                           ({"max_polyphony": 0}, "max_polyphony")])
def test_bad_rules_name_the_key(rules, needle):
    config = build(GenerateConfig, {"rules": rules}, "generate")
    with pytest.raises(UserError) as e:
        playing_rules(config)
    assert needle in str(e.value) and "\n" not in str(e.value)
