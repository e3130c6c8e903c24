"""The page's piano: notes rendered once from the SoundFont by fluidsynth, played back by WebAudio.

The server renders every third key of the piano (A0, C1, D#1, ... C8: 30 notes, as multi-sampled
pianos in browsers commonly do) at one velocity through `amadeus.render.synthesize`, the renderer the
pipeline's WAVs use, so the page sounds like the takes it saves. The page plays the nearest sample at
a playback rate of 2**(semitones / 12) (at most one semitone away) and scales its gain by velocity.

    GET /samples/index.json  {"sample_rate", "frames", "pitches", "velocity", "data"}
    GET /samples/piano.pcm   little-endian int16 mono, `frames` samples per pitch, in `pitches` order
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 22050  # half of CD rate: a browser piano, 5 MB for all 30 notes
PITCHES = tuple(range(21, 109, 3))  # A0 .. C8, every third key
VELOCITY = 100
HOLD_SECONDS = 3.5  # the key is held this long in the sample; the page ramps a note-off down itself
SLOT_SECONDS = 4.0  # hold + the start of the release


@dataclass(frozen=True)
class PianoSamples:
    sample_rate: int
    frames: int
    pitches: tuple[int, ...]
    velocity: int
    pcm: bytes  # int16 little-endian, one block of `frames` per pitch

    def index(self, data_url: str) -> dict:
        return {"sample_rate": self.sample_rate, "frames": self.frames, "pitches": list(self.pitches),
                "velocity": self.velocity, "data": data_url}


def render_samples(soundfont: str | os.PathLike | None = None) -> PianoSamples:
    """Render the samples (about a second of CPU); a missing fluidsynth or SoundFont is a UserError."""
    import pretty_midi

    from amadeus.render import synthesize

    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    for i, pitch in enumerate(PITCHES):
        start = i * SLOT_SECONDS
        piano.notes.append(pretty_midi.Note(VELOCITY, pitch, start, start + HOLD_SECONDS))
    pm.instruments.append(piano)
    # One gain for every note (normalised over all of them), so their loudness stays the SoundFont's.
    audio = synthesize(pm, soundfont, sample_rate=SAMPLE_RATE, normalize=True).mean(axis=1)
    frames = int(SLOT_SECONDS * SAMPLE_RATE)
    blocks = np.zeros((len(PITCHES), frames), dtype=np.float32)
    for i in range(len(PITCHES)):
        block = audio[i * frames:(i + 1) * frames]
        blocks[i, :len(block)] = block
    pcm = np.clip(np.round(blocks * 32767), -32768, 32767).astype("<i2").tobytes()
    return PianoSamples(SAMPLE_RATE, frames, PITCHES, VELOCITY, pcm)
