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
