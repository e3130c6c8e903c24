"""params.yaml validated as a whole before any stage works: a mistake in `evaluate` stops `download` too.

Each section present is built exactly as the stage that reads it builds it (the same dataclasses and
cross-field `check()` rules, amadeus.params), plus the rules between sections. Stages load their
params through `load_params`, so none can start on a file that a later stage would refuse.

This module is a *gate*: it can stop a stage but never changes what a stage writes, so the tool that
derives dvc.yaml's deps (tools/dvc_deps.py) lists this file for every stage without following its
imports; otherwise every stage would depend on every config module and retrain on a generate edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amadeus.errors import UserError
from amadeus.params import as_dict, build, load_yaml


def load_params(path: str | Path = "params.yaml") -> dict:
    """The params file, read (amadeus.params.load_yaml: known sections, none empty) and validated."""
    params = load_yaml(path)
    validate(params, root=Path(path).parent)
    return params


def validate(params: Mapping[str, Any], root: Path | None = None) -> None:
    """Build every section present as its stage will; a UserError names the first bad key. With the
    workspace `root`, paths the params name are checked too (generate.input_dir, train.<family>.init_from)."""
    # Imported here: the gate's dependencies are not the stages' (module docstring).
    from amadeus.codec import CodecConfig
    from amadeus.models import FAMILIES, build_config
    from amadeus.pipeline.calibrate import CalibrateConfig
    from amadeus.pipeline.evaluate import EvaluateConfig
    from amadeus.pipeline.generate import GenerateConfig, check_input_dir
    from amadeus.pipeline.paths import check_source_name, checkpoint
    from amadeus.pipeline.quantize import QuantizeConfig
    from amadeus.pipeline.score import ScoreConfig
    from amadeus.pipeline.train import train_config
    from amadeus.preprocess import PreprocessConfig
    from amadeus.sources import config_for
    from amadeus.training import load_init

    sources = params.get("sources", {})
    if not isinstance(sources, Mapping):
        raise UserError(f"params.yaml: sources: expected a mapping of name -> {{kind: ...}}, got {sources!r}")
    for name, settings in sources.items():
        check_source_name(str(name))
        config_for(str(name), settings)
    for key, cls in (("codec", CodecConfig), ("preprocess", PreprocessConfig), ("calibrate", CalibrateConfig),
                     ("quantize", QuantizeConfig), ("score", ScoreConfig), ("evaluate", EvaluateConfig)):
        if key in params:
            build(cls, params[key], key)
    models = params.get("models", {})
    if not isinstance(models, Mapping):
        raise UserError(f"params.yaml: models: expected a mapping of family -> architecture, got {models!r}")
    configs = {}
    for family, config in models.items():
        if family not in FAMILIES:
            raise UserError(f"params.yaml: models.{family}: unknown model family; choose from: {', '.join(FAMILIES)}")
        if not isinstance(config, Mapping):
            raise UserError(f"params.yaml: models.{family}: expected a mapping of architecture keys, got {config!r}")
        configs[family] = build_config(family, config)
    if "train" in params:
        for family in models or FAMILIES:
            cfg = train_config(params["train"], family)
            if root is not None and cfg.init_from is not None and family in configs:
                # the file is read as training will read it, so a bad one stops `download` too
                codec = build(CodecConfig, params.get("codec", {}), "codec")
                load_init(cfg, family, as_dict(configs[family]), root=root, codec={"flavour": codec.flavour},
                          output=checkpoint(family, root=root))
    if "generate" in params:
        generate = build(GenerateConfig, params["generate"], "generate")
        _check_model_kwargs(generate.model_kwargs, configs)
        if root is not None:
            check_input_dir(generate, root)


def _check_model_kwargs(model_kwargs: Mapping[str, Any], configs: Mapping[str, Any]) -> None:
    """generate.model_kwargs against the architectures in `models` (the checkpoint is checked again)."""
    from amadeus.pipeline.generate import check_latent_kwargs
    for family, kwargs in model_kwargs.items():
        if family not in configs:
            continue
        if not isinstance(kwargs, Mapping):
            raise UserError(f"params.yaml: generate.model_kwargs.{family}: expected a mapping, got {kwargs!r}")
        check_latent_kwargs(kwargs, getattr(configs[family], "max_latents", None), family,
                            f"models.{family}.max_latents")
