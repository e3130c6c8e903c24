"""MIDI ports for the live mode, behind one small interface so the session never touches a backend.

    backend.list_inputs() / list_outputs() -> [names]
    backend.open_input(name, callback)      -> port with .close(); callback(msg, t) runs for every message,
                                               t = time.monotonic() at arrival
    backend.open_output(name)               -> port with .send(msg) and .close()

Three implementations:
- `MidoBackend`: mido over python-rtmidi, for users with a keyboard / Disklavier / virtual port.
  Without a MIDI subsystem (no ALSA sequencer, as on CI) it raises one-line UserErrors.
- `MemoryBackend`: in-process loopback for tests and benchmarks: `feed(msg, t)` plays into the open
  input; outputs record `(monotonic send time, msg)` so timing can be measured. No sound card, no ALSA.
- `FileOutput`: `--out FILE.mid`, the loopback output that writes what it was sent to a MIDI file.
- `SynthOutput`: FluidSynth straight to the sound card (`--synth`), through `amadeus.render`.

Messages are `mido.Message` objects throughout (mido is a light pure-python dependency).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import mido

from amadeus.errors import UserError

Callback = Callable[[mido.Message, float], None]

# The MIDI controllers the live mode reads or sends.
SUSTAIN = 64  # the sustain pedal: down at values >= 64
ALL_NOTES_OFF = 123

NO_BACKEND_HINT = ("no MIDI backend: python-rtmidi cannot open the system MIDI service ({detail}); "
                   "on Linux load ALSA's sequencer (`sudo modprobe snd-seq`) or try it without a keyboard "
                   "with `--input-file phrase.mid --out null`")


class InputPort(Protocol):
    def close(self) -> None: ...


class OutputPort(Protocol):
    def send(self, msg: mido.Message) -> None: ...

    def close(self) -> None: ...


class Backend(Protocol):
    def list_inputs(self) -> list[str]: ...

    def list_outputs(self) -> list[str]: ...

    def open_input(self, name: str | None, callback: Callback) -> InputPort: ...

    def open_output(self, name: str | None) -> OutputPort: ...


# --------------------------------------------------------------------------------------------- in memory

class MemoryInput:
    """The input side of the loopback: whoever holds it calls `feed` as if a player pressed keys."""

    def __init__(self, callback: Callback):
        self.callback = callback
        self.closed = False

    def feed(self, msg: mido.Message, t: float | None = None) -> None:
        """Deliver `msg` stamped `t` (default: now). A past `t` replays a phrase "as if played then"."""
        if not self.closed:
            self.callback(msg, time.monotonic() if t is None else t)

    def close(self) -> None:
        self.closed = True


class MemoryOutput:
    """Records every message with the monotonic time it was sent; optional `listener(msg, t)` hook."""

    def __init__(self, listener: Callback | None = None):
        self.sent: list[tuple[float, mido.Message]] = []
        self.listener = listener
        self._lock = threading.Lock()
        self.closed = False

    def send(self, msg: mido.Message) -> None:
        t = time.monotonic()
        with self._lock:
            self.sent.append((t, msg))
        if self.listener is not None:
            self.listener(msg, t)

    def messages(self) -> list[tuple[float, mido.Message]]:
        with self._lock:
            return list(self.sent)

    def close(self) -> None:
        self.closed = True


class MemoryBackend:
    """Loopback ports living in this process: one named input and one named output."""

    def __init__(self, input_name: str = "memory in", output_name: str = "memory out"):
        self.input_name, self.output_name = input_name, output_name
        self.input: MemoryInput | None = None
        self.output: MemoryOutput | None = None

    def list_inputs(self) -> list[str]:
        return [self.input_name]

    def list_outputs(self) -> list[str]:
        return [self.output_name]

    def open_input(self, name: str | None, callback: Callback) -> MemoryInput:
        self.input = MemoryInput(callback)
        return self.input

    def open_output(self, name: str | None) -> MemoryOutput:
        self.output = MemoryOutput()
        return self.output


class FileOutput(MemoryOutput):
    """`--out FILE.mid`: what would be sent, each message at the time it left, written as a MIDI file
    when the port closes (so the all-notes-off at the end is in it too). The folder is checked first."""

    def __init__(self, path: str | os.PathLike):
        from amadeus.take import check_folder

        super().__init__()
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path}: --out must name a .mid file, and this is a folder")
        check_folder(self.path.parent, f"the folder of --out {self.path.name}")
        self.name = str(self.path)

    def midi(self) -> mido.MidiFile:
        """The messages sent so far, time 0 at the first, at 120 bpm and 960 ticks per beat."""
        sent = self.messages()
        track = mido.MidiTrack([mido.MetaMessage("track_name", name="amadeus live output", time=0)])
        start = sent[0][0] if sent else 0.0
        now = 0
        for t, msg in sent:
            tick = max(now, round((t - start) * 1e6 * 960 / 500000))
            track.append(msg.copy(time=tick - now))
            now = tick
        track.append(mido.MetaMessage("end_of_track", time=0))
        out = mido.MidiFile(type=1, ticks_per_beat=960)
        out.tracks.append(track)
        return out

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        from amadeus.fileio import write_bytes
        from amadeus.prompt_passthrough import midi_bytes

        write_bytes(self.path, midi_bytes(self.midi()))


# ----------------------------------------------------------------------------------------- mido/rtmidi

@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C library's own lines (ALSA prints "cannot open /dev/snd/seq") so the user sees ours."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def pick_port(names: list[str], wanted: str | None, kind: str) -> str:
    """The port named `wanted` (in full, or a unique case-insensitive part), or the first; else UserError."""
    if not names:
        raise UserError(f"no MIDI {kind} ports found: connect a keyboard (or start a virtual port) and check "
                        f"`amadeus live --list-ports`")
    if wanted is None:
        return names[0]
    if wanted in names:
        return wanted
    matches = [n for n in names if wanted.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    raise UserError(f"MIDI {kind} port {wanted!r} not found; available: {', '.join(repr(n) for n in names)}")


class MidoBackend:
    """mido + python-rtmidi. Port names may be given in full or as a unique case-insensitive part."""

    def __init__(self, api: str | None = None):
        self.backend_name = "mido.backends.rtmidi" + (f"/{api}" if api else "")

    def _backend(self):
        try:
            return mido.Backend(self.backend_name, load=True)
        except ImportError as e:
            raise UserError(f"python-rtmidi is not importable ({e}): run `make setup`") from None

    def _names(self, kind: str) -> list[str]:
        backend = self._backend()
        try:
            with _quiet_stderr():
                return list(backend.get_input_names() if kind == "input" else backend.get_output_names())
        except Exception as e:  # rtmidi.SystemError (an OSError) when there is no ALSA/CoreMIDI/WinMM
            raise UserError(NO_BACKEND_HINT.format(detail=_one_line(e))) from None

    def list_inputs(self) -> list[str]:
        return self._names("input")

    def list_outputs(self) -> list[str]:
        return self._names("output")

    def open_input(self, name: str | None, callback: Callback):
        port_name = pick_port(self.list_inputs(), name, "input")

        def on_message(msg: mido.Message) -> None:
            # rtmidi calls this from its own thread as soon as bytes arrive: stamp them right away.
            callback(msg, time.monotonic())

        try:
            with _quiet_stderr():
                return self._backend().open_input(port_name, callback=on_message)
        except Exception as e:
            raise UserError(f"cannot open MIDI input {port_name!r}: {_one_line(e)}") from None

    def open_output(self, name: str | None):
        port_name = pick_port(self.list_outputs(), name, "output")
        try:
            with _quiet_stderr():
                return self._backend().open_output(port_name)
        except Exception as e:
            raise UserError(f"cannot open MIDI output {port_name!r}: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ------------------------------------------------------------------------------------------- fluidsynth

class SynthOutput:
    """An output port that plays through FluidSynth to the sound card (`--synth`)."""

    def __init__(self, soundfont: str | None = None, driver: str | None = None, gain: float = 0.5):
        from amadeus.render import default_soundfont, ensure_fluidsynth

        fluidsynth = ensure_fluidsynth()
        path = soundfont or str(default_soundfont())
        if not os.path.isfile(path):
            raise UserError(f"{path}: soundfont not found (pass --soundfont FILE.sf2)")
        self.synth = fluidsynth.Synth(gain=gain)
        try:
            with _quiet_stderr():
                started = self.synth.start(driver=driver) if driver else self.synth.start()
            # pyfluidsynth returns None or an error code depending on version; no audio driver -> no handle.
            if started not in (None, 0) or getattr(self.synth, "audio_driver", 1) is None:
                raise RuntimeError("no audio driver could be started")
            sfid = self.synth.sfload(path)
            if sfid == -1:
                raise UserError(f"{path}: not a SoundFont that fluidsynth can load")
            self.synth.program_select(0, sfid, 0, 0)
        except UserError:
            self.synth.delete()
            raise
        except Exception as e:
            self.synth.delete()
            raise UserError(f"fluidsynth cannot open the sound card ({_one_line(e)}); use --out PORT instead, "
                            "or `--driver` to pick an audio driver (alsa, pulseaudio, jack, coreaudio)") from None
        self._lock = threading.Lock()

    def send(self, msg: mido.Message) -> None:
        with self._lock:
            if msg.type == "note_on":
                self.synth.noteon(msg.channel, msg.note, msg.velocity)
            elif msg.type == "note_off":
                self.synth.noteoff(msg.channel, msg.note)
            elif msg.type == "control_change":
                self.synth.cc(msg.channel, msg.control, msg.value)

    def close(self) -> None:
        with self._lock:
            self.synth.delete()


def list_ports(backend: Backend) -> str:
    """What exists: the MIDI input and output ports ("none" where there are none, with the reason when
    the system has no MIDI service), and the ways to play without them."""
    lines = []
    for kind, names in (("inputs", backend.list_inputs), ("outputs", backend.list_outputs)):
        try:
            found, why = names(), ""
        except UserError as e:  # no MIDI service at all (no ALSA sequencer, as in containers and CI)
            found, why = [], f" ({e})"
        lines.append(f"MIDI {kind}: " + ("none" + why if not found else ""))
        lines += [f"  {n}" for n in found]
    lines.append("without them: --input-file PHRASE.mid plays a file in; --out null, --out FILE.mid or --synth "
                 "take the answer")
    return "\n".join(lines)
