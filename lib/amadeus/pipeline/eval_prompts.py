"""The held-out evaluation prompts: one definition that the generate stage continues and the evaluate
stage scores against the real continuations.

Both stages call `held_out` with the same `generate:` knobs (`EvalPromptConfig`, which the generate
stage's config extends), so the evaluate stage recomputes the very prompts (and their references) the
continuations were made from: `amadeus.continuation_eval.held_out_prompts` is deterministic. The
prompts come from the validation and test pieces of the `datasets`, named "<dataset>:<piece>" (two
datasets may hold pieces of the same name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amadeus import data
from amadeus.continuation_eval import EvalPrompt, held_out_prompts
from amadeus.errors import UserError
from amadeus.params import build, knob, seed_knob
from amadeus.pipeline import paths

SPLITS = ("validation", "test")


@dataclass
class EvalPromptConfig:
    """The params.yaml `generate` knobs that decide the held-out prompts."""

    eval_prompts: int = knob(16, min=0, help="held-out prompts (validation + test pieces) continued for the "
                             "evaluate stage (0 = none)")
    prompt_seconds: float = knob(5.0, gt=0, help="each held-out prompt lasts this long")
    eval_seconds: float = knob(10.0, gt=0, help="each held-out prompt is continued this long; the pianist's "
                               "next eval_seconds are its reference")
    eval_prompt_seed: int = seed_knob(0, help="where the prompts sit in the pieces (the phase of an even grid)")


PROMPT_KNOBS = tuple(f.name for f in dataclasses.fields(EvalPromptConfig))


def prompt_config(generate_params: Mapping | None) -> EvalPromptConfig:
    """The prompt knobs of a params.yaml `generate` section, validated; its other keys are not read."""
    raw = generate_params or {}
    return build(EvalPromptConfig, {k: raw[k] for k in PROMPT_KNOBS if k in raw}, "generate")


@dataclass
class HeldOut:
    prompts: list[EvalPrompt]
    flavour: str          # the codec flavour of the processed data, so of the prompts and references
    settings: dict        # what decided them: recorded beside the continuations, checked by evaluate


def held_out(root: Path, datasets: list[str], config: EvalPromptConfig) -> HeldOut:
    """The prompts cut from the validation + test pieces of `datasets` (see the module docstring)."""
    count = config.eval_prompts
    settings = {"datasets": list(datasets), "splits": list(SPLITS), "count": count,
                "prompt_seconds": config.prompt_seconds, "continuation_seconds": config.eval_seconds,
                "seed": config.eval_prompt_seed}
    pieces, names, flavours = [], [], set()
    for name in datasets:
        folder = paths.processed_dir(name, root)
        manifest = data.read_manifest(folder)
        flavours.add((manifest.get("codec") or {}).get("flavour", "magenta"))
        for piece in manifest["pieces"]:
            if piece["split"] in SPLITS:
                pieces.append(data.load_events(folder / piece["file"]))
                names.append(f"{name}:{piece['name']}")
    if len(flavours) > 1:
        raise UserError(f"datasets {', '.join(datasets)} were preprocessed with different codec flavours "
                        f"({', '.join(sorted(flavours))}); rerun preprocess with one codec.flavour")
    flavour = flavours.pop() if flavours else "magenta"
    if count == 0:
        return HeldOut([], flavour, settings)
    if not pieces:
        raise UserError(f"no validation or test pieces in {', '.join(datasets)}: adjust preprocess.split, "
                        "or set generate.eval_prompts: 0")
    try:
        prompts = held_out_prompts(pieces, names, count, config.prompt_seconds, config.eval_seconds,
                                   config.eval_prompt_seed)
    except ValueError as e:
        raise UserError(f"params.yaml: generate: {e}; lower generate.prompt_seconds or generate.eval_seconds") from None
    return HeldOut(prompts, flavour, settings)

