"""Generation at the level of MIDI: a prompt performance in, its continuation out.

    from amadeus.generation import continue_midi
    out = continue_midi("save/performance_rnn.sess", "prompt.mid", seconds=20, top_p=0.95, seed=0)
    out["continuation"].write("continuation.mid")

The prompt is encoded with the checkpoint's codec flavour, the model continues it directly from the
state the prompt left (the seed project restarted from a start event after the prompt; we do not), and
the new events are decoded back to a PrettyMIDI that starts at 0 s. `full` is prompt and continuation
decoded as one event stream, so notes still held when the prompt ends are released where the model
says and the continuation starts exactly where the prompt's time ends.

Sampling follows `rules` (amadeus.playing_rules: key, register, polyphony, velocity range, rests,
note length, controls). Even with none given, the sampler knows what is sounding and never writes
an event the decoder would drop (amadeus.performance_state); `rules=None` samples the raw model.
After generation, `warnings` names a continuation that loops, goes silent or stops short.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mido
import numpy as np
import pretty_midi
import torch

from amadeus import checkpoint_choice, prompt_passthrough
from amadeus.codec import CodecConfig
from amadeus.continuation_checks import continuation_warnings, event_cap
from amadeus.errors import UserError
from amadeus.hardware import resolve_device
from amadeus.playing_rules import AUTO_KEY, DEFAULT_RULES, PlayingRules, RuleError
from amadeus.sampling import generate
from amadeus.vocab import VELOCITY, VOCAB_SIZE, cut_seconds, event_seconds, strip_pad

DEFAULT_FLAVOUR = "magenta"
MidiLike = pretty_midi.PrettyMIDI | str | os.PathLike


# --- codec bridge --------------------------------------------------------------------------------

def encode_midi(midi: MidiLike, flavour: str = DEFAULT_FLAVOUR) -> np.ndarray:
    """Event ids of a PrettyMIDI or a MIDI file, with the given codec flavour."""
    from amadeus import codec

    if not isinstance(midi, pretty_midi.PrettyMIDI) and not Path(midi).is_file():
        raise UserError(f"{midi}: prompt MIDI file not found")
    return np.asarray(codec.encode(midi, flavour=flavour), dtype=np.int64)


def decode_ids(ids: np.ndarray | torch.Tensor, flavour: str = DEFAULT_FLAVOUR,
               max_note_seconds: float = 5.0) -> pretty_midi.PrettyMIDI:
    """A PrettyMIDI (one piano) from event ids; PAD is dropped, notes left open close after max_note_seconds."""
    from amadeus import codec

    return codec.decode(strip_pad(ids), flavour=flavour, max_note_seconds=max_note_seconds)


def velocity_in_force(ids: np.ndarray) -> np.ndarray:
    """The last velocity event of `ids` (as a 1-id array; empty if none): prepended to a continuation
    decoded alone, its first notes keep the loudness they have after the prompt."""
    ids = np.asarray(ids, dtype=np.int64)
    velocity = np.flatnonzero((ids >= VELOCITY) & (ids < VOCAB_SIZE))
    return ids[velocity[-1:]]


# --- models --------------------------------------------------------------------------------------

@dataclass
class Loaded:
    """A model in eval mode with what generation needs to know about it."""

    model: torch.nn.Module
    family: str
    flavour: str
    precision: str


def load(model_or_checkpoint: torch.nn.Module | str | os.PathLike | Loaded, device: str = "cpu",
         flavour: str | None = None) -> Loaded:
    """A model ready to generate, with the codec flavour its ids use (from the checkpoint if a path)."""
    if isinstance(model_or_checkpoint, Loaded):
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, torch.nn.Module):
        model = model_or_checkpoint
        return Loaded(model, getattr(model, "family", type(model).__name__), flavour or DEFAULT_FLAVOUR, "fp32")
    from amadeus.checkpoint import load_model

    device = resolve_device(device) if isinstance(device, str) else device
    path = Path(model_or_checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found (train one with `dvc repro`, or pass a .sess file)")
    model, ckpt = load_model(path, device)
    model.eval()
    ckpt_flavour = (ckpt.get("codec") or {}).get("flavour", DEFAULT_FLAVOUR)
    return Loaded(model, ckpt.get("family", getattr(model, "family", "?")), flavour or ckpt_flavour,
                  ckpt.get("precision", "fp32"))


# --- the MIDI-level API --------------------------------------------------------------------------

def continue_midi(model_or_checkpoint: torch.nn.Module | str | os.PathLike | Loaded,
                  prompt: MidiLike | None = None, *, max_new_tokens: int | None = None,
                  seconds: float | None = None,
                  do_sample: bool = True, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  num_beams: int = 1, seed: int | None = None, prompt_seconds: float | None = None,
                  model_kwargs: Mapping[str, Any] | None = None, flavour: str | None = None,
                  device: str = "cpu", render_wav: bool = False, soundfont: str | os.PathLike | None = None,
                  sample_rate: int = 44100, return_full: bool = False,
                  prompt_ids: np.ndarray | None = None, max_note_seconds: float = 5.0,
                  rules: PlayingRules | None = DEFAULT_RULES,
                  prompt_midi: MidiLike | None = None) -> dict[str, Any]:
    """Continue a MIDI performance (or start one when `prompt` is None) and return it as PrettyMIDI.

    Length: stop once `seconds` of new music exist (if given), and after at most `max_new_tokens`
    events; left out, that is 1000, or with `seconds` a safety bound that the densest real piano
    would not reach (`continuation_checks.event_cap`), so the seconds asked for are what you get.
    `prompt_seconds` keeps only the first that many seconds of the prompt; `prompt_ids` gives the
    prompt as event ids instead of MIDI (already in the model's flavour), and `prompt_midi` then the
    MIDI they came from, for `full`. Sampling arguments mean
    what they mean in Hugging Face (see `amadeus.sampling.generate`), but sampling is on by default
    here because greedy decoding of music falls into loops. `rules`: the musician's rules (module
    docstring); `max_note_seconds`: the decoder's note cap (codec), which the sampler also keeps.

    Returns a dict: `continuation` (PrettyMIDI from 0 s), `ids` (new event ids), `prompt_ids`,
    `boundary_seconds` (where the continuation starts in `full`), `seconds` (of new music),
    `tokens`, `compute_seconds`, `warnings` (one line per problem: loops, silence, stopping short),
    `family` and `precision` of the model, `key` (the key the rules imposed, e.g. the estimate for
    key "auto"; None without one),
    `discarded` (events of the continuation the decoder does not take as written, by kind, from
    amadeus.music_stats); `full` (prompt then continuation, PrettyMIDI) when `return_full`, and
    `full_midi` (the same as a mido.MidiFile, to save as it is); `wav` (bytes of a 16-bit 44.1 kHz
    WAV, of `full` when `return_full`, else of the continuation) when `render_wav`.

    A prompt given as MIDI comes back in `full` as it was played (amadeus.prompt_passthrough: its
    own velocities, pedal messages, tempo and time signature), the continuation after it; a prompt
    given only as ids is decoded with the continuation as one event stream.
    """
    from amadeus.music_stats import discarded_events
    from amadeus.performance_state import prompt_key

    loaded = load(model_or_checkpoint, device, flavour)
    if prompt is not None and prompt_ids is not None:
        raise UserError("continue_midi: give the prompt as MIDI or as prompt_ids, not both")
    if prompt is not None:
        prompt_ids = encode_midi(prompt, loaded.flavour)
        prompt_midi = prompt
    prompt_ids = np.zeros(0, dtype=np.int64) if prompt_ids is None else np.asarray(prompt_ids, dtype=np.int64)
    if prompt_seconds is not None:
        prompt_ids = cut_seconds(prompt_ids, prompt_seconds)
    if render_wav:  # fail before the model runs, not after
        from amadeus.render import ensure_fluidsynth

        ensure_fluidsynth()
    if max_new_tokens is None:
        max_new_tokens = event_cap(seconds)
    warnings: list[str] = []
    key = None
    if rules is not None and rules.key is not None:
        key = prompt_key(prompt_ids, rules, max_note_seconds)
        if key is None:
            warnings.append("key auto: the prompt has no notes to estimate a key from; no key was imposed")
    start = time.perf_counter()
    out = generate(loaded.model, torch.as_tensor(prompt_ids)[None], max_new_tokens, do_sample=do_sample,
                   temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams, seed=seed,
                   max_seconds=seconds, model_kwargs=model_kwargs, rules=rules,
                   codec=CodecConfig(flavour=loaded.flavour, max_note_seconds=max_note_seconds))
    compute = time.perf_counter() - start
    new = strip_pad(out[0, len(prompt_ids):].cpu().numpy())
    warnings += continuation_warnings(new, prompt_ids, seconds=seconds, max_new_tokens=max_new_tokens,
                                      max_note_seconds=max_note_seconds, flavour=loaded.flavour)
    result: dict[str, Any] = {
        # the velocity the prompt left in force plays the continuation's first notes, as in `full`
        "continuation": decode_ids(np.concatenate([velocity_in_force(prompt_ids), new]), loaded.flavour,
                                   max_note_seconds),
        "ids": new,
        "prompt_ids": prompt_ids,
        "boundary_seconds": event_seconds(prompt_ids),
        "seconds": event_seconds(new),
        "tokens": int(new.size),
        "compute_seconds": compute,
        "warnings": warnings,
        "key": None if key is None else key.name,
        "family": loaded.family,
        "precision": loaded.precision,
        "discarded": discarded_events(np.concatenate([prompt_ids, new]), max_note_seconds,
                                      count_from=len(prompt_ids)),
    }
    if return_full:
        decoded = decode_ids(np.concatenate([prompt_ids, new]), loaded.flavour, max_note_seconds)
        if prompt_midi is None:
            result["full"] = decoded
            result["full_midi"] = None
        else:
            result["full_midi"] = _passthrough(prompt_midi, result["continuation"], decoded,
                                               result["boundary_seconds"], prompt_seconds)
            result["full"] = prompt_passthrough.to_pretty_midi(result["full_midi"])
    if render_wav:
        result["wav"] = wav_bytes(result["full"] if return_full else result["continuation"], soundfont,
                                  sample_rate)
    return result


def _passthrough(prompt: MidiLike, continuation: pretty_midi.PrettyMIDI, decoded: pretty_midi.PrettyMIDI,
                 boundary: float, prompt_seconds: float | None) -> Any:
    """The prompt's own messages then the continuation (a mido.MidiFile); keys held across a
    --prompt-seconds cut end where the jointly decoded stream ends them."""
    original = prompt_passthrough.read_prompt(prompt)
    cut = prompt_seconds if prompt_seconds is not None and \
        prompt_passthrough.last_sound_seconds(original) > prompt_seconds else None
    held = {n.pitch: n.end for inst in decoded.instruments for n in inst.notes
            if n.start < boundary <= n.end} if cut is not None else None
    return prompt_passthrough.join(original, continuation, boundary, cut_seconds=cut, held_ends=held)


def wav_bytes(midi: pretty_midi.PrettyMIDI, soundfont: str | os.PathLike | None = None,
              sample_rate: int = 44100) -> bytes:
    """WAV bytes through the render module (which checks for the fluidsynth library)."""
    from amadeus import render

    return render.wav_bytes(midi, soundfont=soundfont, sample_rate=sample_rate)


# --- `amadeus generate` --------------------------------------------------------------------------

def generate_cli(args: Any) -> dict[str, Any]:
    """`amadeus generate`: continue --prompt (or start fresh) and write --out, and --wav/--png/--full if given.

    --out holds the continuation alone (as the seed project wrote it); --full, --wav and --png hold the
    prompt followed by the continuation, with the boundary marked on the piano roll.
    """
    from amadeus.fileio import atomic_open
    from amadeus.generation_args import check_generate_args

    check_generate_args(args)
    checkpoint, by_default = checkpoint_choice.find_checkpoint(args.checkpoint, "generate")
    if by_default:
        print(f"checkpoint: {checkpoint} (the pipeline's; --checkpoint picks another)")
    model_kwargs = {key: getattr(args, key) for key in ("num_latents", "latent_block")
                    if getattr(args, key, None)} or None
    if getattr(args, "threads", 0):
        # Batch-1 decoding: more threads only add synchronisation (and collapse under load).
        torch.set_num_threads(args.threads)
    if args.wav:  # fail before the model runs, not after
        from amadeus.render import ensure_fluidsynth

        ensure_fluidsynth()
    rules = rules_from_args(args)
    seed = args.seed
    if seed is None and not args.greedy:  # a take one likes can be made again
        seed = int.from_bytes(os.urandom(4), "little") % 1_000_000
        print(f"seed {seed} (pass --seed {seed} to make this take again)")
    seconds = args.seconds if getattr(args, "bars", None) is None else bars_to_seconds(args)
    result = continue_midi(checkpoint, args.prompt, max_new_tokens=args.length, seconds=seconds,
                           do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, num_beams=args.num_beams, seed=seed,
                           prompt_seconds=args.prompt_seconds, model_kwargs=model_kwargs, device=args.device,
                           return_full=True, rules=rules)
    written = [_write_midi(result["continuation"], args.out, atomic_open)] if args.out else []
    if args.full:
        if result["full_midi"] is not None:  # the prompt's own messages, saved as they are
            from amadeus.fileio import write_bytes

            write_bytes(args.full, prompt_passthrough.midi_bytes(result["full_midi"]))
            written.append(str(args.full))
        else:
            written.append(_write_midi(result["full"], args.full, atomic_open))
    if args.wav:
        from amadeus.render import render_wav

        render_wav(result["full"], args.wav, soundfont=args.soundfont)
        written.append(str(args.wav))
    if args.png:
        from amadeus.render import piano_roll_png

        boundary = result["boundary_seconds"] if args.prompt else None
        settings = "greedy" if args.greedy else f"temperature {args.temperature}, top-p {args.top_p}, " \
            f"top-k {args.top_k}"
        title = f"{result['family']} {result['precision']} ({checkpoint.name}), seed {seed}, {settings}"
        piano_roll_png(result["full"], args.png, boundary_seconds=boundary, title=title)
        written.append(str(args.png))
    rate = result["tokens"] / max(result["compute_seconds"], 1e-9)
    key = f" in {result['key']}" + (" (estimated from the prompt)" if rules.key == AUTO_KEY else "") \
        if result["key"] else ""
    print(f"{result['tokens']} events, {result['seconds']:.1f} s of music{key} in {result['compute_seconds']:.1f} s "
          f"({rate:.0f} events/s); wrote {', '.join(written)}")
    for line in result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    return result


def bars_to_seconds(args: Any) -> float:
    """--bars as seconds: bars of the meter and tempo in force where the prompt ends (said in one line)."""
    if args.prompt is None:
        midi, at, where = mido.MidiFile(), 0.0, "no prompt: MIDI's defaults"
    else:
        from amadeus import codec

        codec.read_midi(args.prompt)  # the bounds and checks of every MIDI reader: one line on a bad file
        midi = prompt_passthrough.read_prompt(args.prompt)
        at = prompt_passthrough.last_sound_seconds(midi)
        if args.prompt_seconds is not None:
            at = min(at, args.prompt_seconds)
        where = f"the prompt's meter at {at:.1f} s"
    per_bar, meter = prompt_passthrough.bar_seconds(midi, at)
    seconds = args.bars * per_bar
    print(f"{args.bars:g} bars of {meter} ({where}) = {seconds:.2f} s")
    return seconds


def rules_from_args(args: Any) -> PlayingRules:
    """PlayingRules from the flags of `amadeus generate`; a bad value is a UserError naming its flag."""
    from amadeus.generation_args import RULE_FLAGS

    values = {field: getattr(args, field.replace("-", "_"), None) for field in RULE_FLAGS}
    text = getattr(args, "velocity_range", None)
    if text is not None:
        low, sep, high = str(text).partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise UserError(f"--velocity-range: {text!r} is not allowed; use LOW-HIGH, MIDI velocities 1..127 "
                            "(e.g. 40-100)")
        values["velocity_low"], values["velocity_high"] = int(low), int(high)
    given = {field: value for field, value in values.items() if value is not None}
    try:
        return PlayingRules(**given)
    except RuleError as e:
        flag = RULE_FLAGS.get(e.field, e.field)
        raise e.named(flag) from None


def _write_midi(midi: pretty_midi.PrettyMIDI, path: str | os.PathLike, atomic_open: Any) -> str:
    with atomic_open(path, "wb") as f:
        midi.write(f)
    return str(path)
