"""The README's code examples work: every ```python block runs on a tiny real checkpoint, and every
`amadeus ...` command in a ```sh block runs as a real process in a workspace holding the pipeline's
files (tiny checkpoints at save/, my-phrase.mid) and writes what it names. The only ones that are
parsed but not run are those the README marks as needing hardware this machine lacks (a MIDI
keyboard, a sound card)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_generation import checkpoint, prompt_midi, save_checkpoint, tiny_model  # noqa: F401 (a fixture)

from amadeus.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PYTHON = re.findall(r"```python\n(.*?)```", README, re.S)
SHELL = re.findall(r"```sh[^\n]*\n(.*?)```", README, re.S)


# What the README says of a command this machine cannot run.
NEEDS_HARDWARE = ("(needs a MIDI keyboard)", "(needs a sound card)")
OUTPUT_FLAGS = ("--out", "--full", "--wav", "--png", "--record")


def command_lines() -> list[tuple[str, str]]:
    """(command, its comment) for every `amadeus ...` line of the sh blocks."""
    lines = "\n".join(SHELL).replace("\\\n", " ").splitlines()
    return [(line.split("#")[0].strip(), line.partition("#")[2]) for line in lines
            if line.strip().startswith("amadeus ")]


def commands() -> list[str]:
    return [command for command, _ in command_lines()]


def runnable() -> list[str]:
    return [command for command, note in command_lines()
            if not any(n in note for n in NEEDS_HARDWARE) and not is_server(command)]


def is_server(command: str) -> bool:
    """`amadeus serve` runs until stopped: it is run as a server, asked for its page, and stopped."""
    return command.startswith("amadeus serve")


def test_the_readme_has_examples():
    assert PYTHON and commands()


@pytest.mark.parametrize("block", PYTHON)
def test_python_blocks_run(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "save" / "performance_rnn.sess", tiny_model())
    prompt_midi().write("my-phrase.mid")
    exec(compile(block, "README.md", "exec"), {})


@pytest.mark.parametrize("command", commands())
def test_amadeus_commands_parse(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.run)


def test_all_but_the_hardware_examples_run():
    skipped = [command for command in commands() if command not in runnable() and not is_server(command)]
    assert len(skipped) <= 2 and all(" live " in f" {c} " for c in skipped), skipped
    assert any(c.startswith("amadeus generate") for c in runnable())
    assert any("--input-file" in c for c in runnable())


def perceiver_io_files(root: Path) -> None:
    """What the README's perceiver-io example starts from and makes: MIDI files (my-midi/), a checkpoint
    that reads the perceiver-io codec with 1,024 latents (save/sam.sess, tiny otherwise), its data
    (sam-data/) and its int8 copy."""
    from test_pipeline_stages import save_checkpoint as save_sess
    from test_quantize_file import write_pieces

    from amadeus.models.perceiver_ar import PerceiverAR, PerceiverARConfig
    from amadeus.quantize_file import quantize_file

    write_pieces(root / "my-midi", notes=1200)
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig(max_seq_len=3072, max_latents=1024, num_channels=32, num_heads=2,
                                          num_self_attention_layers=1))
    save_sess(root / "save" / "sam.sess", model, codec={"flavour": "perceiver-io"})
    subprocess.run([sys.executable, "-m", "amadeus.cli", "preprocess", "my-midi", "sam-data", "--flavour",
                    "perceiver-io"], cwd=root, check=True, capture_output=True)
    quantize_file(root / "save" / "sam.sess", root / "save" / "sam.int8.sess", root / "sam-data", windows=2)


@pytest.mark.parametrize("command", runnable())
def test_amadeus_commands_run(command, tmp_path, checkpoint):  # noqa: F811
    prompt_midi().write(str(tmp_path / "my-phrase.mid"))
    if "sam" in command:
        perceiver_io_files(tmp_path)
        if command.startswith("amadeus preprocess"):
            shutil.rmtree(tmp_path / "sam-data")  # the command makes it
    argv = shlex.split(command)[1:]
    done = subprocess.run([sys.executable, "-m", "amadeus.cli", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "error" not in done.stderr, done.stderr
    written = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_FLAGS and argv[i + 1] != "null"]
    for name in written:
        path = tmp_path / name
        assert path.is_file() or any(path.glob("take-*.mid")), f"{command}: wrote no {name}"


@pytest.mark.parametrize("command", [c for c in commands() if is_server(c)])
def test_amadeus_serve_examples_serve_the_page(command, tmp_path, checkpoint, monkeypatch):  # noqa: F811
    import signal

    import requests

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}  # --https keeps its certificate
    argv = [*shlex.split(command)[1:], "--port", "0"]  # a free port: 8000 may be taken here
    proc = subprocess.Popen([sys.executable, "-m", "amadeus.cli", *argv], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines: list[str] = []
        while not lines or not lines[-1].startswith("amadeus studio:"):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        url = lines[-1].split()[-1]
        certificate = tmp_path / "config" / "amadeus" / "studio" / "studio-cert.pem"
        page = requests.get(url, timeout=10, verify=str(certificate) if url.startswith("https") else True)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in out, out
