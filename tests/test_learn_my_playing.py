"""Learn my playing: a dozen short phrases in a folder (as the studio keeps them) fine-tune a base
checkpoint through the pipeline's own stages (download of a `local` source, preprocess, train with
`train.performance_rnn.init_from`), and bad `init_from` values are refused by the params gate in one
line naming the key and the file."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch
import yaml
from test_performance_rnn import synthetic_piece

from amadeus import checkpoint
from amadeus.data import load_split
from amadeus.errors import UserError
from amadeus.models import build_model
from amadeus.models.perceiver_ar import PerceiverARConfig
from amadeus.nll import mean_nll
from amadeus.pipeline import download, paths, preprocess, train
from amadeus.pipeline.params_check import load_params, validate
from amadeus.quant import quantize_model
from amadeus.training import Outputs, TrainConfig
from amadeus.training import train as train_loop
from amadeus.windows import WindowSampler, evenly_spaced_windows

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"embed_dim": 16, "input_size": 32, "hidden_size": 32, "num_layers": 1, "dropout": 0.0, "controls": False}
# Tiny and quick; window 32 because a phrase of a few seconds has only ~100-150 events (the default
# window of 200 would find none: README.md#learn-my-playing).
TRAIN = {"device": "cpu", "cpu_precision": "fp32", "threads": 1, "window": 32, "stride": 4, "batch_size": 8,
         "warmup_steps": 2, "lr": 0.01, "max_steps": 30, "val_every": 1000, "val_windows": 8, "log_every": 1,
         "release_prior_events": 0}
BASE = "base/performance_rnn.sess"


def phrase(rng: np.random.Generator) -> pretty_midi.PrettyMIDI:
    """A short phrase in one player's manner: broken chords up and down in C major, an even 0.15 s
    pulse, loud downbeats; 3 to 6 seconds (what the studio saves per phrase)."""
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    root = int(rng.choice([48, 53, 55, 57]))
    pattern = [0, 4, 7, 12, 16, 12, 7, 4]
    t = 0.0
    for i in range(int(rng.integers(20, 40))):
        pitch = root + pattern[i % len(pattern)]
        piano.notes.append(pretty_midi.Note(96 if i % 4 == 0 else 64, pitch, t, t + 0.3))
        t += 0.15
    pm.instruments.append(piano)
    return pm


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The user's folder, a base checkpoint trained on other music, and a workspace fine-tuned from it."""
    top = tmp_path_factory.mktemp("learn")
    folder = top / "takes" / "my-playing"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(12):
        phrase(rng).write(str(folder / f"phrase-{i:03d}.mid"))

    ws = top / "ws"
    base_cfg = TrainConfig(**{**TRAIN, "max_steps": 80})
    train_loop("performance_rnn", MODEL, base_cfg, [synthetic_piece(150, s) for s in range(4)],
               [synthetic_piece(80, 9)], Outputs(checkpoint=ws / BASE), progress=False,
               params={"codec": {"flavour": "magenta"}, "datasets": ["other"]})

    config = {"sources": {"my-playing": {"kind": "local", "path": str(folder)}}, "datasets": ["my-playing"],
              "codec": {"flavour": "magenta"}, "preprocess": {"workers": 1},
              "models": {"performance_rnn": MODEL},
              "train": {"defaults": TRAIN, "performance_rnn": {"init_from": BASE}}}
    (ws / "params.yaml").write_text(yaml.safe_dump(config))
    params = load_params(ws / "params.yaml")  # the gate reads the base as training will
    download.run(params, ws, "my-playing")
    prep = preprocess.run(params, ws, "my-playing")
    result = train.run(params, ws, "performance_rnn")
    return {"ws": ws, "params": params, "prep": prep, "result": result}


def base_model(ws: Path) -> torch.nn.Module:
    model = build_model("performance_rnn", MODEL)
    model.load_state_dict(checkpoint.load(ws / BASE)["model"])
    return model


def test_short_phrases_make_training_windows_with_a_train_split(tuned):
    prep = tuned["prep"]
    assert prep["files_ok"] == 12 and prep["files_skipped"] == 0
    assert prep["splits"] == {"train": 10, "validation": 1, "test": 1}
    folders = [paths.processed_dir("my-playing", tuned["ws"])]
    arrays = load_split(folders, "train")
    assert all(len(a) < 201 for a in arrays)  # none would make a window of the default 200 events
    assert WindowSampler(arrays, 200, 10).n_windows == 0
    assert WindowSampler(arrays, TRAIN["window"], TRAIN["stride"]).n_windows > 100


def test_the_fine_tune_starts_from_the_base_weights_and_learns_the_phrases(tuned):
    ws, result = tuned["ws"], tuned["result"]
    tuned_ckpt = checkpoint.load(paths.checkpoint("performance_rnn", root=ws))
    base = checkpoint.load(ws / BASE)
    assert base["step"] == 80
    # Fresh step count and optimizer: all 30 requested steps ran (the base's 80 would leave none).
    assert result["steps"] == tuned_ckpt["step"] == 30 and result["stopped_by"] == "max_steps"
    record = tuned_ckpt["init_from"]
    assert {k: record[k] for k in ("path", "step", "sha256")} == {
        "path": BASE, "step": 80, "sha256": hashlib.sha256((ws / BASE).read_bytes()).hexdigest()}
    assert tuned_ckpt["params"]["train"]["init_from"] == BASE and result["init_from"] == BASE
    assert "init_from:   'base/performance_rnn.sess' (its step 80" in checkpoint.describe(
        paths.checkpoint("performance_rnn", root=ws))

    # Step 1's recorded loss is the base model's loss on the first batch (fresh weights give another).
    arrays = load_split([paths.processed_dir("my-playing", ws)], "train")
    cfg = train.train_config(tuned["params"]["train"], "performance_rnn")
    ids, _ = WindowSampler(arrays, cfg.window, cfg.stride, transpose=cfg.transpose, stretch=cfg.stretch,
                           seed=cfg.seed).batch(0, cfg.batch_size)
    model = base_model(ws).train()
    with torch.no_grad():
        first = model.loss(ids).item()
    assert tuned_ckpt["curve"][0] == [1, pytest.approx(first, abs=1e-5)]
    torch.manual_seed(0)
    with torch.no_grad():
        fresh = build_model("performance_rnn", MODEL).train().loss(ids).item()
    assert abs(fresh - first) > 0.1

    # On the user's phrases the fine-tuned model is better than the base.
    windows, _ = evenly_spaced_windows(arrays, cfg.window, 32)
    tuned_model = build_model("performance_rnn", MODEL)
    tuned_model.load_state_dict(tuned_ckpt["model"])
    before = mean_nll(base_model(ws).eval(), windows, None, 8, torch.device("cpu"))
    after = mean_nll(tuned_model.eval(), windows, None, 8, torch.device("cpu"))
    assert after < before - 0.2, (before, after)


def test_an_interrupted_fine_tune_resumes_its_own_weights(tuned, tmp_path):
    """init_from is read only when training starts from step 0: a resumed run ends with exactly the
    weights of the uninterrupted fine-tune."""
    ws = tuned["ws"]
    cfg = train.train_config(tuned["params"]["train"], "performance_rnn")
    folders = [paths.processed_dir("my-playing", ws)]
    arrays, val = load_split(folders, "train"), load_split(folders, "validation")
    params = {"codec": {"flavour": "magenta"}, "datasets": ["my-playing"]}
    out = Outputs(checkpoint=tmp_path / "tuned.sess")
    half = train_loop("performance_rnn", MODEL, cfg, arrays, val, out, params=params, progress=False, root=ws,
                      on_step=lambda step, loss: step == 12)
    assert half["interrupted"] and checkpoint.load(out.checkpoint)["step"] == 12
    done = train_loop("performance_rnn", MODEL, cfg, arrays, val, out, params=params, progress=False, root=ws)
    assert done["steps"] == 30
    straight = checkpoint.load(paths.checkpoint("performance_rnn", root=ws))["model"]
    resumed = checkpoint.load(out.checkpoint)["model"]
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


def test_new_phrases_start_the_fine_tune_over_from_the_base(tuned, tmp_path):
    """A finished fine-tune is not resumed on other phrases (that would train nothing): it starts again
    from the base, so `dvc repro` after the studio kept more phrases learns them."""
    ws = tmp_path / "ws"
    shutil.copytree(tuned["ws"], ws)
    folder = Path(tuned["params"]["sources"]["my-playing"]["path"])
    extra = tmp_path / "more"
    shutil.copytree(folder, extra)
    phrase(np.random.default_rng(99)).write(str(extra / "phrase-100.mid"))
    params = copy.deepcopy(tuned["params"])
    params["sources"]["my-playing"]["path"] = str(extra)
    download.run(params, ws, "my-playing")
    assert preprocess.run(params, ws, "my-playing")["files_ok"] == 13
    again = train.run(params, ws, "performance_rnn")
    assert again["steps"] == 30 and again["steps_this_run"] == 30  # not resumed at 30 with nothing to do
    ckpt = checkpoint.load(paths.checkpoint("performance_rnn", root=ws))
    assert ckpt["init_from"]["train_sha256"] != checkpoint.load(
        paths.checkpoint("performance_rnn", root=tuned["ws"]))["init_from"]["train_sha256"]


# --- refused values -----------------------------------------------------------------------------------

def _refusal(ws: Path, init_from: str, models: dict | None = None, where: str = "performance_rnn") -> str:
    config = {"sources": {"x": {"kind": "local", "path": "."}}, "datasets": ["x"], "codec": {"flavour": "magenta"},
              "models": {"performance_rnn": models or MODEL},
              "train": {"defaults": {}, where: {"init_from": init_from}}}
    with pytest.raises(UserError) as e:
        validate(config, root=ws)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_bad_init_from_values_are_refused_in_one_line_naming_the_key_and_the_file(tuned):
    ws = tuned["ws"]
    key = "params.yaml: train.performance_rnn.init_from: "
    base = checkpoint.load(ws / BASE)

    message = _refusal(ws, "base/nothing.sess")
    assert message.startswith(key) and "base/nothing.sess: not found" in message

    # int8: the playback file, not the one to train
    net = build_model("performance_rnn", MODEL)
    net.load_state_dict(base["model"])
    info = quantize_model(copy.deepcopy(net), None)
    q = copy.deepcopy(net)
    quantize_model(q, None)
    checkpoint.save(ws / "base/performance_rnn.int8.sess", {**base, "precision": "int8", "model": q.state_dict(),
                                                            "optimizer": None, "scheduler": None, "quant": info})
    message = _refusal(ws, "base/performance_rnn.int8.sess")
    assert message.startswith(key) and "int8" in message and "(performance_rnn.sess)" in message

    # another family
    torch.manual_seed(0)
    other = build_model("perceiver_ar", PerceiverARConfig(max_seq_len=32, max_latents=16, num_channels=16,
                                                          num_heads=2, num_self_attention_layers=1))
    checkpoint.save(ws / "base/perceiver.sess", {"format": checkpoint.FORMAT, "family": "perceiver_ar",
                                                 "config": dataclasses.asdict(other.config), "precision": "fp32",
                                                 "model": other.state_dict(), "step": 0})
    message = _refusal(ws, "base/perceiver.sess")
    assert message.startswith(key) and "a perceiver_ar checkpoint" in message and "base/perceiver.sess" in message

    # another architecture (a dropout rate may differ: it acts only in training)
    message = _refusal(ws, BASE, {**MODEL, "hidden_size": 48})
    assert message.startswith(key) and BASE in message and "hidden_size: 32 in the file, 48 in models" in message
    validate({"models": {"performance_rnn": {**MODEL, "dropout": 0.2}},
              "train": {"performance_rnn": {"init_from": BASE}}}, root=ws)

    # corrupt bytes: checkpoint.load's refusal, with the key in front
    (ws / "base/corrupt.sess").write_bytes((ws / BASE).read_bytes()[:2000])
    message = _refusal(ws, "base/corrupt.sess")
    assert message.startswith(key) and "base/corrupt.sess: not an amadeus checkpoint" in message

    # the stage's own output, which training replaces
    message = _refusal(ws, "save/performance_rnn.sess")
    assert message.startswith(key) and "own output" in message

    # train.defaults applies to every family; a checkpoint belongs to one
    message = _refusal(ws, BASE, where="defaults")
    assert message.startswith("params.yaml: train.defaults.init_from: ")


def test_the_train_script_stops_before_training_with_the_one_line(tuned):
    ws = tuned["ws"]
    config = copy.deepcopy(tuned["params"])
    config["train"]["performance_rnn"]["init_from"] = "base/missing.sess"
    (ws / "bad.yaml").write_text(yaml.safe_dump(config))
    before = (paths.checkpoint("performance_rnn", root=ws)).read_bytes()
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "performance_rnn", "--params",
                           "bad.yaml"], cwd=ws, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "lib")})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: params.yaml: train.performance_rnn.init_from: base/missing.sess: not found; name an fp32 .sess, "
        "e.g. a copy of save/performance_rnn.sess"]
    assert paths.checkpoint("performance_rnn", root=ws).read_bytes() == before
    assert json.loads(paths.metrics_file("train", "performance_rnn", ws).read_text())["steps"] == 30
