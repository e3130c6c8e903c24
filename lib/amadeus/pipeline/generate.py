"""Stage generate@<family>: save/<family>[.int8].sess -> output/<family>/<precision>/ + metrics.

For each precision in `generate.precisions`: `generate.unconditioned` pieces from nothing, then
continuations of the first `prompt_seconds` of the first `test_prompts` test-split pieces, then of
every MIDI file in `input_dir`. Per piece NAME: NAME.mid (the continuation), NAME.full.mid (prompt +
continuation), NAME.wav and NAME.png of the latter (boundary marked), NAME.npy (the new event ids,
uint16) and a line in index.json. Metrics: output/metrics/generate_<family>.json. The pieces are made
with amadeus.generation.continue_midi, the MIDI-level API.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from amadeus import data
from amadeus.errors import UserError
from amadeus.fileio import atomic_open, write_json
from amadeus.generation import Loaded, continue_midi, decode_ids, encode_midi, load
from amadeus.hardware import resolve_device
from amadeus.params import as_dict, build, knob, section
from amadeus.pipeline import paths
from amadeus.vocab import cut_seconds


@dataclass
class GenerateConfig:
    """params.yaml `generate`: what the generate@<family> stage makes, and how it samples."""

    precisions: list[str] = knob(["fp32", "int8"], choices=("fp32", "int8"),
                                 help="checkpoints to generate with: save/<family>.sess, save/<family>.int8.sess")
    unconditioned: int = knob(2, min=0, help="pieces generated from nothing")
    test_prompts: int = knob(4, min=0, help="continue the first N test-split pieces (0 = none)")
    prompt_seconds: float = knob(5.0, gt=0, help="prompt = the first seconds of each test piece")
    input_dir: str = knob("input", help="every .mid/.midi file here is continued too (whole file as prompt)")
    max_new_tokens: int = knob(2000, min=1, help="at most this many new events per piece")
    seconds: float | None = knob(20.0, gt=0, help="stop a piece at this many seconds of new music (null = off)")
    do_sample: bool = knob(True)
    temperature: float = knob(1.0, gt=0)
    top_k: int = knob(0, min=0, help="0 = off")
    top_p: float = knob(0.95, gt=0, max=1, help="1.0 = off")
    num_beams: int = knob(1, min=1)
    seed: int = knob(0, help="piece i is sampled with seed + i")
    model_kwargs: dict[str, dict] = knob({"perceiver_ar": {"num_latents": 1}},
                                         help="per family, extra prefill arguments")
    render: bool = knob(True, help="write a WAV and a piano-roll PNG of every piece")
    soundfont: str | None = knob(None, help="an .sf2 file; null = pretty_midi's TimGM6mb.sf2")
    sample_rate: int = knob(44100, min=8000, max=192000)
    device: str = knob("cpu", choices=("auto", "cpu", "cuda"))
    threads: int = knob(1, min=0, help="torch CPU threads; batch-1 decoding is fastest on 1 (0 = torch's default)")


Prompt = tuple[str, str, np.ndarray | None]  # (piece name, where it came from, prompt ids or None)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "piece"


def collect_prompts(root: Path, datasets: list[str], config: GenerateConfig,
                    flavour: str) -> tuple[list[Prompt], list[str]]:
    """(name, source, prompt ids or None) for every piece to generate, in a fixed order; and the
    input files skipped, with their reasons."""
    prompts: list[Prompt] = [(f"uncond_{i:02d}", "unconditioned", None) for i in range(config.unconditioned)]
    remaining = config.test_prompts
    for name in datasets:
        folder = paths.processed_dir(name, root)
        manifest = data.read_manifest(folder)
        data_flavour = (manifest.get("codec") or {}).get("flavour", flavour)
        for piece in manifest["pieces"]:
            if remaining <= 0 or piece["split"] != "test":
                continue
            ids = data.load_events(folder / piece["file"]).astype(np.int64)
            if data_flavour != flavour:  # e.g. a perceiver-io checkpoint on magenta-encoded data
                ids = encode_midi(decode_ids(ids, data_flavour), flavour)
            prompts.append((f"test_{_safe(piece['name'])}", f"{name}:{piece['name']}",
                            cut_seconds(ids, config.prompt_seconds)))
            remaining -= 1
    if config.test_prompts and remaining == config.test_prompts:
        print(f"generate: no test-split pieces in {', '.join(datasets)}; only unconditioned and input/ pieces")
    input_dir = root / config.input_dir
    files = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in (".mid", ".midi")) \
        if input_dir.is_dir() else []
    skipped = []
    for path in files:
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        try:
            ids = encode_midi(path, flavour)
        except Exception as e:  # a broken file is skipped with its reason, never fatal (docs/contracts.md)
            print(f"generate: skipping {source}: {e}")
            skipped.append(f"{source}: {e}")
            continue
        prompts.append((f"input_{_safe(path.stem)}", source, ids))
    return _unique(prompts), skipped


def _unique(prompts: list[Prompt]) -> list[Prompt]:
    """Suffix repeated names (same piece name in two datasets, same stem in two input folders)."""
    seen: dict[str, int] = {}
    out = []
    for name, source, ids in prompts:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}_{seen[name]}", source, ids))
    return out


def write_pieces(loaded: Loaded, prompts: list[Prompt], out_dir: Path, config: GenerateConfig, family: str,
                 quiet: bool = False, max_note_seconds: float = 5.0,
                 skipped: list[str] | None = None) -> dict[str, Any]:
    """Generate, write and render every piece of one checkpoint; returns the index (settings, per-piece figures)."""
    from amadeus import render

    if out_dir.exists():
        shutil.rmtree(out_dir)  # stale pieces from earlier settings must not linger
    out_dir.mkdir(parents=True)
    kwargs = config.model_kwargs.get(family) or {}
    if not isinstance(kwargs, dict):
        raise UserError(f"params.yaml: generate.model_kwargs.{family}: expected a mapping of prefill arguments, "
                        f"e.g. {{num_latents: 1}}, got {kwargs!r}")
    pieces = []
    for i, (name, source, prompt) in enumerate(tqdm(prompts, desc=f"generate {out_dir}", disable=quiet)):
        result = continue_midi(
            loaded, None, max_new_tokens=config.max_new_tokens, seconds=config.seconds,
            do_sample=config.do_sample, temperature=config.temperature, top_k=config.top_k,
            top_p=config.top_p, num_beams=config.num_beams, seed=config.seed + i, model_kwargs=kwargs,
            prompt_ids=prompt, max_note_seconds=max_note_seconds, return_full=True)
        files = {"continuation": f"{name}.mid", "full": f"{name}.full.mid", "ids": f"{name}.npy"}
        for key in ("continuation", "full"):
            with atomic_open(out_dir / files[key], "wb") as f:
                result[key].write(f)
        with atomic_open(out_dir / files["ids"], "wb") as f:
            np.save(f, result["ids"].astype(np.uint16), allow_pickle=False)
        boundary = result["boundary_seconds"] if prompt is not None else None
        if config.render:
            files["wav"], files["png"] = f"{name}.wav", f"{name}.png"
            render.render_wav(result["full"], out_dir / files["wav"], soundfont=config.soundfont,
                              sample_rate=config.sample_rate)
            render.piano_roll_png(result["full"], out_dir / files["png"], boundary_seconds=boundary,
                                  title=f"{family} {loaded.precision}: {source}")
        pieces.append({"name": name, "source": source, "prompt_tokens": int(len(result["prompt_ids"])),
                       "prompt_seconds": result["boundary_seconds"], "tokens": result["tokens"],
                       "seconds_of_music": result["seconds"], "compute_seconds": result["compute_seconds"],
                       "notes": sum(len(inst.notes) for inst in result["continuation"].instruments),
                       "files": files})
    index = {"family": family, "precision": loaded.precision, "flavour": loaded.flavour,
             "settings": as_dict(config), "pieces": pieces, "skipped": skipped or []}
    write_json(out_dir / "index.json", index)
    return index


def summarize(pieces: list[dict]) -> dict[str, float | int]:
    """The contract metric keys over a list of pieces (compute = model time only, not rendering)."""
    tokens = sum(p["tokens"] for p in pieces)
    compute = sum(p["compute_seconds"] for p in pieces)
    music = sum(p["seconds_of_music"] for p in pieces)
    return {"pieces": len(pieces), "tokens": tokens, "seconds": round(compute, 3),
            "tokens_per_second": round(tokens / compute, 1) if compute else 0.0,
            "seconds_of_music": round(music, 2),
            "real_time_factor": round(music / compute, 2) if compute else 0.0}


def run(params: dict, root: Path, family: str, *, quiet: bool = False) -> dict:
    """The whole generate@<family> stage: pieces of every precision, then the metrics file; returns the metrics."""
    root = Path(root)
    config = build(GenerateConfig, section(params, "generate"), "generate")
    datasets = list(params.get("datasets") or []) if config.test_prompts else []
    # decoding closes notes left open after this long, as everywhere else in the pipeline
    max_note_seconds = float((params.get("codec") or {}).get("max_note_seconds", 5.0))
    if config.threads:
        torch.set_num_threads(config.threads)  # batch 1: extra threads only contend
    device = resolve_device(config.device, "params.yaml: generate.device")
    if config.render:
        from amadeus.render import ensure_fluidsynth

        ensure_fluidsynth()  # one line saying how to install it, before any model work
    metrics: dict[str, Any] = {}
    for precision in config.precisions:
        path = paths.checkpoint(family, precision, root)
        if not path.is_file():
            raise UserError(f"{path}: checkpoint not found; run `dvc repro` (train/quantize {family}) "
                            f"or drop {precision} from generate.precisions")
        loaded = load(path, device)
        prompts, skipped = collect_prompts(root, datasets, config, loaded.flavour)
        index = write_pieces(loaded, prompts, paths.pieces_dir(family, precision, root), config, family, quiet,
                             max_note_seconds, skipped)
        metrics[precision] = {**summarize(index["pieces"]), "skipped": len(skipped)}
        m = metrics[precision]
        print(f"generate {family} {precision}: {m['pieces']} pieces, {m['tokens']:,} events, "
            f"{m['seconds_of_music']:.0f} s of music in {m['seconds']:.1f} s: {m['tokens_per_second']:,.0f} "
            f"events/s, {m['real_time_factor']:.1f}x real time")
    # The contract keys at the top level describe the first precision listed (fp32 by default).
    first = config.precisions[0] if config.precisions else None
    result = {**(metrics[first] if first else summarize([])), "precision": first, **metrics}
    write_json(paths.metrics_file("generate", family, root), result)
    return result
