"""`amadeus generate` as a user meets it: defaults equal the pipeline's, --version, one-line refusals
naming the flag, output suffixes checked, the drawn seed printed (tiny real checkpoint)."""

from __future__ import annotations

import dataclasses

import pretty_midi
import pytest
from test_generation import checkpoint, prompt_midi  # noqa: F401 (a fixture)

from amadeus.cli import build_parser, main
from amadeus.pipeline.generate import GenerateConfig


def test_cli_sampling_defaults_are_the_pipelines():
    args = build_parser().parse_args(["generate", "--checkpoint", "x.sess", "--out", "x.mid"])
    defaults = {f.name: f.default for f in dataclasses.fields(GenerateConfig)}
    for name in ("temperature", "top_k", "top_p", "num_beams"):
        assert getattr(args, name) == defaults[name], name
    assert args.greedy is (not defaults["do_sample"])


@pytest.mark.parametrize("argv", [["--version"], ["generate", "--version"], ["render", "--version"]])
def test_version(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("amadeus ")


@pytest.mark.parametrize("flags, flag", [
    (["--length", "0"], "--length"), (["--temperature", "0"], "--temperature"),
    (["--top-p", "1.5"], "--top-p"), (["--top-k", "-1"], "--top-k"), (["--num-beams", "0"], "--num-beams"),
    (["--out", "x.wav"], "--out"), (["--wav", "x.mid"], "--wav"), (["--png", "x.jpg"], "--png"),
])
def test_impossible_values_are_one_line_naming_the_flag(tmp_path, checkpoint, capsys, flags, flag):  # noqa: F811
    argv = ["generate", "--checkpoint", str(checkpoint), *flags]
    if "--out" not in flags:
        argv += ["--out", str(tmp_path / "o.mid")]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(f"error: {flag}: ") and "\n" not in err
    assert "do_sample" not in err and not list(tmp_path.glob("o.*"))


def test_temperature_error_names_greedy_not_python(tmp_path, checkpoint, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", str(checkpoint), "--temperature", "-1", "--out", str(tmp_path / "o.mid")])
    assert "--greedy" in capsys.readouterr().err


def test_png_alone_needs_no_out_and_the_drawn_seed_is_printed(tmp_path, checkpoint, capsys):  # noqa: F811
    prompt = tmp_path / "in.mid"
    prompt_midi().write(str(prompt))
    png = tmp_path / "roll.png"
    main(["generate", "--checkpoint", str(checkpoint), "--prompt", str(prompt), "--length", "50",
          "--png", str(png)])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("seed "))
    seed = int(line.split()[1])
    assert f"pass --seed {seed} to make this take again" in line
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.glob("*.mid")] == ["in.mid"]
    # The same seed makes the same take.
    a, b = tmp_path / "a.mid", tmp_path / "b.mid"
    for path in (a, b):
        main(["generate", "--checkpoint", str(checkpoint), "--prompt", str(prompt), "--length", "50",
              "--seed", str(seed), "--out", str(path)])
    notes = [[(n.pitch, n.start) for n in pretty_midi.PrettyMIDI(str(p)).instruments[0].notes] for p in (a, b)]
    assert notes[0] == notes[1]
    assert not any(x.startswith("seed ") for x in capsys.readouterr().out.splitlines())  # given, not drawn


def test_live_sampling_defaults_are_the_pipelines():
    from amadeus.live import LiveConfig

    args = build_parser().parse_args(["live"])
    defaults = {f.name: f.default for f in dataclasses.fields(GenerateConfig)}
    for name in ("temperature", "top_k", "top_p"):
        assert getattr(args, name) == defaults[name] == getattr(LiveConfig, name), name


def test_every_command_shows_an_example_that_parses(capsys):
    import shlex

    from amadeus.cli import EXAMPLES

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(EXAMPLES) == set(commands)
    for name in commands:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert "\nexample:\n" in text, name
        for line in EXAMPLES[name]:
            assert line in text
            argv = shlex.split(line)
            assert argv[:2] == ["amadeus", name]
            build_parser().parse_args(argv[1:])  # exits 2 on a flag the command does not have


def _meter_prompt(path, bpm: float, numerator: int, denominator: int) -> None:
    import mido

    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
    track.append(mido.MetaMessage("time_signature", numerator=numerator, denominator=denominator, time=0))
    for i in range(6):
        track.append(mido.Message("note_on", note=60 + i, velocity=70, time=0 if i == 0 else 240))
        track.append(mido.Message("note_off", note=60 + i, velocity=0, time=240))
    midi.tracks.append(track)
    midi.save(path)


@pytest.mark.parametrize("bpm, meter, per_bar", [(90, (3, 4), 2.0), (120, (6, 8), 1.5), (60, (4, 4), 4.0)])
def test_bars_follow_the_prompts_tempo_and_time_signature(tmp_path, checkpoint, capsys, bpm, meter, per_bar):  # noqa: F811
    prompt = tmp_path / "in.mid"
    _meter_prompt(prompt, bpm, *meter)
    main(["generate", "--checkpoint", str(checkpoint), "--prompt", str(prompt), "--bars", "2",
          "--seed", "1", "--out", str(tmp_path / "o.mid")])
    line = next(x for x in capsys.readouterr().out.splitlines() if " bars of " in x)
    assert line.startswith(f"2 bars of {meter[0]}/{meter[1]} at {bpm} bpm") and f"= {2 * per_bar:.2f} s" in line


def test_bars_without_a_prompt_are_midis_default_meter(tmp_path, checkpoint, capsys):  # noqa: F811
    main(["generate", "--checkpoint", str(checkpoint), "--bars", "1", "--seed", "1", "--length", "30",
          "--out", str(tmp_path / "o.mid")])
    assert "1 bars of 4/4 at 120 bpm (no prompt: MIDI's defaults) = 2.00 s" in capsys.readouterr().out


def test_bars_and_seconds_exclude_each_other_and_num_latents_0_is_refused(tmp_path, checkpoint, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--checkpoint", str(checkpoint), "--bars", "2", "--seconds", "3", "--out", "o.mid"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--checkpoint", str(checkpoint), "--num-latents", "0", "--out", str(tmp_path / "o.mid")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: --num-latents: 0") and "\n" not in err


def test_generate_uses_the_pipelines_checkpoint_when_none_is_given(tmp_path, checkpoint, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # the fixture wrote save/performance_rnn.sess and .int8.sess here
    main(["generate", "--seconds", "2", "--seed", "3", "--out", "o.mid"])
    out = capsys.readouterr().out
    assert "checkpoint: save/performance_rnn.int8.sess (the pipeline's" in out and (tmp_path / "o.mid").is_file()
    for sess in (tmp_path / "save").glob("*.sess"):
        sess.unlink()
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--seconds", "2", "--out", "p.mid"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: generate: no --checkpoint given") and "\n" not in err


def test_latent_block_generates_past_the_window_and_a_bad_one_is_one_line(tmp_path, capsys):
    from test_pipeline_stages import save_checkpoint, tiny_perceiver

    sess = tmp_path / "p.sess"
    save_checkpoint(sess, tiny_perceiver())  # 32-token window, 16 latents
    out = tmp_path / "o.mid"
    # 80 events run well past the window, so blocks of 8 latents move into the prefix several times
    main(["generate", "--checkpoint", str(sess), "--length", "80", "--latent-block", "8", "--seed", "1",
          "--out", str(out)])
    assert out.is_file()
    for value, message in (("0", "error: --latent-block: 0 is not allowed"),
                           ("17", "error: generate: latent_block (17) must be in [1, 16]")):
        with pytest.raises(SystemExit) as exit_:
            main(["generate", "--checkpoint", str(sess), "--latent-block", value, "--out", str(tmp_path / "x.mid")])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and err.startswith(message) and "\n" not in err
