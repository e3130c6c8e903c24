"""WAV rendering through FluidSynth and piano-roll PNGs (needs libfluidsynth, as `make setup` installs)."""

import ctypes.util
import io
import struct
import sys
import wave

import numpy as np
import pretty_midi
import pytest

from amadeus import render
from amadeus.errors import UserError

SR = 44100


def make_midi(notes, program=0):
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=program)
    inst.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e) for p, v, s, e in notes]
    pm.instruments.append(inst)
    return pm


def read_wav(data: bytes):
    with wave.open(io.BytesIO(data)) as w:
        params = w.getparams()
        frames = np.frombuffer(w.readframes(params.nframes), dtype="<i2").reshape(-1, params.nchannels)
    return params, frames.astype(np.float64) / 32768.0


def rms(x):
    return float(np.sqrt(np.mean(x ** 2))) if x.size else 0.0


def test_wav_is_audible_timed_and_as_long_as_the_midi(tmp_path):
    # A chord from 1.0 s to 2.5 s, then a melody; the MIDI ends at 4.0 s.
    midi = make_midi([(60, 90, 1.0, 2.5), (64, 90, 1.0, 2.5), (67, 90, 1.0, 2.5),
                      (72, 80, 2.5, 3.0), (71, 70, 3.0, 3.5), (69, 60, 3.5, 4.0)])
    out = tmp_path / "out.wav"
    seconds = render.render_wav(midi, out)
    params, audio = read_wav(out.read_bytes())
    assert (params.framerate, params.sampwidth, params.nchannels) == (SR, 2, 2)
    # Length: the MIDI's end time plus the fixed release tail, to the sample.
    expected = midi.get_end_time() + render.TAIL_SECONDS
    assert params.nframes == round(expected * SR)
    assert seconds == pytest.approx(expected, abs=1 / SR)
    # Audible while notes sound, silent before the first note (timing is sample-accurate).
    assert rms(audio[int(1.0 * SR):int(2.5 * SR)]) > 0.05
    assert np.abs(audio[:int(0.99 * SR)]).max() < 1e-3
    # One fixed gain: audible, under the -1 dBFS headroom limit; --normalize puts the peak at -1 dBFS.
    peak = np.abs(audio).max()
    assert 0.05 < peak <= 10 ** (render.PEAK_DBFS / 20) + 1e-4
    _, normalised = read_wav(render.wav_bytes(midi, normalize=True))
    assert np.abs(normalised).max() == pytest.approx(10 ** (render.PEAK_DBFS / 20), abs=1e-3)


def chords(velocity: int, voices: int = 6):
    pitches = (48, 55, 60, 64, 67, 72, 76, 79, 84, 88)[:voices]
    return make_midi([(p, velocity, t * 0.5, t * 0.5 + 1.0) for t in range(6) for p in pitches])


def db(x):
    return 20 * np.log10(rms(x))


def test_a_quiet_take_renders_quieter_than_a_loud_one_and_neither_clips():
    _, quiet = read_wav(render.wav_bytes(chords(20)))
    _, loud = read_wav(render.wav_bytes(chords(110)))
    limit = 10 ** (render.PEAK_DBFS / 20) + 1e-4
    assert np.abs(quiet).max() <= limit and np.abs(loud).max() <= limit
    assert db(loud) - db(quiet) > 15  # per-file normalisation would make them equally loud
    # A dense fortissimo that would pass the limit at the fixed gain is turned down to it, not clipped.
    _, dense = read_wav(render.wav_bytes(chords(127, voices=10)))
    assert np.abs(dense).max() <= limit


def test_louder_velocity_gives_louder_audio_within_one_file():
    midi = make_midi([(60, 20, 0.0, 1.0), (60, 120, 2.0, 3.0)])
    _, audio = read_wav(render.wav_bytes(midi))
    quiet, loud = rms(audio[:int(1.0 * SR)]), rms(audio[int(2.0 * SR):int(3.0 * SR)])
    assert loud > 2 * quiet > 0


def test_wav_bytes_matches_render_wav_and_sample_rate_is_honoured(tmp_path):
    midi = make_midi([(60, 90, 0.0, 0.5)])
    render.render_wav(midi, tmp_path / "a.wav", sample_rate=22050)
    params_file, _ = read_wav((tmp_path / "a.wav").read_bytes())
    params_bytes, audio = read_wav(render.wav_bytes(midi, sample_rate=22050))
    assert params_file.framerate == params_bytes.framerate == 22050
    assert params_file.nframes == params_bytes.nframes == round(1.5 * 22050)
    assert rms(audio) > 0.01


def test_instruments_play_together_not_one_after_another():
    # Two instruments over the same second: the audio is 1 s + tail, not 2 s + tail.
    midi = make_midi([(60, 90, 0.0, 1.0)])
    other = pretty_midi.Instrument(program=40)
    other.notes.append(pretty_midi.Note(velocity=90, pitch=67, start=0.0, end=1.0))
    midi.instruments.append(other)
    params, audio = read_wav(render.wav_bytes(midi))
    assert params.nframes == round((1.0 + render.TAIL_SECONDS) * SR)
    assert rms(audio[:SR]) > 0.05


def test_empty_midi_renders_the_tail_of_silence(tmp_path):
    seconds = render.render_wav(pretty_midi.PrettyMIDI(), tmp_path / "empty.wav")
    params, audio = read_wav((tmp_path / "empty.wav").read_bytes())
    assert seconds == pytest.approx(render.TAIL_SECONDS)
    assert params.nframes == round(render.TAIL_SECONDS * SR)
    assert np.abs(audio).max() == 0.0


def test_render_cli_reads_a_midi_file(tmp_path, capsys):
    path = tmp_path / "in.mid"
    make_midi([(62, 100, 0.25, 1.25)]).write(str(path))
    seconds = render.render_cli(path, tmp_path / "out.wav")
    assert seconds == pytest.approx(1.25 + render.TAIL_SECONDS, abs=0.01)  # MIDI ticks round the times
    assert "out.wav" in capsys.readouterr().out
    assert (tmp_path / "out.wav").read_bytes()[:4] == b"RIFF"


def test_bad_inputs_are_user_errors(tmp_path):
    midi = make_midi([(60, 90, 0.0, 0.5)])
    with pytest.raises(UserError, match="soundfont not found"):
        render.render_wav(midi, tmp_path / "x.wav", soundfont=tmp_path / "missing.sf2")
    with pytest.raises(UserError, match="MIDI file not found"):
        render.render_wav(tmp_path / "missing.mid", tmp_path / "x.wav")
    (tmp_path / "junk.mid").write_bytes(b"not midi at all")
    with pytest.raises(UserError, match="junk.mid: not a MIDI file"):
        render.render_wav(tmp_path / "junk.mid", tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


def test_default_soundfont_is_the_bundled_one():
    sf2 = render.default_soundfont()
    assert sf2.name == "TimGM6mb.sf2" and sf2.stat().st_size > 1_000_000


def test_missing_fluidsynth_library_is_one_line_user_error(monkeypatch, tmp_path):
    # Make pyfluidsynth's own library lookup fail, as on a machine without libfluidsynth.
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.delenv("HOMEBREW_PREFIX", raising=False)
    monkeypatch.delitem(sys.modules, "fluidsynth", raising=False)
    with pytest.raises(UserError) as info:
        render.ensure_fluidsynth()
    message = str(info.value)
    assert message == render.INSTALL_HINT
    assert "\n" not in message and "libfluidsynth3" in message and "make setup" in message
    with pytest.raises(UserError, match="fluidsynth library not found"):
        render.render_wav(make_midi([(60, 90, 0.0, 0.5)]), tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_piano_roll_png_is_a_sensible_image(tmp_path):
    notes = [(48 + (i * 7) % 24, 30 + i * 4, i * 0.25, i * 0.25 + 0.5) for i in range(20)]
    out = tmp_path / "roll.png"
    render.piano_roll_png(make_midi(notes), out, boundary_seconds=2.0, title="prompt + continuation")
    width, height = png_size(out.read_bytes())
    assert (width, height) == (1200, 480)
    # Not a blank canvas: the image holds many distinct colours (velocity colour map, labels, line).
    import matplotlib.image

    pixels = matplotlib.image.imread(str(out))[..., :3].reshape(-1, 3)
    assert len(np.unique(np.round(pixels, 2), axis=0)) > 20
    # The boundary line is drawn in crimson (220, 20, 60).
    crimson = np.all(np.abs(pixels - np.array([220, 20, 60]) / 255) < 0.05, axis=1)
    assert crimson.sum() > 100


def test_piano_roll_of_empty_midi_still_renders(tmp_path):
    out = tmp_path / "empty.png"
    render.piano_roll_png(pretty_midi.PrettyMIDI(), out)
    assert png_size(out.read_bytes()) == (1200, 480)


def test_render_params_are_validated():
    from amadeus.params import build

    config = build(render.RenderConfig, {"soundfont": None, "sample_rate": 48000}, "render")
    assert config.sample_rate == 48000 and config.soundfont is None
    assert config.tail_seconds == render.TAIL_SECONDS
    with pytest.raises(UserError, match="render.sample_rate"):
        build(render.RenderConfig, {"sample_rate": 1000}, "render")
