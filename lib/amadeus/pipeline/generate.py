"""Stage generate@<family>: save/<family>[.int8].sess -> output/<family>/<precision>/ + metrics.

For each precision in `generate.precisions`, with amadeus.generation.continue_midi (the MIDI-level API):
- `unconditioned` pieces from nothing, and a continuation of every MIDI file in `input_dir`: per
  piece NAME, NAME.mid (the continuation), NAME.full.mid (prompt + continuation), NAME.wav and
  NAME.png of the latter (boundary marked), NAME.npy (the new event ids, uint16), a line in index.json;
- the continuations of the held-out evaluation prompts (amadeus.pipeline.eval_prompts: `eval_prompts`
  prompts of `prompt_seconds` from the validation + test pieces, continued for `eval_seconds`): the new
  ids as eval/<name>.npy and a line each in eval/index.json, which the evaluate stage reads. Only
  `showcase` of them, spread over the prompts, are also written and rendered as pieces (eval_<name>.*):
  the pieces to listen to come from the same generation, at no extra model time.
Piece i of each group (unconditioned, eval prompts, input files) is sampled with seed + i, so fp32
and int8 continue every prompt with the same seed. Metrics: output/metrics/generate_<family>.json.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from amadeus.codec import CodecConfig
from amadeus.continuation_eval import EvalPrompt
from amadeus.errors import UserError
from amadeus.fileio import atomic_open, write_json
from amadeus.generation import Loaded, continue_midi, encode_midi, load
from amadeus.hardware import resolve_device
from amadeus.params import as_dict, build, knob, section, seed_knob
from amadeus.pipeline import paths
from amadeus.pipeline.eval_prompts import EvalPromptConfig, HeldOut, held_out
from amadeus.playing_rules import PlayingRules
from amadeus.prompt_passthrough import midi_bytes


@dataclass
class GenerateConfig(EvalPromptConfig):
    """params.yaml `generate`: what the generate@<family> stage makes, and how it samples (the knobs of
    the held-out prompts are EvalPromptConfig's, which the evaluate stage reads too)."""

    precisions: list[str] = knob(["fp32", "int8"], choices=("fp32", "int8"),
                                 help="checkpoints to generate with: save/<family>.sess, save/<family>.int8.sess")
    unconditioned: int = knob(2, min=0, help="pieces generated from nothing")
    showcase: int = knob(2, min=0, help="eval continuations also written as MIDI/WAV/PNG pieces, spread over "
                         "the prompts")
    input_dir: str = knob("input", help="every .mid/.midi file here is continued too (whole file as prompt)")
    max_new_tokens: int = knob(2000, min=1, help="at most this many new events per piece")
    seconds: float | None = knob(20.0, gt=0, help="stop unconditioned and input pieces at this many seconds "
                                 "of new music (null = off); eval continuations stop at eval_seconds")
    do_sample: bool = knob(True)
    temperature: float = knob(1.0, gt=0)
    top_k: int = knob(0, min=0, help="0 = off")
    top_p: float = knob(0.95, gt=0, max=1, help="1.0 = off")
    num_beams: int = knob(1, min=1)
    seed: int = seed_knob(0, help="piece i of each group is sampled with seed + i", max=2**62)
    model_kwargs: dict[str, dict] = knob({"perceiver_ar": {"num_latents": 1}},
                                         help="per family, extra prefill arguments")
    render: bool = knob(True, help="write a WAV and a piano-roll PNG of every piece (not of eval continuations)")
    soundfont: str | None = knob(None, help="an .sf2 file; null = pretty_midi's TimGM6mb.sf2")
    sample_rate: int = knob(44100, min=8000, max=192000)
    device: str = knob("cpu", choices=("auto", "cpu", "cuda"))
    threads: int = knob(1, min=0, help="torch CPU threads; batch-1 decoding is fastest on 1 (0 = torch's default)")
    constrain: bool = knob(True, help="sample only events the decoder keeps, tracking what sounds, with the "
                                      "checkpoint's release prior (false = raw sampling)")
    rules: dict[str, Any] = knob({}, help="the musician's playing rules (amadeus.playing_rules.PlayingRules): key, "
                                          "key_strength, lowest, highest, max_polyphony, velocity_low, "
                                          "velocity_high, max_silence, max_note_seconds, controls")


# (piece name, where it came from, prompt ids, the MIDI file itself: its notes come back as played)
Prompt = tuple[str, str, np.ndarray, Path]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "piece"


def check_input_dir(config: GenerateConfig, root: Path) -> Path:
    """`input_dir` under `root`: a folder, or absent if it is the default; else a one-line UserError."""
    input_dir = root / config.input_dir
    if input_dir.exists() and not input_dir.is_dir():
        raise UserError(f"params.yaml: generate.input_dir: {config.input_dir} is a file, not a folder of MIDI files")
    default = next(f.default for f in fields(GenerateConfig) if f.name == "input_dir")
    if not input_dir.exists() and config.input_dir != default:  # a typo would silently continue nothing
        raise UserError(f"params.yaml: generate.input_dir: {config.input_dir} does not exist")
    return input_dir


def collect_inputs(root: Path, config: GenerateConfig, flavour: str) -> tuple[list[Prompt], list[str]]:
    """(name, source, prompt ids) of every MIDI file in `input_dir`, sorted; and those skipped, with why."""
    input_dir = check_input_dir(config, root)
    files = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in (".mid", ".midi")) \
        if input_dir.is_dir() else []
    prompts, skipped = [], []
    for path in files:
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        try:
            ids = encode_midi(path, flavour)
        except Exception as e:  # a broken file is skipped with its reason, never fatal (docs/contracts.md)
            print(f"generate: skipping {source}: {e}")
            skipped.append(f"{source}: {e}")
            continue
        prompts.append((f"input_{_safe(path.stem)}", source, ids, path))
    return prompts, skipped


def unique_names(names: list[str]) -> list[str]:
    """Suffix repeated names (same stem in two input folders; two prompt names equal once made safe)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def playing_rules(config: GenerateConfig) -> PlayingRules:
    """`generate.rules` as PlayingRules; a bad key or value is one line naming it."""
    allowed = [f.name for f in fields(PlayingRules)]
    unknown = sorted(set(config.rules) - set(allowed))
    if unknown:
        raise UserError(f"params.yaml: generate.rules.{unknown[0]}: unknown key; allowed: {', '.join(allowed)}")
    try:
        return PlayingRules(**config.rules)
    except UserError as e:
        raise UserError(f"params.yaml: generate.rules: {e}") from None


def showcase_indices(count: int, showcase: int) -> list[int]:
    """`showcase` of `count` prompts, evenly spread (first and last included)."""
    if count == 0 or showcase == 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(showcase, count))})


# Perceiver AR's generation arguments that count latents: each is an integer in 1..max_latents.
LATENT_KWARGS = ("num_latents", "latent_block")


def check_latent_kwargs(kwargs: Mapping[str, Any], most: int | None, family: str, bound: str) -> None:
    """Refuse, in one line naming the key, a latent count the model cannot take; `most` is the model's
    max_latents (None: a family without latents), `bound` names where that limit comes from."""
    for key in LATENT_KWARGS:
        value = kwargs.get(key)
        if value is None:
            continue
        where = f"params.yaml: generate.model_kwargs.{family}.{key}"
        if most is None:
            raise UserError(f"{where}: this family has no latents")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise UserError(f"{where}: {value!r} is out of range; must be an integer in 1..{most} ({bound})")


def _check_num_latents(kwargs: dict, model: Any, family: str) -> None:
    """The model decides the allowed latents; refuse before any generation rather than mid-stage."""
    most = getattr(getattr(model, "config", None), "max_latents", None)
    check_latent_kwargs(kwargs, most, family, "the checkpoint's max_latents")


class _Writer:
    """Generates with one checkpoint and writes what the stage keeps of each result."""

    def __init__(self, loaded: Loaded, out_dir: Path, config: GenerateConfig, family: str,
                 max_note_seconds: float):
        kwargs = config.model_kwargs.get(family) or {}
        if not isinstance(kwargs, dict):
            raise UserError(f"params.yaml: generate.model_kwargs.{family}: expected a mapping of prefill "
                            f"arguments, e.g. {{num_latents: 1}}, got {kwargs!r}")
        _check_num_latents(kwargs, loaded.model, family)
        self.loaded, self.out_dir, self.config, self.family = loaded, out_dir, config, family
        self.kwargs, self.max_note_seconds = kwargs, max_note_seconds
        self.rules = playing_rules(config) if config.constrain else None
        self.records: list[dict] = []  # per generation: tokens, seconds of music, compute seconds

    def generate(self, prompt: np.ndarray | None, seconds: float | None, seed: int,
                 prompt_midi: Path | None = None) -> dict[str, Any]:
        c = self.config
        result = continue_midi(
            self.loaded, None, max_new_tokens=c.max_new_tokens, seconds=seconds, do_sample=c.do_sample,
            temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, num_beams=c.num_beams, seed=seed,
            model_kwargs=self.kwargs, prompt_ids=prompt, max_note_seconds=self.max_note_seconds,
            return_full=True, rules=self.rules, prompt_midi=prompt_midi)
        self.records.append({"tokens": result["tokens"], "seconds_of_music": result["seconds"],
                             "compute_seconds": result["compute_seconds"]})
        return result

    def piece(self, name: str, source: str, result: dict[str, Any], prompted: bool, seed: int) -> dict:
        """NAME.mid, NAME.full.mid, NAME.npy (and NAME.wav, NAME.png) of one result; its index line."""
        files = {"continuation": f"{name}.mid", "full": f"{name}.full.mid", "ids": f"{name}.npy"}
        for key in ("continuation", "full"):
            with atomic_open(self.out_dir / files[key], "wb") as f:
                if key == "full" and result["full_midi"] is not None:  # a prompt file's own messages
                    f.write(midi_bytes(result["full_midi"]))
                else:
                    result[key].write(f)
        _save_ids(self.out_dir / files["ids"], result["ids"])
        if self.config.render:
            from amadeus import render

            files["wav"], files["png"] = f"{name}.wav", f"{name}.png"
            render.render_wav(result["full"], self.out_dir / files["wav"], soundfont=self.config.soundfont,
                              sample_rate=self.config.sample_rate)
            render.piano_roll_png(result["full"], self.out_dir / files["png"],
                                  boundary_seconds=result["boundary_seconds"] if prompted else None,
                                  title=f"{self.family} {self.loaded.precision}: {source}")
        return {"name": name, "source": source, "seed": seed, "prompt_tokens": int(len(result["prompt_ids"])),
                "prompt_seconds": result["boundary_seconds"], "tokens": result["tokens"],
                "seconds_of_music": result["seconds"],
                "notes": sum(len(inst.notes) for inst in result["continuation"].instruments), "files": files}


def _save_ids(path: Path, ids: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, np.asarray(ids).astype(np.uint16), allow_pickle=False)


def write_pieces(loaded: Loaded, held: HeldOut, inputs: list[Prompt], out_dir: Path, config: GenerateConfig,
                 family: str, quiet: bool = False, max_note_seconds: float = 5.0,
                 skipped: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any], list[dict]]:
    """Generate and write everything of one checkpoint; returns index.json, eval/index.json and the
    per-generation records (tokens, seconds of music, compute seconds)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)  # stale pieces from earlier settings must not linger
    eval_dir = out_dir / "eval"
    eval_dir.mkdir(parents=True)
    writer = _Writer(loaded, out_dir, config, family, max_note_seconds)
    label = f"generate {family} {loaded.precision}"
    pieces = []
    for i in tqdm(range(config.unconditioned), desc=f"{label} unconditioned", disable=quiet):
        result = writer.generate(None, config.seconds, config.seed + i)
        pieces.append(writer.piece(f"uncond_{i:02d}", "unconditioned", result, False, config.seed + i))

    prompts: list[EvalPrompt] = held.prompts
    eval_skipped = None
    if prompts and held.flavour != loaded.flavour:  # the references are in the data's flavour
        eval_skipped = (f"the data is {held.flavour}-encoded but this checkpoint uses {loaded.flavour}: "
                        "its continuations cannot be compared with the real ones")
        print(f"generate: {family} {loaded.precision}: no eval continuations: {eval_skipped}")
        prompts = []
    showcase = set(showcase_indices(len(prompts), config.showcase))
    continuations = []
    for j, (prompt, file) in enumerate(tqdm(list(zip(prompts, unique_names([_safe(p.name) for p in prompts]),
                                                     strict=True)), desc=f"{label} eval prompts", disable=quiet)):
        seed = config.seed + j
        result = writer.generate(prompt.ids, config.eval_seconds, seed)
        _save_ids(eval_dir / f"{file}.npy", result["ids"])
        continuations.append({"name": prompt.name, "file": f"{file}.npy", "piece": prompt.piece,
                              "offset_seconds": prompt.offset_seconds, "seed": seed, "events": result["tokens"],
                              "seconds": result["seconds"]})
        if j in showcase:
            pieces.append(writer.piece(f"eval_{file}", f"{prompt.name} (held-out prompt)", result, True, seed))

    names = unique_names([name for name, _, _, _ in inputs])
    for k, ((_, source, prompt, path), name) in enumerate(zip(inputs, names, strict=True)):
        result = writer.generate(prompt, config.seconds, config.seed + k, prompt_midi=path)
        pieces.append(writer.piece(name, source, result, True, config.seed + k))

    settings = as_dict(config)
    index = {"family": family, "precision": loaded.precision, "flavour": loaded.flavour,
             "settings": settings, "pieces": pieces, "skipped": skipped or []}
    write_json(out_dir / "index.json", index)
    eval_index = {"family": family, "precision": loaded.precision, "flavour": loaded.flavour,
                  "prompts": held.settings, "settings": settings, "skipped": eval_skipped,
                  "continuations": continuations}
    write_json(eval_dir / "index.json", eval_index)
    return index, eval_index, writer.records


def summarize(records: list[dict]) -> dict[str, float | int]:
    """The contract metric keys over a list of generations: what was generated (functions of the
    checkpoints and params, for output/metrics/) ..."""
    return {"pieces": len(records), "tokens": sum(p["tokens"] for p in records),
            "seconds_of_music": round(sum(p["seconds_of_music"] for p in records), 2)}


def time_summary(records: list[dict]) -> dict[str, float]:
    """... and how fast this machine made it (model time only, not rendering), for timings/."""
    tokens = sum(p["tokens"] for p in records)
    compute = sum(p["compute_seconds"] for p in records)
    music = sum(p["seconds_of_music"] for p in records)
    return {"seconds": round(compute, 3), "tokens_per_second": round(tokens / compute, 1) if compute else 0.0,
            "real_time_factor": round(music / compute, 2) if compute else 0.0}


def run(params: dict, root: Path, family: str, *, quiet: bool = False) -> dict:
    """The whole generate@<family> stage: pieces of every precision, then the metrics file; returns the metrics."""
    root = Path(root)
    config = build(GenerateConfig, section(params, "generate"), "generate")
    # decoding closes notes left open after this long, as everywhere else in the pipeline
    max_note_seconds = build(CodecConfig, params.get("codec"), "codec").max_note_seconds
    if config.threads:
        torch.set_num_threads(config.threads)  # batch 1: extra threads only contend
    device = resolve_device(config.device, "params.yaml: generate.device")
    if config.render:
        from amadeus.render import ensure_fluidsynth

        ensure_fluidsynth()  # one line saying how to install it, before any model work
    datasets = list(params.get("datasets") or []) if config.eval_prompts else []
    held = held_out(root, datasets, config)
    metrics: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for precision in config.precisions:
        path = paths.existing_checkpoint(family, precision, root, "generate")
        start = time.perf_counter()
        loaded = load(path, device)
        inputs, skipped = collect_inputs(root, config, loaded.flavour)
        _, eval_index, records = write_pieces(loaded, held, inputs, paths.pieces_dir(family, precision, root),
                                              config, family, quiet, max_note_seconds, skipped)
        evals = eval_index["continuations"]
        metrics[precision] = {**summarize(records), "eval_continuations": len(evals),
                              "eval_seconds_of_music": round(sum(e["seconds"] for e in evals), 2),
                              "skipped": len(skipped)}
        timings[precision] = {**time_summary(records), "wall_seconds": round(time.perf_counter() - start, 1)}
        m, t = metrics[precision], timings[precision]
        print(f"generate {family} {precision}: {m['pieces']} pieces ({m['eval_continuations']} eval "
              f"continuations), {m['tokens']:,} events, {m['seconds_of_music']:.0f} s of music in "
              f"{t['seconds']:.1f} s: {t['tokens_per_second']:,.0f} events/s, {t['real_time_factor']:.1f}x "
              f"real time ({t['wall_seconds']:.0f} s with writing and rendering)")
    # The contract keys at the top level describe the first precision listed (fp32 by default).
    first = config.precisions[0] if config.precisions else None
    result = {**(metrics[first] if first else summarize([])), "precision": first, **metrics}
    write_json(paths.metrics_file("generate", family, root), result)
    write_json(paths.timings_file("generate", family, root), timings)
    return result
