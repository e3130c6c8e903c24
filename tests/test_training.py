"""The shared training loop and `.sess` checkpoints: resume, mismatch policy, outputs, signals."""

from __future__ import annotations

import json
import logging
import os
import signal

import numpy as np
import pytest
import torch
from test_performance_rnn import synthetic_piece

from amadeus import checkpoint, release_prior
from amadeus.errors import UserError
from amadeus.pipeline import paths
from amadeus.pipeline.train import train_config
from amadeus.training import Outputs, TrainConfig, lr_factor, train

MODEL = {"embed_dim": 8, "input_size": 16, "hidden_size": 16, "num_layers": 2, "dropout": 0.2,
         "control_dropout": 0.5}
PARAMS = {"codec": {"flavour": "magenta"}, "datasets": ["synthetic"]}


def tiny_config(**kw) -> TrainConfig:
    base = dict(device="cpu", cpu_precision="fp32", threads=1, window=24, stride=4, batch_size=4, max_steps=8,
                val_every=3, val_windows=3, log_every=2, warmup_steps=2, lr=5e-3, transpose=3, stretch=0.1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return [synthetic_piece(120, s) for s in range(3)], [synthetic_piece(60, 10)]


def outputs(folder) -> Outputs:
    return Outputs(checkpoint=folder / "save" / "m.sess", tensorboard=folder / "runs",
                   plots=folder / "plots.csv", val_plots=folder / "val.csv", metrics=folder / "metrics.json",
                   timings=folder / "timings.json")


def run(folder, data, cfg=None, model=MODEL, **kw):
    return train("performance_rnn", model, cfg or tiny_config(), data[0], data[1], outputs(folder),
                 params=PARAMS, progress=False, **kw)


def test_resumed_run_equals_uninterrupted_run(tmp_path, data):
    straight = run(tmp_path / "a", data)
    assert not straight["interrupted"] and straight["steps"] == 8
    half = run(tmp_path / "b", data, on_step=lambda step, loss: step == 4)
    assert half == {"interrupted": True, "steps": 4, "stopped_by": "interrupted"}
    assert checkpoint.load(tmp_path / "b/save/m.sess")["stopped_by"] == "interrupted"
    assert checkpoint.load(tmp_path / "b/save/m.sess")["step"] == 4
    resumed = run(tmp_path / "b", data)
    assert resumed["steps"] == 8
    a = checkpoint.load(tmp_path / "a/save/m.sess")
    b = checkpoint.load(tmp_path / "b/save/m.sess")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key  # exactly, dropout and augmentation included
    assert a["history"] == b["history"]
    assert (tmp_path / "a/plots.csv").read_text() == (tmp_path / "b/plots.csv").read_text()
    assert (tmp_path / "a/val.csv").read_text() == (tmp_path / "b/val.csv").read_text()
    assert (tmp_path / "a/metrics.json").read_bytes() == (tmp_path / "b/metrics.json").read_bytes()
    for key in ("train_nll", "val_nll", "unigram_nll", "parameters", "steps"):
        assert straight[key] == resumed[key]


def test_the_same_params_give_the_same_checkpoint_bytes(tmp_path, data):
    """No wall time in the checkpoint or the metrics: two runs write identical files (CPU, pinned threads)."""
    run(tmp_path / "a", data)
    run(tmp_path / "b", data)
    for name in ("save/m.sess", "metrics.json", "plots.csv", "val.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    ckpt = checkpoint.load(tmp_path / "a/save/m.sess")
    assert ckpt["stopped_by"] == "max_steps" and "wall" not in ckpt and "seconds" not in ckpt


def test_a_time_cap_that_ends_training_says_so(tmp_path, data, caplog):
    with caplog.at_level(logging.WARNING, logger="amadeus.train"):
        metrics = run(tmp_path, data, tiny_config(max_steps=10_000, max_seconds=0.5))
    assert metrics["stopped_by"] == "max_seconds" and 0 < metrics["steps"] < 10_000
    assert "STOPPED BY THE TIME CAP train.max_seconds=0.5" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped_by"] == "max_seconds"
    ckpt = checkpoint.load(tmp_path / "save/m.sess")
    assert ckpt["stopped_by"] == "max_seconds" and ckpt["wall"] >= 0.5  # the budget, summed on resume
    assert TrainConfig().max_seconds == 0  # off by default: the defaults end by max_steps


def test_outputs_metrics_plots_and_tensorboard(tmp_path, data):
    metrics = run(tmp_path, data, tiny_config(cpu_precision="bf16"))  # the autocast path runs too
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("parameters", "steps", "train_nll", "val_nll", "unigram_nll", "val_nll_controls"):
        assert key in saved and saved[key] == metrics[key]
    assert saved["stopped_by"] == "max_steps" and saved["val_nll"] < np.log(388) + 1
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["tokens_per_second"] > 0 and timings["steps_this_run"] == 8
    assert not {"seconds", "tokens_per_second", "seconds_in_steps"} & set(saved)  # measurements stay out
    # the release prior can only lower the NLL of the data it was fitted on (it starts from no bias)
    assert saved["release_prior_train_nll_after"] <= saved["release_prior_train_nll_before"]
    assert saved["release_prior_validation_events"] > 0
    rows = (tmp_path / "val.csv").read_text().splitlines()
    assert rows[0] == "step,val_nll"
    assert [int(r.split(",")[0]) for r in rows[1:]] == [3, 6, 8]  # every validation and the end
    rows = (tmp_path / "plots.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss"
    assert [int(r.split(",")[0]) for r in rows[1:]] == [2, 4, 6, 8]  # every log step
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(tmp_path, data):
    run(tmp_path, data, tiny_config(max_steps=2))
    raw = torch.load(tmp_path / "save/m.sess", weights_only=True)
    for key in ("format", "family", "config", "precision", "model", "optimizer", "scheduler", "step", "rng",
                "params", "codec"):
        assert key in raw, key
    assert raw["format"] == "amadeus.sess/1" and raw["precision"] == "fp32" and raw["codec"]["flavour"] == "magenta"
    assert isinstance(raw["rng"]["torch"], torch.Tensor)
    prior = release_prior.ReleasePrior.from_dict(raw["release_prior"])   # fitted after the last step
    assert len(prior.bias) == len(release_prior.AGE_EDGES) and any(b != 0 for b in prior.bias)
    assert raw["params"]["train"]["window"] == 24 and raw["params"]["datasets"] == ["synthetic"]
    model, ckpt = checkpoint.load_model(tmp_path / "save/m.sess")
    assert not model.training and ckpt["step"] == 2
    ids = torch.randint(0, 388, (1, 10))
    assert torch.equal(model.state_dict()["head.weight"], raw["model"]["head.weight"])
    assert model(ids).shape == (1, 10, 388)
    text = checkpoint.describe(tmp_path / "save/m.sess")
    for needle in ("performance_rnn", "step:        2", "parameters:", "hidden_size: 16", "window: 24"):
        assert needle in text, needle


def test_mismatched_checkpoint_restarts_or_stops(tmp_path, data, caplog):
    run(tmp_path, data, tiny_config(max_steps=2))
    bigger = {**MODEL, "hidden_size": 24}
    with pytest.raises(UserError, match=r"models.performance_rnn.hidden_size: 16 -> 24"):
        run(tmp_path, data, tiny_config(max_steps=4, on_mismatch="stop"), model=bigger)
    assert checkpoint.load(tmp_path / "save/m.sess")["config"]["hidden_size"] == 16  # untouched
    with caplog.at_level(logging.WARNING, logger="amadeus.train"):
        result = run(tmp_path, data, tiny_config(max_steps=3), model=bigger)
    assert "training from scratch" in caplog.text and "hidden_size" in caplog.text
    assert result["steps"] == 3  # from step 0, not resumed at 2
    assert checkpoint.load(tmp_path / "save/m.sess")["config"]["hidden_size"] == 24
    # A budget key (max_steps) may change: the run resumes and continues.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="amadeus.train"):
        assert run(tmp_path, data, tiny_config(max_steps=5), model=bigger)["steps"] == 5
    assert "resuming at step 3" in caplog.text


def test_sigterm_saves_and_stops(tmp_path, data):
    def send(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    result = run(tmp_path, data, on_step=send)
    # stopped before step 3, checkpoint saved
    assert result == {"interrupted": True, "steps": 2, "stopped_by": "interrupted"}
    assert checkpoint.load(tmp_path / "save/m.sess")["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert not (tmp_path / "metrics.json").exists()


def test_corrupt_checkpoint_is_a_user_error(tmp_path, data):
    path = tmp_path / "save/m.sess"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="m.sess: not an amadeus checkpoint"):
        run(tmp_path, data)
    torch.save({"format": "other"}, path)
    with pytest.raises(UserError, match="not an amadeus.sess/1"):
        checkpoint.load_model(path)


def test_train_config_defaults_overrides_and_errors():
    cfg = train_config({"defaults": {"lr": 0.01, "batch_size": 8}, "performance_rnn": {"lr": 0.002}},
                       "performance_rnn")
    assert cfg.lr == 0.002 and cfg.batch_size == 8
    assert train_config({"defaults": {"lr": 0.01}}, "perceiver_ar").lr == 0.01
    with pytest.raises(UserError, match=r"train.performance_rnn.lrr: unknown key"):
        train_config({"performance_rnn": {"lrr": 1}}, "performance_rnn")
    with pytest.raises(UserError, match=r"train.defaults.batch_size"):
        train_config({"defaults": {"batch_size": 0}}, "performance_rnn")
    with pytest.raises(UserError, match=r"train.rnn: unknown key"):
        train_config({"rnn": {}}, "performance_rnn")


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(15)]
    assert factors[0] == pytest.approx(0.2) and factors[3] == pytest.approx(0.8)
    assert factors[4] == pytest.approx(1.0) and factors[9] == pytest.approx(0.55)
    assert factors[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))


def test_train_stage_end_to_end(tmp_path, data):
    """stages/train.py reads its params sections and writes the checkpoint, metrics and plots."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from amadeus.data import save_events

    folder = paths.processed_dir("synth", tmp_path)
    pieces = []
    for i, (ids, split) in enumerate([(a, "train") for a in data[0]] + [(data[1][0], "validation")]):
        save_events(folder / f"p{i}.data", ids)
        pieces.append({"name": f"p{i}", "file": f"p{i}.data", "split": split, "events": len(ids)})
    (folder / "manifest.json").write_text(json.dumps({"pieces": pieces, "skipped": []}))
    params = {"datasets": ["synth"], "codec": {"flavour": "magenta"},
              "models": {"performance_rnn": MODEL},
              "train": {"defaults": {"device": "cpu", "cpu_precision": "fp32", "threads": 1, "window": 24,
                                     "batch_size": 4, "val_windows": 3},
                        "performance_rnn": {"max_steps": 3, "val_every": 2}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = Path(__file__).resolve().parents[1] / "stages/train.py"
    done = subprocess.run([sys.executable, str(stage), "performance_rnn"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "CI": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(paths.metrics_file("train", "performance_rnn", tmp_path).read_text())
    assert metrics["steps"] == 3 and metrics["val_nll"] > 0
    assert paths.plots_file("performance_rnn", tmp_path).read_text().startswith("step,train_loss\n")
    assert paths.plots_file("performance_rnn", tmp_path, "val_nll").read_text().startswith("step,val_nll\n")
    headline = json.loads(paths.headline_file("train", "performance_rnn", tmp_path).read_text())
    assert headline["val_nll"] == metrics["val_nll"] and headline["stopped_by"] == "max_steps"
    assert set(headline) <= {"val_nll", "val_nll_controls", "train_nll", "unigram_nll", "parameters", "steps",
                             "stopped_by"}
    assert json.loads(paths.timings_file("train", "performance_rnn", tmp_path).read_text())["steps_this_run"] == 3
    ckpt = checkpoint.load(paths.checkpoint("performance_rnn", root=tmp_path))
    assert ckpt["params"]["datasets"] == ["synth"] and ckpt["codec"] == {"flavour": "magenta"}
    params["train"]["performance_rnn"]["bogus"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, str(stage), "performance_rnn"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "CI": "1"}, timeout=120)
    assert done.returncode == 2 and "train.performance_rnn.bogus: unknown key" in done.stderr
