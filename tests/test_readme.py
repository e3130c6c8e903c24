"""The README's code examples work: every ```python block runs on a tiny real checkpoint, and every
`amadeus ...` command in a ```sh block parses with the real command line (flags and subcommands exist)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from test_generation import prompt_midi, save_checkpoint, tiny_model

from amadeus.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PYTHON = re.findall(r"```python\n(.*?)```", README, re.S)
SHELL = re.findall(r"```sh[^\n]*\n(.*?)```", README, re.S)


def commands() -> list[str]:
    lines = "\n".join(SHELL).replace("\\\n", " ").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.strip().startswith("amadeus ")]


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
