"""Live mode: play a phrase on a MIDI keyboard, hear the model continue it, play again.

    amadeus live --checkpoint save/performance_rnn.int8.sess --in "Digital Piano" --out "Digital Piano"
    amadeus live --checkpoint save/performance_rnn.int8.sess --input-file phrase.mid --synth

The `amadeus live` command: its options, and `run`, which opens the ports, loads the model and runs
the session until Ctrl-C (or until the `--input-file` has been played `--repeat` times).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from amadeus.errors import UserError, main_entry
from amadeus.generation_args import add_rule_arguments
from amadeus.live.config import LiveConfig
from amadeus.live.players import file_player, midi_file_messages
from amadeus.live.ports import (
    Backend,
    MemoryBackend,
    MemoryOutput,
    MidoBackend,
    OutputPort,
    SynthOutput,
    list_ports,
    pick_port,
)
from amadeus.live.session import LiveSession
from amadeus.live.stream import Codec

if TYPE_CHECKING:
    from amadeus.live.turn import Turn


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `amadeus live` (argparse only: building the parser must not import torch)."""
    p.add_argument("--checkpoint", help="a .sess or .int8.sess file (any model family)")
    p.add_argument("--in", dest="in_port", default=None, metavar="PORT",
                   help="MIDI input port, full name or a unique part (default: the first)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", dest="out_port", default=None, metavar="PORT",
                     help="MIDI output port (default: the first); 'null' discards the answer (with --record)")
    out.add_argument("--synth", action="store_true", help="play the answer through fluidsynth to the sound card")
    p.add_argument("--soundfont", default=None, help="an .sf2 file for --synth (default: pretty_midi's)")
    p.add_argument("--driver", default=None, help="fluidsynth audio driver for --synth (alsa, pulseaudio, ...)")
    p.add_argument("--silence", type=float, default=800.0, metavar="MS",
                   help="hand over after all keys and the sustain pedal are up this long (default 800 ms)")
    p.add_argument("--handover", default="silence", metavar="{silence,cc67,ccN}",
                   help="'silence' (default), or a controller whose press hands over, e.g. cc67 (soft pedal)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each answer (default 10 s)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely events (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--channel", type=int, default=1, help="MIDI channel of the answer, 1..16 (default 1)")
    p.add_argument("--input-file", default=None, metavar="PHRASE.MID",
                   help="play this file into the session as if a player played it (no keyboard needed)")
    p.add_argument("--input-speed", type=float, default=1.0,
                   help="speed of --input-file playback (1 = real time)")
    p.add_argument("--repeat", type=int, default=1, help="with --input-file: play it this many times, then end")
    p.add_argument("--echo", action="store_true", help="also send the player's notes to the output")
    p.add_argument("--no-barge-in", dest="barge_in", action="store_false",
                   help="keys played during an answer do not interrupt it")
    p.add_argument("--record", default=None, metavar="DIR", help="save each phrase and answer as MIDI here")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: best for batch 1)")
    p.add_argument("--list-ports", action="store_true", help="list MIDI input and output ports and exit")

    add_rule_arguments(p)


def config_from_args(args: argparse.Namespace) -> LiveConfig:
    if not 1 <= args.channel <= 16:
        raise UserError(f"live: --channel must be 1..16, got {args.channel}")
    from amadeus.generation import rules_from_args

    return LiveConfig(silence=args.silence / 1000.0, handover=args.handover, seconds=args.seconds,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                      channel=args.channel - 1, echo=args.echo, barge_in=args.barge_in,
                      rules=rules_from_args(args))


def run(args: argparse.Namespace, backend: Backend | None = None) -> list[Turn]:
    """`amadeus live`: open the ports, load the model, run the session until Ctrl-C (or the file ends)."""
    backend = backend if backend is not None else MidoBackend()
    if args.list_ports:
        print(list_ports(backend))
        return []
    if not args.checkpoint:
        raise UserError("live: --checkpoint is required (e.g. save/performance_rnn.int8.sess)")
    if args.repeat < 1 or not args.input_speed > 0:
        raise UserError("live: --repeat must be >= 1 and --input-speed > 0")
    config = config_from_args(args)
    messages = midi_file_messages(args.input_file) if args.input_file else None
    if messages is None:
        pick_port(backend.list_inputs(), args.in_port, "input")  # no keyboard: say so before loading a model

    out: OutputPort
    if args.synth:
        out = SynthOutput(args.soundfont, args.driver)
    elif args.out_port == "null":
        out = MemoryOutput()
    else:
        out = backend.open_output(args.out_port)
    in_port = None
    session: LiveSession | None = None
    turns: list[Turn] = []
    try:
        import torch

        from amadeus.generation import load

        torch.set_num_threads(max(1, args.threads))
        loaded = load(args.checkpoint)
        session = LiveSession(loaded.model, Codec(loaded.flavour), out, config, record_dir=args.record, log=print)
        if messages is not None:
            in_port = MemoryBackend().open_input(None, session.on_message)
            file_player(session, in_port, messages, args.repeat, args.input_speed)
            print(f"playing {args.input_file} into the session ({loaded.family}, {loaded.precision}); Ctrl-C ends")
        else:
            in_port = backend.open_input(args.in_port, session.on_message)
            how = (f"a silence of {args.silence:g} ms" if config.handover_cc is None
                   else f"controller {config.handover_cc} pressed")
            print(f"listening ({loaded.family}, {loaded.precision}); the model answers after {how}; Ctrl-C ends")
        turns = session.run()
    except KeyboardInterrupt:
        turns = session.turns if session is not None else []
        print("stopped: all notes off")
    finally:
        if session is not None:
            session.close()  # note-offs for sounding notes, CC123, CC64 = 0
        if in_port is not None:
            in_port.close()
        out.close()
    if args.record and turns:
        print(f"recorded {len(turns)} turn(s) in {args.record}")
    return turns


@main_entry
def main(argv: Sequence[str] | None = None) -> None:
    """Stand-alone entry (the project's CLI calls add_arguments/run)."""
    parser = argparse.ArgumentParser(prog="amadeus live", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
