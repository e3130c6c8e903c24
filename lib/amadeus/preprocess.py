"""Preprocess: a folder of MIDI files -> `.data` event files + manifest + metrics.

Files are encoded in parallel worker processes. A broken file (codec.MidiError) is skipped with one
line `skipped <file>: <reason>`, listed in the manifest and counted by kind; the stage fails only when
no file is usable. The output folder is built in a staging folder beside the old one and swapped in
when complete (two renames instead of one per file), so an interrupted run never leaves a mix of old
and new files; the staging folder is removed when the run fails, and one left by a killed run is
removed when the next run starts.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from amadeus import codec, data
from amadeus.errors import UserError
from amadeus.fileio import write_json
from amadeus.params import knob, seed_knob


@dataclass
class PreprocessConfig:
    workers: int = knob(0, min=0, help="worker processes; 0 = auto (one per core, for enough data)")
    split: list[float] = knob([0.8, 0.1, 0.1], help="train/validation/test fractions when the source has none")
    seed: int = seed_knob(1234, help="seed of the split by file")

    def __post_init__(self) -> None:
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise UserError(f"params.yaml: preprocess.split: {self.split} must be three fractions "
                            "(train, validation, test) >= 0 that sum to 1")


@dataclass(frozen=True)
class _Job:
    src: Path
    rel: str
    dst: Path
    flavour: str
    max_piece_seconds: float


def _encode_one(job: _Job) -> dict:
    """Encode one file and write its .data; never raises for a bad file (returns the reason)."""
    try:
        piece = codec.encode_path(job.src, flavour=job.flavour, max_piece_seconds=job.max_piece_seconds)
    except codec.MidiError as e:
        return {"source": job.rel, "reason": e.reason, "kind": e.kind}
    data.save_events(job.dst, piece.ids, atomic=False)  # the whole folder is swapped in atomically
    return {"source": job.rel, "file": job.dst.name, "sha256": data.sha256_file(job.src),
            "events": int(len(piece.ids)), "notes": int(piece.notes), "seconds": round(float(piece.seconds), 3)}


def preprocess(midi_dir: str | os.PathLike, out_dir: str | os.PathLike, config: PreprocessConfig,
               codec_config: codec.CodecConfig) -> dict:
    """Encode every MIDI file under `midi_dir` into `out_dir`; returns the metrics dict."""
    midi_dir, out_dir = Path(midi_dir), Path(out_dir)
    _remove_leftovers(out_dir)   # a killed run's staging or old folder
    if not midi_dir.is_dir():
        raise UserError(f"{midi_dir}: no such folder; run the download stage first")
    rels = data.midi_files(midi_dir)
    if not rels:
        raise UserError(f"{midi_dir}: no MIDI files (*.mid, *.midi) found")
    started = time.perf_counter()
    staging = out_dir.parent / f".{out_dir.name}.staging"
    staging.mkdir(parents=True)
    try:
        metrics = _build(midi_dir, rels, staging, config, codec_config)
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)   # gone on success (renamed); removed on any failure
    metrics["seconds"] = round(time.perf_counter() - started, 4)
    metrics["notes_per_second"] = round(metrics["notes"] / metrics["seconds"])
    return metrics


def _remove_leftovers(out_dir: Path) -> None:
    for name in (f".{out_dir.name}.staging", f".{out_dir.name}.old"):
        shutil.rmtree(out_dir.parent / name, ignore_errors=True)


def _build(midi_dir: Path, rels: list[str], staging: Path, config: PreprocessConfig,
           codec_config: codec.CodecConfig) -> dict:
    """Encode into `staging` and write its manifest; returns the metrics (without the timing)."""
    jobs = [_Job(midi_dir / rel, rel, staging / data.data_name(rel), codec_config.flavour,
                 codec_config.max_piece_seconds) for rel in rels]
    results = _run(jobs, config.workers)

    pieces = [r for r in results if "reason" not in r]
    skipped = [r for r in results if "reason" in r]
    for s in skipped:
        print(f"skipped {s['source']}: {s['reason']}")
    if not pieces:
        raise UserError(f"{midi_dir}: none of the {len(rels)} MIDI files is usable (see the reasons above)")

    official = data.read_split_file(midi_dir)
    if official is not None:
        missing = [p["source"] for p in pieces if p["source"] not in official]
        if missing:
            raise UserError(f"{midi_dir / data.SPLIT_FILE}: no split for {missing[0]} "
                            f"(and {len(missing) - 1} more)")
        split = official
    else:
        split = data.split_pieces([p["source"] for p in pieces], config.split, config.seed)
    for p in pieces:
        p["split"] = split[p["source"]]
        p["name"] = Path(p["file"]).stem

    manifest = {
        "codec": {"version": codec.CODEC_VERSION, "flavour": codec_config.flavour},
        "source_folder": midi_dir.as_posix(),
        "split_from": data.SPLIT_FILE if official is not None else
        {"fractions": config.split, "seed": config.seed},
        "splits": data.split_counts(pieces),
        "pieces": [{k: p[k] for k in ("name", "file", "source", "sha256", "split", "events", "notes", "seconds")}
                   for p in pieces],
        "skipped": skipped,
    }
    write_json(staging / data.MANIFEST, manifest)
    return {
        "files_total": len(rels), "files_ok": len(pieces), "files_skipped": len(skipped),
        "skipped_by_kind": dict(sorted(Counter(s["kind"] for s in skipped).items())),
        "notes": sum(p["notes"] for p in pieces), "events": sum(p["events"] for p in pieces),
        "music_seconds": round(sum(p["seconds"] for p in pieces), 1), "splits": manifest["splits"],
    }


def _swap_in(new: Path, target: Path) -> None:
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    try:
        new.rename(target)
    except OSError:
        if old.exists():
            old.rename(target)   # keep the previous output rather than none
        raise
    shutil.rmtree(old, ignore_errors=True)


# Starting a worker process costs about as much as encoding 2 MB of MIDI (~40 ms), so `workers: 0`
# (auto) starts one per core only when each gets at least that much to do.
AUTO_BYTES_PER_WORKER = 2 << 20


def _run(jobs: list[_Job], workers: int) -> list[dict]:
    if workers == 0:
        total = sum(j.src.stat().st_size for j in jobs)
        workers = max(1, min(os.cpu_count() or 1, total // AUTO_BYTES_PER_WORKER))
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [_encode_one(j) for j in jobs]
    # fork starts workers in ~ms with the codec already imported; spawn elsewhere
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        return list(pool.map(_encode_one, jobs, chunksize=max(1, len(jobs) // (workers * 4))))
