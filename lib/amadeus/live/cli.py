"""Live mode: play a phrase on a MIDI keyboard, hear the model continue it, play again.

    amadeus live --in "Digital Piano" --out "Digital Piano"
    amadeus live --checkpoint save/performance_rnn.int8.sess --input-file phrase.mid --out null
    amadeus live --input-file phrase.mid --out answer.mid --record takes/

The `amadeus live` command: its options, and `run`, which opens the ports, loads the model and runs
the session until Ctrl-C or SIGTERM (or until the `--input-file` has been played `--repeat` times).

Shutdown: the session runs on a thread of its own; the main thread only waits, and a signal only
asks the session to stop (no exception is raised in the middle of its work). The session ends the
answer, joins its scheduler, sends all notes off and saves the takes (a phrase in progress too); then
the input port is closed, the file player joined and the output closed, so no thread is left running
when the interpreter exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amadeus import checkpoint_choice
from amadeus.errors import UserError, main_entry
from amadeus.generation_args import add_rule_arguments
from amadeus.live.config import DEFAULT_TAKES, LiveConfig
from amadeus.live.players import file_player, midi_file_messages
from amadeus.live.ports import (
    Backend,
    FileOutput,
    MemoryBackend,
    MemoryOutput,
    MidoBackend,
    OutputPort,
    SynthOutput,
    list_ports,
    pick_port,
)
from amadeus.live.stream import Codec

if TYPE_CHECKING:
    from amadeus.live.session import LiveSession
    from amadeus.live.turn import Turn
    from amadeus.take import TakeWriter

SHUTDOWN_SECONDS = 120.0  # the longest the session may take to end (it renders the last takes' WAVs)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `amadeus live` (argparse only: building the parser must not import torch)."""
    p.add_argument("--checkpoint", default=None, metavar="FILE.sess", help=checkpoint_choice.HELP)
    p.add_argument("--in", dest="in_port", default=None, metavar="PORT",
                   help="MIDI input port, full name or a unique part (default: the first)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", dest="out_port", default=None, metavar="PORT",
                     help="MIDI output port (default: the first; with --input-file and no MIDI output, 'null'); "
                          "'null' plays the answer nowhere (the takes are recorded); FILE.mid writes what "
                          "is sent, with its timing, to that file")
    out.add_argument("--synth", action="store_true", help="play the answer through fluidsynth to the sound card")
    p.add_argument("--soundfont", default=None, help="an .sf2 file for --synth and the takes' WAVs "
                   "(default: pretty_midi's)")
    p.add_argument("--driver", default=None, help="fluidsynth audio driver for --synth (alsa, pulseaudio, ...)")
    p.add_argument("--silence", type=float, default=800.0, metavar="MS",
                   help="hand over after all keys and the sustain pedal are up this long (default 800 ms)")
    p.add_argument("--handover", default="silence", metavar="{silence,cc67,ccN}",
                   help="'silence' (default), or a controller whose press hands over, e.g. cc67 (soft pedal)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each answer (default 10 s)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=LiveConfig.top_k,
                   help="sample among the k most likely events (0 = off) (default 0)")
    p.add_argument("--top-p", type=float, default=LiveConfig.top_p,
                   help="nucleus sampling mass in (0, 1], 1 = off (default 0.95, the pipeline's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and printed)")
    p.add_argument("--channel", type=int, default=1, help="MIDI channel of the answer, 1..16 (default 1)")
    p.add_argument("--input-file", default=None, metavar="PHRASE.MID",
                   help="play this file into the session as if a player played it (no keyboard needed)")
    p.add_argument("--input-speed", type=float, default=1.0,
                   help="speed of --input-file playback (1 = real time, the default)")
    p.add_argument("--repeat", type=int, default=1,
                   help="with --input-file: play it this many times, then end (default 1)")
    p.add_argument("--echo", action="store_true", help="also send the player's notes to the output")
    p.add_argument("--no-barge-in", dest="barge_in", action="store_false",
                   help="keys played during an answer do not interrupt it")
    p.add_argument("--record", default=None, metavar="DIR",
                   help="save each take here: take-NNN.mid (phrase and answer, two tracks), .wav and .png "
                        f"(default with --out null: {DEFAULT_TAKES}/)")
    p.add_argument("--no-render", dest="render", action="store_false",
                   help="with --record: save the takes' MIDI files only (no WAV, no piano roll)")
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


def is_midi_path(name: str) -> bool:
    return Path(name).suffix.lower() in (".mid", ".midi")


def open_output(args: argparse.Namespace, backend: Backend, from_file: bool) -> tuple[OutputPort, str, bool]:
    """(port, where the answer goes in words, whether it is kept nowhere: the null port)."""
    if args.synth:
        return SynthOutput(args.soundfont, args.driver), "fluidsynth, to the sound card", False
    if args.out_port == "null":
        return MemoryOutput(), "the null port (heard nowhere)", True
    if args.out_port is not None and is_midi_path(args.out_port):
        return FileOutput(args.out_port), f"the file {args.out_port} (written when the session ends)", False
    if args.out_port is None and from_file:
        try:
            names = backend.list_outputs()
        except UserError:
            names = []
        if not names:
            return MemoryOutput(), "the null port (this machine has no MIDI output)", True
    port = backend.open_output(args.out_port)
    return port, f"MIDI port {getattr(port, 'name', args.out_port or 'default')!r}", False


class _Signals:
    """SIGINT and SIGTERM: before the session runs they interrupt (KeyboardInterrupt, exit 130); while
    it runs they only ask it to stop, so no exception lands inside its work or a lock."""

    def __init__(self) -> None:
        self.session: LiveSession | None = None
        self.received: int | None = None
        self._saved: dict[int, Any] = {}

    def __call__(self, signum: int, frame: object) -> None:
        if self.session is None:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
            self.session.stop()  # sets events and notifies: the main thread holds none of their locks

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread may
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self)
        try:
            yield self
        finally:
            for sig, handler in self._saved.items():
                signal.signal(sig, handler)  # exactly as found: a library call leaves no handler behind


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_command(args: argparse.Namespace) -> list[Turn]:
    """`run` for a command: a SIGTERM before or after the session (loading the model, saving the last take)
    also ends it as Ctrl-C does (exit 130 through errors.main_entry), never killed half-way."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return run(args)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run(args: argparse.Namespace, backend: Backend | None = None) -> list[Turn]:
    """`amadeus live`: open the ports, load the model, run the session until a signal (or the file ends)."""
    backend = backend if backend is not None else MidoBackend()
    if args.list_ports:
        print(list_ports(backend))
        return []
    if args.repeat < 1 or not args.input_speed > 0:
        raise UserError("live: --repeat must be >= 1 and --input-speed > 0")
    config = config_from_args(args)
    checkpoint, by_default = checkpoint_choice.find_checkpoint(args.checkpoint, "live")
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: checkpoint not found (train one with `dvc repro`, or pass a .sess file)")
    messages = midi_file_messages(args.input_file) if args.input_file else None
    if messages is None:
        pick_port(backend.list_inputs(), args.in_port, "input")  # no keyboard: say so before loading a model

    with _Signals().installed() as signals:
        out, where, unheard = open_output(args, backend, messages is not None)
        try:
            record = args.record or (DEFAULT_TAKES if unheard else None)
            recorder = _recorder(args, record, messages is not None) if record else None  # fails before turn 1
            saved = f"; takes saved in {record}/" if record else ""
            print(f"answer: {where}{saved}")
            if by_default:
                print(f"checkpoint: {checkpoint} (the pipeline's; --checkpoint picks another)")
            return _run_session(args, config, checkpoint, messages, backend, out, recorder, signals)
        finally:
            out.close()


def _recorder(args: argparse.Namespace, folder: str, from_file: bool) -> TakeWriter:
    from amadeus.prompt_passthrough import read_prompt
    from amadeus.take import TakeWriter

    source = read_prompt(args.input_file) if from_file else None
    return TakeWriter(folder, source=source, speed=args.input_speed, wav=args.render, png=args.render,
                      soundfont=args.soundfont, log=print)


def _run_session(args: argparse.Namespace, config: LiveConfig, checkpoint: Path,
                 messages: list | None, backend: Backend, out: OutputPort, recorder: TakeWriter | None,
                 signals: _Signals) -> list[Turn]:
    import torch

    from amadeus.generation import load
    from amadeus.live.session import LiveSession

    torch.set_num_threads(max(1, args.threads))
    loaded = load(checkpoint)
    session = LiveSession(loaded.model, Codec(loaded.flavour), out, config, recorder=recorder, log=print)
    failure: list[BaseException] = []

    def body() -> None:
        try:
            session.run()
        except BaseException as e:  # handed to the main thread, which reports it
            failure.append(e)

    thread = threading.Thread(target=body, name="amadeus-live-session", daemon=True)
    signals.session = session
    in_port = player = None
    try:
        if config.handover_cc is None:
            print(f"the model answers after a silence of {args.silence:g} ms")
        else:
            print(f"the model answers when controller {config.handover_cc} is pressed (>= 64); it waits for it")
        if messages is not None:
            in_port = MemoryBackend().open_input(None, session.on_message)
            player = file_player(session, in_port, messages, args.repeat, args.input_speed)
            ready = f"playing {args.input_file} into the session ({loaded.family}, {loaded.precision}); Ctrl-C ends"
        else:
            in_port = backend.open_input(args.in_port, session.on_message)
            ready = f"listening ({loaded.family}, {loaded.precision}); play a phrase; Ctrl-C ends"
        thread.start()
        told = False
        while thread.is_alive():
            if not told and session.listening.is_set():  # warmed up: the first phrase is heard from now
                print(ready)
                told = True
            time.sleep(0.02)  # signals run their handler here, between sleeps, holding no lock
    finally:
        signals.session = session  # a signal from here on only asks to stop
        session.stop()
        if in_port is not None:
            in_port.close()  # no more input (rtmidi: its callback is cancelled before the port closes)
        if thread.ident is not None:
            thread.join(SHUTDOWN_SECONDS)
        if thread.is_alive():  # stuck: leave now rather than hang, or abort in the interpreter's exit
            print(f"live: the session did not end within {SHUTDOWN_SECONDS:g} s; exiting", flush=True)
            os._exit(1)
        session.close()  # already closed by run(); a session that never ran is silenced here
        if player is not None:
            player.join(5.0)
    if failure:
        raise failure[0]
    if signals.received is not None:
        name = "Ctrl-C" if signals.received == signal.SIGINT else signal.Signals(signals.received).name
        print(f"stopped by {name}: all notes off")
    if recorder is not None and recorder.saved:
        print(f"recorded {len(recorder.saved)} take(s) in {recorder.folder}")
    return session.turns


@main_entry
def main(argv: Sequence[str] | None = None) -> None:
    """Stand-alone entry (the project's CLI calls add_arguments/run)."""
    parser = argparse.ArgumentParser(prog="amadeus live", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run_command(parser.parse_args(argv))
