"""What the sampler's state masks change on a trained model: events the decoder discards, before/after.

    python bench/masked_decoding.py [--train-steps 300] [--seconds 20] [--cache model.pt] [--json out.json]

Trains a small conditional Performance RNN (a few minutes on a CPU) on the MAESTRO sample the pipeline
downloads (dataset/midi/maestro-sample; synthetic piano MIDI when it is absent), then continues
held-out prompts (the first 5 s of a piece, cut mid-performance) with top-p 0.95, each seed once
with `rules=None` (raw sampling, as before amadeus.performance_state), with the default rules
(the state masks only) and with a musician's rules (MUSICIAN), and counts with amadeus.music_stats.discarded_events what
codec.decode does not take as written: stray note-offs, zero-length notes, re-strikes, capped notes.
Same model, prompts and seeds for both; the figures are shares of the continuation's events.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pretty_midi
import torch

from amadeus import codec
from amadeus.controls import piece_controls
from amadeus.generation import continue_midi
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
from amadeus.music_stats import capped_fraction, mean_polyphony
from amadeus.playing_rules import DEFAULT_RULES, PlayingRules
from amadeus.vocab import NOTE_OFF, TIME_SHIFT, cut_seconds

SAMPLE = Path("dataset/midi/maestro-sample")
MUSICIAN = PlayingRules(key="auto", max_polyphony=6, max_note_seconds=2.0)  # a third setting, for scale
CONFIG = PerformanceRNNConfig(embed_dim=64, input_size=256, hidden_size=384, num_layers=2, dropout=0.0)


def synthetic_piece(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    scale = np.array([0, 2, 4, 5, 7, 9, 11]) + int(rng.integers(0, 12))
    t = 0.0
    while t < seconds:
        for _ in range(int(rng.integers(1, 4))):
            pitch = int(48 + rng.choice(scale) + 12 * rng.integers(0, 3))
            piano.notes.append(pretty_midi.Note(int(rng.integers(40, 100)), pitch, t, t + float(rng.uniform(0.1, 1.0))))
        t += float(rng.choice([0.125, 0.25, 0.5]))
    pm.instruments.append(piano)
    return codec.encode(pm).astype(np.int64)


def pieces() -> tuple[list[np.ndarray], str]:
    files = sorted(SAMPLE.glob("*.mid")) if SAMPLE.is_dir() else []
    if files:
        return [codec.encode_path(f).ids.astype(np.int64) for f in files], f"{len(files)} pieces of {SAMPLE}"
    return [synthetic_piece(300.0, seed) for seed in range(10)], "10 synthetic pieces (no MAESTRO sample)"


def train(train_pieces: list[np.ndarray], steps: int, window: int = 256,
          batch: int = 16) -> tuple[PerformanceRNN, dict]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = PerformanceRNN(CONFIG)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    controls = [piece_controls(p) for p in train_pieces]
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        rows = rng.integers(0, len(train_pieces), batch)
        ids, ctrl = [], []
        for r in rows:
            s = int(rng.integers(0, len(train_pieces[r]) - window - 1))
            ids.append(train_pieces[r][s:s + window + 1])
            ctrl.append(controls[r][s:s + window + 1])
        loss = model.loss(torch.as_tensor(np.stack(ids)), torch.as_tensor(np.stack(ctrl)))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
                          "final_loss": round(float(np.mean(losses[-20:])), 3)}


def measure(model: PerformanceRNN, prompts: list[np.ndarray], seconds: float, seeds: int,
            rules: PlayingRules | None) -> dict:
    totals: dict[str, float] = {}
    polyphony, at_cap, warnings = [], [], []
    for prompt in prompts:
        for seed in range(seeds):
            out = continue_midi(model, prompt_ids=prompt, seconds=seconds, top_p=0.95, seed=seed, rules=rules)
            new = out["ids"]
            for kind, n in out["discarded"].items():
                totals[kind] = totals.get(kind, 0) + n
            totals["events"] = totals.get("events", 0) + len(new)
            totals["note_ons"] = totals.get("note_ons", 0) + int((new < NOTE_OFF).sum())
            totals["note_offs"] = totals.get("note_offs", 0) + int(((new >= NOTE_OFF) & (new < TIME_SHIFT)).sum())
            notes = np.array([(n.start, n.end, n.pitch, n.velocity) for n in out["continuation"].instruments[0].notes])
            polyphony.append(mean_polyphony(notes.reshape(-1, 4)))
            cap = min(5.0, rules.max_note_seconds or 5.0) if rules is not None else 5.0
            at_cap.append(capped_fraction(notes.reshape(-1, 4), cap))
            warnings += out["warnings"]
    t = totals
    return {"counts": {k: int(v) for k, v in t.items()},
            "discarded_of_events": round(t["total"] / t["events"], 4),
            "stray_of_note_offs": round(t["stray_note_off"] / max(t["note_offs"], 1), 4),
            "restrikes_of_note_ons": round(t["restrike"] / max(t["note_ons"], 1), 4),
            "capped_of_note_ons": round(t["capped"] / max(t["note_ons"], 1), 4),
            "mean_polyphony": round(float(np.mean(polyphony)), 2),
            "notes_at_the_length_cap": round(float(np.nanmean(at_cap)), 4), "warnings": len(warnings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=300, help="Adam steps on 16 windows of 256 events")
    parser.add_argument("--prompts", type=int, default=2, help="held-out pieces to take prompts from")
    parser.add_argument("--seeds", type=int, default=4, help="continuations per prompt and setting")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of music per continuation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None, help="a state-dict file: loaded if it exists, else written")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arrays, source = pieces()
    held_out, training = arrays[:args.prompts], arrays[args.prompts:]
    if args.cache and Path(args.cache).is_file():
        model, trained = PerformanceRNN(CONFIG), {"loaded": args.cache}
        model.load_state_dict(torch.load(args.cache))
        model.eval()
    else:
        model, trained = train(training, args.train_steps)
        if args.cache:
            torch.save(model.state_dict(), args.cache)
    print(f"data: {source}; model: {CONFIG}; trained {trained}")
    prompts = [cut_seconds(p, 5.0) for p in held_out]
    result = {"data": source, "trained": trained, "prompts": len(prompts), "seeds": args.seeds,
              "seconds": args.seconds}
    settings = {"raw": None, "default": DEFAULT_RULES, "musician": MUSICIAN}
    for name, rules in settings.items():
        result[name] = measure(model, prompts, args.seconds, args.seeds, rules)
        r = result[name]
        print(f"{name:8s} discarded {r['discarded_of_events']:.1%} of events; stray note-offs "
              f"{r['stray_of_note_offs']:.1%} of offs; re-strikes {r['restrikes_of_note_ons']:.1%} and capped "
              f"{r['capped_of_note_ons']:.1%} of ons; mean polyphony {r['mean_polyphony']}; notes at the length "
              f"cap {r['notes_at_the_length_cap']:.1%}; {r['warnings']} warnings; {r['counts']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
