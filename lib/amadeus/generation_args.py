"""Arguments of `amadeus generate` (kept apart from generation.py so `amadeus --help` need not import torch)."""

from __future__ import annotations

import argparse

from amadeus import checkpoint_choice


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


# PlayingRules field -> the flag that sets it (amadeus.generation.rules_from_args builds the rules)
RULE_FLAGS = {"key": "--key", "key_strength": "--key-strength", "lowest": "--lowest", "highest": "--highest",
              "max_polyphony": "--max-polyphony", "velocity_low": "--velocity-range",
              "velocity_high": "--velocity-range", "max_silence": "--max-silence",
              "max_note_seconds": "--max-note-seconds", "controls": "--controls"}


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, metavar="FILE.sess", help=checkpoint_choice.HELP)
    p.add_argument("--prompt", default=None, help="a MIDI file to continue (default: start from nothing)")
    p.add_argument("--prompt-seconds", type=_positive_float, default=None,
                   help="use only the first N seconds of the prompt")
    p.add_argument("--length", type=int, default=None,
                   help="at most this many new events (default: 1000; with --seconds, a bound the densest "
                        "piano would not reach, 120 events per second plus one second)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=_positive_float, default=None,
                        help="stop once this many seconds of new music exist (default: no limit but --length)")
    length.add_argument("--bars", type=_positive_float, default=None,
                        help="as --seconds, in bars at the prompt's tempo and time signature where it ends "
                             "(MIDI's 120 bpm, 4/4 where it names none)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="above 1 bolder, below 1 safer; > 0 (default: 1.0, the pipeline's)")
    p.add_argument("--top-k", type=int, default=0,
                   help="sample among the k most likely events (0 = off) (default: 0)")
    # the pipeline's generate.top_p (tests/test_cli_args.py keeps the two equal)
    p.add_argument("--top-p", type=float, default=0.95,
                   help="nucleus sampling mass in (0, 1], 1 = off (default: 0.95, the pipeline's)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely event (no sampling)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1 = off) (default: 1)")
    p.add_argument("--num-latents", type=int, default=None,
                   help="Perceiver AR: how many of the prompt's last events start as latents "
                        "(default: 1, the pipeline's)")
    p.add_argument("--latent-block", type=int, default=None,
                   help="Perceiver AR: once the latents are full, how many move into the prefix at once; "
                        "larger is faster past the window, 1 is perceiver-io's schedule (default: the "
                        "pipeline's generate.model_kwargs)")
    p.add_argument("--seed", type=int, default=None,
                   help="makes a take again; left out, one is drawn and printed (default: drawn)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (batch-1 decoding is fastest on 1; 0 = all) (default: 1)")
    p.add_argument("--out", default=None,
                   help="MIDI file (.mid) for the continuation alone (needed unless --full, --wav or --png)")
    p.add_argument("--full", default=None, help="MIDI file for prompt + continuation")
    p.add_argument("--wav", default=None, help="WAV of prompt + continuation (needs libfluidsynth)")
    p.add_argument("--png", default=None, help="piano roll of prompt + continuation, boundary marked")
    p.add_argument("--soundfont", default=None, help="an .sf2 file (default: pretty_midi's TimGM6mb.sf2)")
    add_rule_arguments(p)


SUFFIXES = {"out": (".mid", ".midi"), "full": (".mid", ".midi"), "wav": (".wav",), "png": (".png",)}


def check_generate_args(args: argparse.Namespace) -> None:
    """Refuse impossible values and mismatched file suffixes in one line naming the flag (UserError)."""
    from amadeus.errors import UserError

    if getattr(args, "num_latents", None) is not None and args.num_latents < 1:
        raise UserError(f"--num-latents: {args.num_latents} is not allowed; use 1 or more")
    if getattr(args, "latent_block", None) is not None and args.latent_block < 1:
        raise UserError(f"--latent-block: {args.latent_block} is not allowed; use 1 or more")
    if args.length is not None and args.length < 1:
        raise UserError(f"--length: {args.length} is not allowed; give at least 1 event (or use --seconds)")
    if args.temperature <= 0:
        raise UserError(f"--temperature: {args.temperature} is not allowed; use a number > 0 "
                        "(for no sampling at all, use --greedy)")
    if args.top_k < 0:
        raise UserError(f"--top-k: {args.top_k} is not allowed; use 0 (off) or more")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p: {args.top_p} is not allowed; use a number in (0, 1] (1 = off)")
    if args.num_beams < 1:
        raise UserError(f"--num-beams: {args.num_beams} is not allowed; use 1 (off) or more")
    outputs = [flag for flag in SUFFIXES if getattr(args, flag, None)]
    if not outputs:
        raise UserError("nothing to write: give --out x.mid (or --full, --wav, --png)")
    for flag in outputs:
        path = str(getattr(args, flag))
        if not path.lower().endswith(SUFFIXES[flag]):
            raise UserError(f"--{flag}: {path} does not end in {' or '.join(SUFFIXES[flag])}; --{flag} writes "
                            f"{'a WAV' if flag == 'wav' else 'a PNG' if flag == 'png' else 'MIDI'} "
                            "(use --out x.mid, --full x.mid, --wav x.wav, --png x.png)")


def add_rule_arguments(p: argparse.ArgumentParser) -> None:
    """The playing-rule flags (amadeus generate and amadeus live)."""
    rules = p.add_argument_group("playing rules", "what the continuation may play; the sampler never writes an "
                                 "event the decoder would drop, with or without these")
    rule = rules.add_argument
    rule("--key", default=None, metavar="KEY",
         help="play in this key: 'F# major', 'Bb minor', 'C', or 'auto' (estimated from the prompt) (default: any)")
    rule("--key-strength", default="lock", metavar="lock|PENALTY",
         help="'lock': never an out-of-key note; a number: a logit penalty for them (default: lock)")
    rule("--lowest", default=None, metavar="NOTE",
         help="lowest note, a MIDI number or name: C2, F#3, 36 (C4 = 60) (default: none)")
    rule("--highest", default=None, metavar="NOTE", help="highest note, as --lowest (default: none)")
    rule("--max-polyphony", default=None, metavar="N", help="at most this many notes at once (default: none)")
    rule("--velocity-range", default=None, metavar="LOW-HIGH",
         help="MIDI velocities to play between, e.g. 40-100 (default: 1-127)")
    rule("--max-silence", default=None, metavar="SECONDS", help="longest rest, seconds (default: none)")
    rule("--max-note-seconds", default=None, metavar="SECONDS",
         help="longest note, seconds (default: the decoder's cap, 5 s)")
    rule("--controls", default="prompt", metavar="prompt|none",
         help="conditional Performance RNN: 'prompt' (pitch classes and note density of the prompt) or 'none' "
              "(default: prompt)")
