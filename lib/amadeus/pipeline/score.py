"""Stage score@<family>: how well each checkpoint predicts held-out music -> output/metrics/score_<family>.json.

Per precision (fp32, int8) and split (test, validation):
- `nll`: nats/event over evenly spaced windows with amadeus.nll.mean_nll, the evaluator training's
  val_nll and the quantize stage use, so the three are measured alike;
- teacher-forced over each piece's first `events_per_piece` events (the model's `score`; the
  conditional Performance RNN without controls, as the release prior was fitted), per event class
  (amadeus.music_stats.nll_by_class: note_on, note_off, time_shift, velocity) and overall:
  `raw` is the model's own distribution over every event; `allowed` renormalises it over the events the
  sampler allows (no note-off of a silent pitch, no note-on of a sounding one: amadeus.release_prior.
  allowed_events); `allowed_prior` adds the checkpoint's release prior (amadeus.release_prior) to the
  note-offs of sounding pitches, as sampling does. Also the probability the model gives to those
  note-offs, with and without the prior, against how often one is the true next event.
The stage reads the checkpoints and the processed data only, not the generate settings: a change of
temperature reruns generate and evaluate, never this.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from amadeus import codec, data
from amadeus.checkpoint import PRECISIONS, load_model
from amadeus.errors import UserError
from amadeus.fileio import write_json
from amadeus.hardware import DEVICES, resolve_device
from amadeus.music_stats import nll_by_class
from amadeus.nll import mean_nll
from amadeus.params import as_dict, build, knob, section
from amadeus.pipeline import paths
from amadeus.release_prior import ReleasePrior, allowed_events, note_ages
from amadeus.vocab import EVENT_CLASSES, NOTE_OFF, TIME_SHIFT, VOCAB_SIZE
from amadeus.windows import evenly_spaced_windows


@dataclass
class ScoreConfig:
    """params.yaml `score`: which checkpoints and splits are scored, and on how much music."""

    precisions: list[str] = knob(["fp32", "int8"], choices=PRECISIONS,
                                 help="checkpoints: save/<family>.sess, save/<family>.int8.sess")
    splits: list[str] = knob(["test", "validation"], choices=data.SPLITS)
    nll_window: int | None = knob(None, min=1, help="events per NLL window; null = the model's context_length "
                                  "(the window training uses by default), else 512")
    nll_max_windows: int = knob(32, min=1, help="per split, evenly spaced")
    batch_size: int = knob(32, min=1)
    events_per_piece: int = knob(10000, min=0, help="teacher-forced: each piece's first N events (0 = all)")
    device: str = knob("cpu", choices=DEVICES)
    threads: int = knob(1, min=0, help="torch CPU threads; 1 is fastest for batch-1 sequences and never "
                        "stalls on a busy machine (0 = torch's default)")


# --------------------------------------------------------------------------------------------------
# Per-event terms of one teacher-forced piece


def _nll_and_release(lp: torch.Tensor, ids: torch.Tensor, released: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per event: NLL of the true id under log-weights `lp` (renormalised), and the probability of the
    `released` ids (note-offs of sounding pitches)."""
    norm = torch.logsumexp(lp, dim=1)
    off = torch.logsumexp(lp.masked_fill(~released, float("-inf")), dim=1)
    return norm - lp.gather(1, ids[:, None])[:, 0], torch.exp(off - norm)


def event_terms(logp: np.ndarray, ids: np.ndarray, prior: ReleasePrior | None) -> dict[str, np.ndarray]:
    """Per event of one piece, from the model's log-probabilities [N, V] and the true ids [N]:
    raw / allowed / allowed_prior NLL, note-off probability with and without the prior, and whether the
    true event is a note-off of a sounding pitch (the `release` the prior reweights)."""
    ids = np.asarray(ids, dtype=np.int64)
    sounding, age = note_ages(ids)
    target = torch.as_tensor(ids)
    logp_t = torch.as_tensor(logp, dtype=torch.float64)
    allowed = torch.as_tensor(allowed_events(ids, sounding))
    released = torch.zeros_like(allowed)
    released[:, NOTE_OFF:TIME_SHIFT] = torch.as_tensor(sounding)
    lp = logp_t[:, :VOCAB_SIZE].masked_fill(~allowed, float("-inf"))
    terms = {"raw": -logp_t.gather(1, target[:, None])[:, 0],
             "release": released.gather(1, target[:, None])[:, 0].double()}
    terms["allowed"], terms["note_off_probability"] = _nll_and_release(lp, target, released)
    if prior is not None:
        bias = prior.bias_table(int(age.max()) if age.size else 0).double()[torch.as_tensor(age, dtype=torch.long)]
        with_prior = lp.clone()
        with_prior[:, NOTE_OFF:TIME_SHIFT] += torch.where(torch.as_tensor(sounding), bias, torch.zeros_like(bias))
        terms["allowed_prior"], terms["prior_note_off_probability"] = _nll_and_release(with_prior, target, released)
    return {k: v.numpy() for k, v in terms.items()}


def summarize_terms(terms: dict[str, np.ndarray], ids: np.ndarray) -> dict:
    """Means over a split's events: overall and per event class."""
    out: dict = {"scored_events": int(len(ids))}
    kinds = [k for k in ("raw", "allowed", "allowed_prior") if k in terms]
    for kind in kinds:
        out[f"{kind}_nll"] = round(float(terms[kind].mean()), 4)
    out["note_off_rate"] = round(float(terms["release"].mean()), 4)
    out["note_off_probability"] = round(float(terms["note_off_probability"].mean()), 4)
    if "prior_note_off_probability" in terms:
        out["prior_note_off_probability"] = round(float(terms["prior_note_off_probability"].mean()), 4)
    by_class = {kind: nll_by_class(terms[kind], ids) for kind in kinds}
    out["class_nll"] = {
        name: {"events": by_class["raw"][name]["count"],
               **{kind: _rounded(by_class[kind][name]["mean_nll"]) for kind in kinds}}
        for name in EVENT_CLASSES}
    return out


def _rounded(x: float) -> float | None:
    return round(x, 4) if np.isfinite(x) else None  # a class with no events has no mean


# --------------------------------------------------------------------------------------------------
# One checkpoint


@torch.no_grad()
def score_checkpoint(path: Path, splits: dict[str, Sequence[np.ndarray]], data_flavour: str, config: ScoreConfig,
                     device: torch.device) -> dict:
    """Per split: the windowed NLL and the teacher-forced figures of one checkpoint."""
    model, ckpt = load_model(path, device)
    prior = ReleasePrior.from_dict(ckpt.get("release_prior"))
    model_flavour = (ckpt.get("codec") or {}).get("flavour", data_flavour)
    window = config.nll_window or getattr(model, "context_length", None) or 512
    window = min(window, getattr(getattr(model, "config", None), "max_seq_len", window))
    out: dict = {"release_prior": prior is not None}
    for split, pieces in splits.items():
        if model_flavour != data_flavour:  # e.g. an imported perceiver-io checkpoint on magenta data
            pieces = [codec.encode(codec.decode(p, flavour=data_flavour), flavour=model_flavour) for p in pieces]
        pieces = data.nonempty(pieces)  # still memory-maps: each piece is read when it is scored
        if not len(pieces):
            out[split] = {"note": f"no {split} pieces"}
            continue
        windows, controls = evenly_spaced_windows(pieces, window, config.nll_max_windows,
                                                  controls=bool(getattr(model, "uses_controls", False)))
        entry: dict = {"nll": round(mean_nll(model, windows, controls, config.batch_size, device), 4)
                       if len(windows) else None, "nll_window": window, "nll_windows": int(len(windows))}
        parts, scored = [], []
        for ids in pieces:
            ids = np.asarray(ids[:config.events_per_piece] if config.events_per_piece else ids, dtype=np.int64)
            logits = model.score(torch.as_tensor(ids, device=device)).float()
            parts.append(event_terms(logits.log_softmax(-1).cpu().numpy(), ids, prior))
            scored.append(ids)
        terms = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        entry.update(scored_pieces=len(pieces), **summarize_terms(terms, np.concatenate(scored)))
        out[split] = entry
    return out


def run(params: dict, root: Path, family: str) -> dict:
    """The whole score@<family> stage: every precision and split, written as the metrics file; returns it."""
    root = Path(root)
    config = build(ScoreConfig, params.get("score"), "score")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device, "params.yaml: score.device")
    folders = [paths.processed_dir(name, root) for name in section(params, "datasets")]
    flavours = {(data.read_manifest(f).get("codec") or {}).get("flavour", "magenta") for f in folders}
    if len(flavours) > 1:
        raise UserError(f"{', '.join(map(str, folders))}: preprocessed with different codec flavours "
                        f"({', '.join(sorted(flavours))}); rerun preprocess with one codec.flavour")
    data_flavour = flavours.pop() if flavours else "magenta"
    splits = {split: data.load_split(folders, split) for split in config.splits}
    result: dict = {"family": family}
    for precision in config.precisions:
        path = paths.existing_checkpoint(family, precision, root, "score")
        start = time.perf_counter()
        result[precision] = score_checkpoint(path, splits, data_flavour, config, device)
        figures = ", ".join(f"{split} NLL {e['nll']:.4f}" for split, e in result[precision].items()
                            if isinstance(e, dict) and e.get("nll") is not None)
        print(f"score {family} {precision}: {figures or 'no held-out windows'} "
              f"({time.perf_counter() - start:.1f} s)")
    # The contract keys at the top level: the first precision's windowed NLL per split (fp32 by default).
    first = result.get(config.precisions[0], {}) if config.precisions else {}
    for split in config.splits:
        result[f"{split}_nll"] = (first.get(split) or {}).get("nll")
    result["settings"] = as_dict(config)
    write_json(paths.metrics_file("score", family, root), result)
    write_json(paths.headline_file("score", family, root), headline(result, config))
    return result


def headline(result: dict, config: ScoreConfig) -> dict:
    """`dvc metrics show`'s line for score@<family>: the windowed NLL of each precision on the held-out
    split (test when scored), named for it; the rest (per class, other splits) stays in output/metrics/."""
    split = "test" if "test" in config.splits else (config.splits[0] if config.splits else None)
    return {f"{split}_nll_{p}": ((result.get(p) or {}).get(split) or {}).get("nll")
            for p in config.precisions if split}
