"""`amadeus quantize`: an imported perceiver-io checkpoint to int8, calibrated on music in its own codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch

from amadeus.checkpoint import load_model
from amadeus.cli import main
from amadeus.perceiver_io_import import import_perceiver_io

FIXTURE = Path(__file__).parent / "fixtures" / "perceiver_io" / "model"


def write_pieces(folder: Path, count: int = 4, notes: int = 120) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for n in range(count):
        pm = pretty_midi.PrettyMIDI()
        piano = pretty_midi.Instrument(program=0)
        t = 0.0
        for _ in range(notes):
            start = t + float(rng.choice([0.0, 0.12, 0.25]))
            piano.notes.append(pretty_midi.Note(int(rng.integers(40, 110)), int(rng.integers(40, 85)), start,
                                                start + float(rng.uniform(0.1, 0.8))))
            t = start
        pm.instruments.append(piano)
        pm.write(str(folder / f"piece{n}.mid"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quantize")
    import_perceiver_io(FIXTURE, root / "pio.sess")
    write_pieces(root / "midi")
    main(["preprocess", str(root / "midi"), str(root / "data"), "--flavour", "perceiver-io"])
    main(["preprocess", str(root / "midi"), str(root / "magenta-data")])
    return root


def test_imported_checkpoint_to_int8_with_its_nll_change(workspace, capsys):
    out = workspace / "pio.int8.sess"
    main(["quantize", str(workspace / "pio.sess"), str(out), "--data", str(workspace / "data"), "--windows", "4"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{out}: int8; NLL on 4 ") and "(fp32) ->" in line and "(int8)" in line
    int8, ckpt = load_model(out)
    fp32, _ = load_model(workspace / "pio.sess")
    assert ckpt["precision"] == "int8" and ckpt["codec"]["flavour"] == "perceiver-io"
    assert int8.hybrid.attn.q_proj.weight.dtype == torch.int8 and int8.kv_dtype == torch.bfloat16
    prompt = torch.randint(0, 388, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = int8(prompt), fp32(prompt)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8  # the same model, in int8


def test_refusals_are_one_line(workspace, capsys):
    cases = [
        (["--data", str(workspace / "magenta-data")], "encoded with the magenta codec but"),
        (["--data", str(workspace / "data"), "--mode", "int4"], "--mode: 'int4' is not allowed"),
        (["--data", str(workspace / "data"), "--window", "100000"], "piece has 100001 events; pass a smaller --window"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["quantize", str(workspace / "pio.sess"), str(workspace / "x.sess"), *extra])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and message in err and "\n" not in err, err
    assert not (workspace / "x.sess").exists()
