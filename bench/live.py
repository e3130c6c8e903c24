"""Live-mode latency: whole sessions through in-memory MIDI ports, with a recorded phrase.

    python bench/live.py [--handovers 10] [--threads 1] [--silence 800] [--answer-seconds 3]
                         [--realtime] [--checkpoint save/performance_rnn.int8.sess] [--json out.json]

Two figures per configuration, as the issue asks:
- hand-over latency: from the hand-over moment (the moment the silence timer expires) to the first
  answer note-on leaving the output port; target <= 50 ms at p95 with the int8 3x512 GRU on 2 cores;
- timing error: send time minus scheduled time of every answer message; target <= 10 ms at p99.

The phrase is written by this script (8 s of chords, arpeggios and pedal, ~30 events/s, the density of
real solo piano, docs/live.md) to a MIDI file and read back as `--input-file` does. By default it is
delivered stamped as though played in real time and ending at that moment (the session then sees the
silence and must prime during it); `--realtime` plays it in real time (priming while "playing").

Configurations, run alternately in rounds so load on a shared machine hits all alike:
- int8 warm: the int8 GRU (amadeus.quant, static ranges from random windows as bench/generate.py),
  primed while the player plays (the session's default);
- fp32 warm: the same model in fp32;
- int8 cold: int8, no priming while playing: one batched prefill of the whole phrase at the hand-over
  (the baseline the warm priming improves on).
With --checkpoint, that model is used for "warm" and "cold" instead. Weights are random otherwise:
speed does not depend on training, but note density does, so the answer's density differs from a
trained model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pretty_midi
import torch

from amadeus import live
from amadeus.hardware import machine
from amadeus.live.ports import MemoryBackend
from amadeus.quant import int8_with_random_calibration


def write_phrase(path: Path, seconds: float = 8.0, seed: int = 0) -> pretty_midi.PrettyMIDI:
    """A left-hand chord each half bar, right-hand eighths over it, pedal changed with each chord."""
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    piano = pretty_midi.Instrument(0)
    beat = 0.5
    t = 0.0
    roots = [48, 53, 55, 50]
    i = 0
    while t + 2 * beat <= seconds:
        root = roots[i % len(roots)]
        for p in (root, root + 7, root + 16):
            piano.notes.append(pretty_midi.Note(int(rng.integers(50, 70)), p, t, t + 2 * beat - 0.05))
        piano.control_changes.append(pretty_midi.ControlChange(64, 0, max(0.0, t - 0.02)))
        piano.control_changes.append(pretty_midi.ControlChange(64, 100, t + 0.05))
        for k in range(4):
            s = t + k * beat / 2 + float(rng.normal(0, 0.008))
            p = int(root + 24 + rng.choice([0, 4, 7, 12, 16]))
            piano.notes.append(pretty_midi.Note(int(rng.integers(60, 95)), p, max(0.0, s), s + beat * 0.45))
        t += 2 * beat
        i += 1
    piano.control_changes.append(pretty_midi.ControlChange(64, 0, t))
    piano.control_changes.sort(key=lambda c: c.time)
    pm.instruments.append(piano)
    pm.write(str(path))
    return pm


def gru_3x512(seed: int = 0) -> torch.nn.Module:
    from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig

    torch.manual_seed(seed)
    config = PerformanceRNNConfig(embed_dim=256, input_size=512, hidden_size=512, num_layers=3)
    return PerformanceRNN(config).eval()


def run_session(model, codec, messages, handovers: int, silence: float, seconds: float, warm: bool,
                realtime: bool, seed: int) -> tuple[list[live.Turn], list[float]]:
    backend = MemoryBackend()
    out = backend.open_output(None)
    cfg = live.LiveConfig(silence=silence, seconds=seconds, seed=seed, turns=handovers, warm=warm)
    session = live.LiveSession(model, codec, out, cfg)
    port = backend.open_input(None, session.on_message)
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    for _ in range(handovers):
        while not session.listening.wait(0.01):
            pass
        n = len(session.turns)
        live.play_phrase(port, messages, speed=1.0 if realtime else None)
        while len(session.turns) == n or session.responding:
            time.sleep(0.01)
    thread.join(timeout=10)
    return session.turns, session.timing_errors()


def ms(stats: dict) -> dict:
    return {k: (v if k == "n" else round(v * 1000, 2)) for k, v in stats.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--handovers", type=int, default=10, help="hand-overs per configuration")
    ap.add_argument("--per-round", type=int, default=2, help="hand-overs per configuration per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--silence", type=float, default=800.0, help="ms")
    ap.add_argument("--answer-seconds", type=float, default=3.0)
    ap.add_argument("--realtime", action="store_true", help="play the phrase in real time (slower)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="amadeus-bench-live-"))
    phrase_path = tmp / "phrase.mid"
    write_phrase(phrase_path)
    messages = live.midi_file_messages(phrase_path)
    codec = live.Codec("magenta")
    n_events = len(codec.encode(pretty_midi.PrettyMIDI(str(phrase_path))))

    if args.checkpoint:
        from amadeus.generation import load

        loaded = load(args.checkpoint)
        codec = live.Codec(loaded.flavour)
        configs = {f"{loaded.precision} warm": (loaded.model, True), f"{loaded.precision} cold": (loaded.model, False)}
        int8_note = f"checkpoint {args.checkpoint} ({loaded.family}, {loaded.precision})"
    else:
        fp32 = gru_3x512()
        int8 = int8_with_random_calibration(fp32)
        int8_note = "amadeus.quant, static ranges (clip avg) from 4 random windows"
        configs = {"int8 warm": (int8, True), "fp32 warm": (fp32, True), "int8 cold": (int8, False)}

    print(f"machine: {machine()}; {os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); python {platform.python_version()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"phrase: {messages[-1][0]:.1f} s, {n_events} events; silence {args.silence:g} ms; answers "
          f"{args.answer_seconds:g} s; {'real-time' if args.realtime else 'stamped (instant)'} phrase; "
          f"int8: {int8_note}")

    turns: dict[str, list[live.Turn]] = {k: [] for k in configs}
    errors: dict[str, list[float]] = {k: [] for k in configs}
    done = 0
    seed = 0
    while done < args.handovers:
        k = min(args.per_round, args.handovers - done)
        for name, (model, warm) in configs.items():
            t, e = run_session(model, codec, messages, k, args.silence / 1000, args.answer_seconds, warm,
                               args.realtime, seed)
            turns[name] += t
            errors[name] += e
            seed += 1
        done += k
        print(f"  {done}/{args.handovers} hand-overs per configuration", file=sys.stderr)

    result = {"machine": machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "phrase_events": n_events, "silence_ms": args.silence, "answer_seconds": args.answer_seconds,
              "realtime_phrase": args.realtime, "load_average_after": os.getloadavg(), "configs": {}}
    print(f"\n{'configuration':<12} {'latency ms p50 / p95 / p99 / max':>36}   "
          f"{'timing error ms p50 / p95 / p99 / max':>40}"
          f"   {'fed at hand-over':>16}")
    for name in configs:
        lat = ms(live.stats([t.latency for t in turns[name] if t.latency is not None]))
        err = ms(live.stats(errors[name]))
        tail = float(np.median([len(t.prompt_ids) - t.warm_ids for t in turns[name]]))
        parts = {
            "wake": ms(live.stats([t.woke - t.handover for t in turns[name]]))["p50"],
            "prime": ms(live.stats([t.primed - t.woke for t in turns[name]]))["p50"],
            "decode_first": ms(live.stats([t.first_queued - t.primed for t in turns[name] if t.first_queued]))["p50"],
            "send": ms(live.stats([t.first_note_sent - t.first_queued for t in turns[name]
                                   if t.first_queued and t.first_note_sent]))["p50"],
        }
        result["configs"][name] = {"latency_ms": lat, "timing_error_ms": err, "events_fed_at_handover_p50": tail,
                                   "latency_parts_p50_ms": parts, "messages": err["n"],
                                   "reprimed": sum(t.reprimed for t in turns[name])}
        print(f"{name:<12} {lat['p50']:>9.1f} / {lat['p95']:6.1f} / {lat['p99']:6.1f} / {lat['max']:6.1f}   "
              f"{err['p50']:>12.2f} / {err['p95']:6.2f} / {err['p99']:6.2f} / {err['max']:6.2f}   {tail:>16.0f}")
        first_tokens = float(np.median([t.first_tokens for t in turns[name] if t.first_queued]))
        result["configs"][name]["events_sampled_to_first_note_p50"] = first_tokens
        print(f"{'':<12} median parts (ms): wake {parts['wake']}, prime {parts['prime']}, "
              f"decode to first note {parts['decode_first']} ({first_tokens:.0f} events sampled), "
              f"send {parts['send']}; {err['n']} messages")
    names = list(configs)
    if len(names) >= 3:
        warm, cold = names[0], names[2]
        ratio = result["configs"][cold]["latency_ms"]["p50"] / max(result["configs"][warm]["latency_ms"]["p50"], 1e-9)
        result["cold_over_warm_latency_p50"] = round(ratio, 2)
        print(f"\nlatency p50 {cold} / {warm}: {ratio:.2f}x")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("targets: latency p95 <= 50 ms (int8 warm), timing error p99 <= 10 ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
