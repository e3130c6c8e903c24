"""Benchmark how preprocessing and the training loader scale with the corpus: 1,000 and 10,000 pieces.

    .venv/bin/python bench/corpus.py [--sizes 1000 10000] [--seconds 30] [--windows 2000] [--json OUT]

The corpora are made here, as real MIDI files in a temporary folder, from the default data's MIDI
files (dataset/midi/maestro-sample, the download stage's output): excerpts of `--seconds` from varying
offsets, each transposed by +-1..5 semitones and time-stretched by a tempo factor in 0.8..1.25
(symusic). Then, per size:

- preprocess (`amadeus.preprocess.preprocess`, the stage's function) with 1 and 2 workers: files/s,
  notes/s, and peak memory (ru_maxrss of the process and of its largest child, a worker);
- the training loader on the train split: `load_split` (memory-mapped) + `WindowSampler` with the
  default window, stride, augmentation and controls, drawing `--windows` windows: index time, windows/s
  and peak RSS; against the baseline in the same run, the loader before the corpus was mapped (every
  piece read with np.load and indexed whole in memory, as tests/test_corpus_mmap.py's reference does).
  Both must draw the same windows (their digests are compared).

Each measurement runs in a fresh child process, so each peak (ru_maxrss only grows) is its own; the
peak of a child that only imports what the loader needs is printed as the floor. Threads pinned to 1.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # pin threads before numpy
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import symusic  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from amadeus import codec, data  # noqa: E402
from amadeus.hardware import machine  # noqa: E402
from amadeus.params import build  # noqa: E402
from amadeus.pipeline import paths  # noqa: E402
from amadeus.preprocess import PreprocessConfig, preprocess  # noqa: E402
from amadeus.training import TrainConfig  # noqa: E402
from amadeus.windows import Piece, WindowSampler, make_window  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE = paths.midi_dir("maestro-sample", ROOT)
BATCH = 16


def peak_mb() -> tuple[float, float]:
    """Peak RSS in MB of this process and of its largest finished child (Linux reports KB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


# ---- the corpus ----
def make_corpus(folder: Path, count: int, seconds: float) -> dict:
    """`count` MIDI excerpts of the source files, transposed and time-stretched, written to `folder`."""
    sources = [symusic.Score(p, ttype="second") for p in sorted(SOURCE.glob("*.mid"))]
    if not sources:
        sys.exit(f"{SOURCE}: no MIDI files; run the download stage (make repro) first")
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for n in range(count):
        score = sources[n % len(sources)]
        start = float(rng.uniform(0, max(0.0, score.end() - seconds)))
        shift = int(rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]))
        factor = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))  # tempo x factor: times / factor
        piece = score.clip(start, start + seconds, clip_end=True).shift_time(-start).shift_pitch(shift)
        piece = piece.adjust_time([0.0, seconds], [0.0, seconds / factor])
        out = folder / f"{n // 1000:02d}"  # 1,000 files per folder
        out.mkdir(exist_ok=True)
        piece.dump_midi(out / f"piece_{n:05d}.mid")
    files = list(folder.rglob("*.mid"))
    return {"files": len(files), "megabytes": round(sum(f.stat().st_size for f in files) / 1e6, 1)}


# ---- what the child processes measure ----
def child_preprocess(midi: Path, out: Path, workers: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    codec_config = build(codec.CodecConfig, params.get("codec"), "codec")
    metrics = preprocess(midi, out, PreprocessConfig(workers=workers), codec_config)
    own, children = peak_mb()
    return {"files": metrics["files_ok"], "skipped": metrics["files_skipped"], "notes": metrics["notes"],
            "seconds": metrics["seconds"], "rss_mb": own, "worker_rss_mb": children}


class InMemorySampler:
    """The baseline: the loader before mapping (every piece read whole and indexed in memory)."""

    def __init__(self, arrays: list[np.ndarray], window: int, stride: int, transpose: int, stretch: float,
                 controls: bool, seed: int):
        self.length, self.stride, self.transpose, self.stretch = window + 1, stride, transpose, stretch
        self.controls, self.seed = controls, seed
        self.pieces = [Piece.of(a) for a in arrays if len(a) >= self.length]
        self.bounds = np.cumsum([(len(p.ids) - self.length) // stride + 1 for p in self.pieces])

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rng = np.random.default_rng([self.seed, step])
        ids, ctrl = [], []
        for k in rng.integers(0, int(self.bounds[-1]), size=batch_size):
            i = int(np.searchsorted(self.bounds, k, side="right"))
            piece = self.pieces[i]
            start = int(k - (self.bounds[i - 1] if i else 0)) * self.stride
            lo, hi = piece.transpositions(self.transpose)
            shift = int(rng.integers(lo, hi + 1))
            factor = float(rng.uniform(1 - self.stretch, 1 + self.stretch)) if self.stretch > 0 else 1.0
            made = make_window(piece, start, self.length, shift, factor, self.controls)
            if made is None:
                made = make_window(piece, start, self.length, shift, 1.0, self.controls)
            ids.append(made[0])
            ctrl.append(made[1])
        return torch.from_numpy(np.stack(ids)), torch.from_numpy(np.stack(ctrl)) if self.controls else None


def child_loader(processed: Path, mode: str, windows: int) -> dict:
    torch.set_num_threads(1)
    cfg = TrainConfig()  # the defaults: window 200, stride 10, transpose 3, stretch 0.05, seed 0
    start = time.perf_counter()
    if mode == "mapped":
        sampler = WindowSampler(data.load_split(processed, "train"), cfg.window, cfg.stride, transpose=cfg.transpose,
                                stretch=cfg.stretch, controls=True, seed=cfg.seed)
    elif mode == "in-memory":
        files = [processed / p["file"] for p in data.read_manifest(processed)["pieces"] if p["split"] == "train"]
        sampler = InMemorySampler([np.load(f, allow_pickle=False) for f in files], cfg.window, cfg.stride,
                                  cfg.transpose, cfg.stretch, True, cfg.seed)
    else:  # the floor: the same imports, nothing loaded
        return {"rss_mb": peak_mb()[0]}
    index_seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    start = time.perf_counter()
    for step in range(windows // BATCH):
        ids, ctrl = sampler.batch(step, BATCH)
        digest.update(ids.numpy().tobytes())
        digest.update(ctrl.numpy().tobytes())
    draw_seconds = time.perf_counter() - start
    return {"pieces": len(sampler.bounds), "index_seconds": round(index_seconds, 3),
            "windows_per_second": round(windows // BATCH * BATCH / draw_seconds, 1),
            "rss_mb": peak_mb()[0], "digest": digest.hexdigest()[:16]}


def in_child(*args: str) -> dict:
    """Run this file with `args` in a fresh process (its own peak RSS); returns its JSON line."""
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        sys.exit(f"child {' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the run ----
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each excerpt")
    ap.add_argument("--windows", type=int, default=2000, help="windows the loaders draw")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        result = (child_preprocess(Path(rest[0]), Path(rest[1]), int(rest[2])) if kind == "preprocess"
                  else child_loader(Path(rest[0]), rest[1], int(rest[2])))
        print(json.dumps(result))
        return

    torch.set_num_threads(1)
    print(f"machine: {machine()}, {os.cpu_count()} CPUs; torch threads pinned to 1; "
          f"excerpts of {args.seconds:g} s from {SOURCE.relative_to(ROOT)}; "
          f"load average {os.getloadavg()[0]:.2f} (other work on the CPUs skews the worker figures)")
    results: dict = {"machine": machine(), "seconds": args.seconds, "windows": args.windows, "sizes": {}}
    floor = in_child("loader", ".", "floor", "0")["rss_mb"]
    results["floor_rss_mb"] = floor
    print(f"a child that only imports: peak RSS {floor:.0f} MB (the floor of every figure below)")
    work = Path(tempfile.mkdtemp(prefix="amadeus-corpus-"))
    try:
        for size in args.sizes:
            started = time.perf_counter()
            made = make_corpus(work / f"midi{size}", size, args.seconds)
            made["make_seconds"] = round(time.perf_counter() - started, 1)
            row: dict = {"corpus": made, "preprocess": {}, "loader": {}}
            print(f"\n{size:,} pieces: {made['files']:,} MIDI files, {made['megabytes']} MB, made in "
                  f"{made['make_seconds']} s")
            for workers in (1, 2):
                out = work / f"processed{size}_{workers}"
                p = in_child("preprocess", str(work / f"midi{size}"), str(out), str(workers))
                row["preprocess"][workers] = p
                print(f"  preprocess, {workers} worker{'s' if workers > 1 else ' '}: {p['files'] / p['seconds']:8,.0f} "
                      f"files/s {p['notes'] / p['seconds']:11,.0f} notes/s ({p['seconds']:.2f} s, "
                      f"{p['notes']:,} notes, {p['skipped']} skipped); peak RSS {p['rss_mb']:.0f} MB, "
                      f"largest child {p['worker_rss_mb']:.0f} MB")
            one, two = row["preprocess"][1], row["preprocess"][2]
            print(f"  2 workers vs 1: {one['seconds'] / two['seconds']:.2f}x")
            processed = work / f"processed{size}_1"
            events = sum(p["events"] for p in data.read_manifest(processed)["pieces"] if p["split"] == "train")
            row["train_events"] = events
            for mode in ("in-memory", "mapped"):
                row["loader"][mode] = in_child("loader", str(processed), mode, str(args.windows))
            mapped, base = row["loader"]["mapped"], row["loader"]["in-memory"]
            same = "identical" if mapped["digest"] == base["digest"] else "DIFFERENT"
            print(f"  loader on the train split ({mapped['pieces']:,} pieces, {events:,} events, "
                  f"{events * 2 / 1e6:.1f} MB as uint16), {args.windows:,} windows of 201 events, windows {same}:")
            for mode, r in (("in-memory (baseline)", base), ("mapped", mapped)):
                print(f"    {mode:21s} index {r['index_seconds']:7.2f} s, {r['windows_per_second']:8,.0f} windows/s, "
                      f"peak RSS {r['rss_mb']:6.0f} MB ({r['rss_mb'] - floor:+.0f} MB over the floor)")
            speed = mapped["windows_per_second"] / base["windows_per_second"]
            memory = (mapped["rss_mb"] - floor) / max(base["rss_mb"] - floor, 1e-9)
            print(f"    mapped vs in-memory: windows/s {speed:.2f}x, memory over the floor {memory:.2f}x")
            results["sizes"][size] = row
            shutil.rmtree(work / f"midi{size}")
            for workers in (1, 2):
                shutil.rmtree(work / f"processed{size}_{workers}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if len(args.sizes) > 1:
        small, large = args.sizes[0], args.sizes[-1]
        a, b = results["sizes"][small], results["sizes"][large]
        print(f"\n{large:,} vs {small:,} pieces ({large / small:g}x):")
        for workers in (1, 2):
            pa, pb = a["preprocess"][workers], b["preprocess"][workers]
            print(f"  preprocess, {workers} worker(s): time {pb['seconds'] / pa['seconds']:.2f}x, "
                  f"peak RSS {pb['rss_mb']:.0f} vs {pa['rss_mb']:.0f} MB")
        for mode in ("in-memory", "mapped"):
            la, lb = a["loader"][mode], b["loader"][mode]
            print(f"  loader {mode}: index time {lb['index_seconds'] / la['index_seconds']:.2f}x, windows/s "
                  f"{lb['windows_per_second'] / la['windows_per_second']:.2f}x, memory over the floor "
                  f"{lb['rss_mb'] - floor:+.0f} vs {la['rss_mb'] - floor:+.0f} MB")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
