"""Hearing and seeing a performance: WAV through FluidSynth, piano-roll PNG through matplotlib.

WAV: every instrument of the MIDI plays at once on its own FluidSynth channel (pretty_midi's own
`PrettyMIDI.fluidsynth` renders instruments one after another, mono, peak-normalised to 0 dBFS). We
render stereo float samples (`fluid_synth_write_float`, so nothing clips inside the synth), let the
last notes ring for `tail_seconds`, then apply one fixed gain (`GAIN`, the same for every file, so
a quiet take stays quieter than a loud one), lowered only when a file would pass the -1 dBFS
headroom limit, and write 16-bit PCM with the stdlib `wave` module. `normalize=True` (`amadeus
render --normalize`) scales each file's peak to -1 dBFS instead. The audio therefore lasts
`midi.get_end_time() + tail_seconds` exactly (to the sample), which the tests check.

Soundfont: pretty_midi's bundled TimGM6mb.sf2 (GPL-2, 6 MB; docs/rendering.md#soundfonts) unless one is given.
The system library libfluidsynth is needed (Debian/Ubuntu: `libfluidsynth3`); without it
`ensure_fluidsynth` raises a one-line UserError saying how to install it.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import io
import os
import wave
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pretty_midi

from amadeus.errors import UserError
from amadeus.fileio import write_bytes
from amadeus.params import knob

SAMPLE_RATE = 44100
TAIL_SECONDS = 1.0  # release of the last notes (piano samples decay within about a second)
PEAK_DBFS = -1.0  # headroom limit: no sample above this, and the peak when normalising
# Fixed gain on fluidsynth's float output (synth gain 0.2): six-note TimGM6mb piano chords at
# velocity 127 peak near 0.097 there (measured), so x8 puts loud playing near -2 dBFS, quiet stays quiet.
GAIN = 8.0
INSTALL_HINT = ("fluidsynth library not found: install it with `sudo apt-get install libfluidsynth3` "
                "(Debian/Ubuntu) or `make setup`")

MidiLike = pretty_midi.PrettyMIDI | str | os.PathLike


@dataclass
class RenderConfig:
    """params.yaml `render`: how MIDI becomes audio."""

    soundfont: str | None = knob(None, help="an .sf2 file; null = pretty_midi's bundled TimGM6mb.sf2")
    sample_rate: int = knob(SAMPLE_RATE, min=8000, max=192000)
    tail_seconds: float = knob(TAIL_SECONDS, min=0.0, help="release after the last note ends")


def _import_fluidsynth() -> ModuleType:
    # pyfluidsynth looks for the shared library when it is imported and raises ImportError if absent.
    import fluidsynth

    return fluidsynth


def ensure_fluidsynth() -> ModuleType:
    """The pyfluidsynth module, or a one-line UserError when libfluidsynth (or pyfluidsynth) is missing."""
    try:
        return _import_fluidsynth()
    except ModuleNotFoundError as e:
        if e.name == "fluidsynth":
            raise UserError("pyfluidsynth is not installed: run `make setup` "
                            "(or `pip install pyfluidsynth`)") from None
        raise
    except (ImportError, OSError):
        raise UserError(INSTALL_HINT) from None


def default_soundfont() -> Path:
    """The General MIDI soundfont shipped inside the pretty_midi wheel (TimGM6mb.sf2)."""
    return Path(str(importlib.resources.files("pretty_midi"))) / "TimGM6mb.sf2"


def _load_midi(midi: MidiLike) -> pretty_midi.PrettyMIDI:
    if isinstance(midi, pretty_midi.PrettyMIDI):
        return midi
    path = Path(midi)
    if not path.exists():
        raise UserError(f"{path}: MIDI file not found")
    from amadeus import codec

    return codec.read_midi(path)   # a bad file: codec.MidiError, one line naming it


def _events(midi: pretty_midi.PrettyMIDI) -> list[tuple[float, int, int, int, int, int]]:
    """(time, order, kind, channel, a, b) for every note/CC/pitch-bend; note-offs sort before note-ons."""
    events = []
    melodic = [c for c in range(16) if c != 9]
    for i, inst in enumerate(midi.instruments):
        # Drums on channel 9; other instruments take the 15 melodic channels in turn.
        channel = 9 if inst.is_drum else melodic[i % len(melodic)]
        for n in inst.notes:
            events.append((n.start, 2, 0, channel, n.pitch, n.velocity))
            events.append((n.end, 0, 1, channel, n.pitch, 0))
        for cc in inst.control_changes:
            events.append((cc.time, 1, 2, channel, cc.number, cc.value))
        for pb in inst.pitch_bends:
            events.append((pb.time, 1, 3, channel, pb.pitch, 0))
    events.sort(key=lambda e: (e[0], e[1]))
    return events


def synthesize(midi: MidiLike, soundfont: str | os.PathLike | None = None,
               sample_rate: int = SAMPLE_RATE, tail_seconds: float = TAIL_SECONDS,
               normalize: bool = False) -> np.ndarray:
    """Stereo float32 audio [samples, 2], end time + tail long: a fixed gain within -1 dBFS (or, with
    `normalize`, the peak at -1 dBFS); silence stays zeros."""
    midi = _load_midi(midi)
    fluidsynth = ensure_fluidsynth()
    sf_path = Path(soundfont) if soundfont is not None else default_soundfont()
    if not sf_path.is_file():
        raise UserError(f"{sf_path}: soundfont not found (set render.soundfont to an .sf2 file, or null)")
    total = int(round((midi.get_end_time() + tail_seconds) * sample_rate))
    audio = np.zeros((total, 2), dtype=np.float32)
    events = _events(midi)
    if not events:
        return audio

    synth = fluidsynth.Synth(gain=0.2, samplerate=float(sample_rate))
    try:
        sfid = synth.sfload(str(sf_path))
        if sfid == -1:
            raise UserError(f"{sf_path}: not a SoundFont that fluidsynth can load")
        melodic = [c for c in range(16) if c != 9]
        for i, inst in enumerate(midi.instruments):
            if inst.is_drum:
                if synth.program_select(9, sfid, 128, inst.program) == -1:
                    synth.program_select(9, sfid, 128, 0)
            else:
                synth.program_select(melodic[i % len(melodic)], sfid, 0, inst.program)
        write_float = fluidsynth._fl.fluid_synth_write_float
        write_float.restype = ctypes.c_int
        write_float.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        pointer = audio.ctypes.data
        done = 0

        def render_until(sample: int) -> None:
            nonlocal done
            sample = min(sample, total)
            if sample > done:
                # Interleaved stereo straight into `audio`: left at offset 0, right at 1, stride 2.
                base = pointer + done * 2 * audio.itemsize
                write_float(synth.synth, sample - done, base, 0, 2, base, 1, 2)
                done = sample

        for time, _, kind, channel, a, b in events:
            render_until(int(round(time * sample_rate)))
            if kind == 0:
                synth.noteon(channel, a, b)
            elif kind == 1:
                synth.noteoff(channel, a)
            elif kind == 2:
                synth.cc(channel, a, b)
            else:
                synth.pitch_bend(channel, a)
        render_until(total)
    finally:
        synth.delete()

    peak = float(np.abs(audio).max()) if audio.size else 0.0
    limit = 10 ** (PEAK_DBFS / 20)
    if peak > 0:
        audio *= np.float32(limit / peak if normalize else min(GAIN, limit / peak))
    return audio


def _wav_from_audio(audio: np.ndarray, sample_rate: int) -> bytes:
    pcm = np.empty(audio.shape, dtype="<i2")
    for i in range(0, len(audio), 1 << 20):  # in blocks: no full-length float temporaries
        block = audio[i:i + (1 << 20)] * np.float32(32767.0)
        pcm[i:i + (1 << 20)] = np.clip(np.round(block), -32768, 32767)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(audio.shape[1])
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def wav_bytes(midi: MidiLike, soundfont: str | os.PathLike | None = None,
              sample_rate: int = SAMPLE_RATE, tail_seconds: float = TAIL_SECONDS,
              normalize: bool = False) -> bytes:
    """The rendered performance as the bytes of a 16-bit stereo PCM WAV file."""
    return _wav_from_audio(synthesize(midi, soundfont, sample_rate, tail_seconds, normalize), sample_rate)


def render_wav(midi: MidiLike, out_path: str | os.PathLike, soundfont: str | os.PathLike | None = None,
               sample_rate: int = SAMPLE_RATE, tail_seconds: float = TAIL_SECONDS,
               normalize: bool = False) -> float:
    """Render `midi` to a WAV file (atomically); returns the seconds of audio written."""
    audio = synthesize(midi, soundfont, sample_rate, tail_seconds, normalize)
    write_bytes(out_path, _wav_from_audio(audio, sample_rate))
    return audio.shape[0] / sample_rate


def render_cli(in_mid: str | os.PathLike, out_wav: str | os.PathLike,
               soundfont: str | os.PathLike | None = None, sample_rate: int = SAMPLE_RATE,
               normalize: bool = False) -> float:
    """`amadeus render in.mid out.wav`: render and print what was written; returns the seconds."""
    seconds = render_wav(in_mid, out_wav, soundfont=soundfont, sample_rate=sample_rate, normalize=normalize)
    print(f"wrote {out_wav}: {seconds:.2f} s, {sample_rate} Hz, 16-bit stereo")
    return seconds


_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def piano_roll_png(midi: MidiLike, out_path: str | os.PathLike, boundary_seconds: float | None = None,
                   title: str | None = None, width_inches: float = 12.0, dpi: int = 100) -> None:
    """Pitch against seconds, one bar per note coloured by velocity; a line at the prompt boundary."""
    # The object API with an Agg canvas: no pyplot global state, no display needed.
    from matplotlib import colormaps, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    midi = _load_midi(midi)
    notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes]
    end = max(midi.get_end_time(), boundary_seconds or 0.0, 1.0)

    fig = Figure(figsize=(width_inches, 4.8), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    norm = colors.Normalize(vmin=1, vmax=127)
    cmap = colormaps["viridis"]
    if notes:
        lo = min(n.pitch for n in notes) - 2
        hi = max(n.pitch for n in notes) + 2
        boxes = [[(n.start, n.pitch - 0.4), (n.end, n.pitch - 0.4), (n.end, n.pitch + 0.4),
                  (n.start, n.pitch + 0.4)] for n in notes]
        bars = PolyCollection(boxes, array=np.array([n.velocity for n in notes], dtype=float),
                              cmap=cmap, norm=norm, linewidths=0.3, edgecolors="black")
        ax.add_collection(bars)
        fig.colorbar(bars, ax=ax, label="velocity", pad=0.01)
    else:
        lo, hi = 48, 84
        ax.text(0.5, 0.5, "no notes", transform=ax.transAxes, ha="center", va="center", color="grey")
    ax.set_xlim(0, end)
    ax.set_ylim(lo - 0.5, hi + 0.5)
    # Label every C (and the octave number) so pitches can be read off; light lines at each C.
    cs = [p for p in range(int(lo), int(hi) + 1) if p % 12 == 0]
    ax.set_yticks(cs, [f"{note_name(p)} ({p})" for p in cs])
    for p in cs:
        ax.axhline(p, color="0.85", lw=0.6, zorder=0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("pitch")
    handles = [Line2D([], [], lw=0)]
    labels = [f"{len(notes)} notes, {midi.get_end_time():.1f} s"]
    if boundary_seconds is not None:
        ax.axvspan(0, boundary_seconds, color="0.93", zorder=-1)
        ax.axvline(boundary_seconds, color="crimson", lw=1.5, ls="--")
        handles = [Patch(color="0.93"), Line2D([], [], color="crimson", ls="--")] + handles
        labels = ["prompt", f"continuation starts ({boundary_seconds:.1f} s)"] + labels
    # Legend just above the axes so it never hides notes; the title on its own line above it.
    ax.legend(handles, labels, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(labels),
              fontsize="small", frameon=False, borderaxespad=0.2)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize="medium")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(out_path, buf.getvalue())


def note_name(pitch: int) -> str:
    """MIDI pitch -> scientific pitch name (60 -> C4)."""
    return f"{_NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"
