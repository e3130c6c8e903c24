"""Data-parallel training under torchrun (amadeus.distributed, docs/distributed.md): 2 gloo processes on
the CPU follow the one-process run, resume after a rank is stopped, and the launch's pure logic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_performance_rnn import synthetic_piece

from amadeus import checkpoint, distributed
from amadeus.data import save_events
from amadeus.errors import UserError
from amadeus.pipeline import paths
from amadeus.pipeline.params_check import validate

STAGE = Path(__file__).resolve().parents[1] / "stages/train.py"
# No random draws in the forward pass (dropout 0; Perceiver AR windows of max_latents events, so no random
# prefix length): each rank makes those draws for its own rows, and then only the windows match one process.
RNN = {"embed_dim": 8, "input_size": 16, "hidden_size": 16, "num_layers": 2, "dropout": 0.0, "control_dropout": 0.0}
PERCEIVER = {"vocab_size": 389, "pad_id": 388, "max_seq_len": 24, "max_latents": 8, "num_channels": 16,
             "num_heads": 2, "num_self_attention_layers": 1, "cross_attention_dropout": 0.0}
TRAIN = {"device": "cpu", "cpu_precision": "fp32", "threads": 1, "window": 24, "stride": 4, "batch_size": 8,
         "max_steps": 20, "warmup_steps": 2, "lr": 5e-3, "val_every": 10, "val_windows": 3, "log_every": 1,
         "release_prior_events": 50}
RTOL = 1e-5  # per-step loss, 2 processes vs 1 (measured: at most 2e-7 in 20 steps)
ATOL_WEIGHTS = 1e-5  # final weights (measured: at most 1e-7)


def workspace(folder: Path, family: str, model: dict, **train: object) -> Path:
    """A workspace as the pipeline leaves it before train@family: processed data and params.yaml."""
    processed = paths.processed_dir("synth", folder)
    pieces = []
    arrays = [(synthetic_piece(160, s), "train") for s in range(4)] + [(synthetic_piece(60, 10), "validation")]
    for i, (ids, split) in enumerate(arrays):
        save_events(processed / f"p{i}.data", ids)
        pieces.append({"name": f"p{i}", "file": f"p{i}.data", "split": split, "events": len(ids)})
    (processed / "manifest.json").write_text(json.dumps({"pieces": pieces, "skipped": []}))
    params = {"datasets": ["synth"], "codec": {"flavour": "magenta"}, "models": {family: model},
              "train": {"defaults": {**TRAIN, **train}}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def stage(folder: Path, family: str, **kw) -> subprocess.Popen:
    """stages/train.py as DVC starts it; nproc in params.yaml decides whether it goes under torchrun."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_KEYS}
    env.update(CI="1", OMP_NUM_THREADS="1")  # 2 ranks x 1 thread on 2 cores
    return subprocess.Popen([sys.executable, str(STAGE), family], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def trained(folder: Path, family: str) -> dict:
    return checkpoint.load(paths.checkpoint(family, root=folder))


def assert_same_run(one: dict, two: dict) -> float:
    """The same loss at every step (within RTOL) and the same final weights; returns the worst step's
    relative difference."""
    a, b = np.array(one["curve"]), np.array(two["curve"])
    assert a.shape == b.shape and np.array_equal(a[:, 0], b[:, 0])
    np.testing.assert_allclose(b[:, 1], a[:, 1], rtol=RTOL)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=0, atol=ATOL_WEIGHTS, msg=key)
    return float(np.max(np.abs(b[:, 1] - a[:, 1]) / np.abs(a[:, 1])))


@pytest.mark.parametrize("family,model", [("performance_rnn", RNN), ("perceiver_ar", PERCEIVER)])
def test_two_processes_follow_one_process(tmp_path, family, model):
    """batch_size 8 is the global batch: 2 ranks of 4 windows take the steps 1 process of 8 takes."""
    extra = {"window": PERCEIVER["max_latents"]} if family == "perceiver_ar" else {}
    one = workspace(tmp_path / "one", family, model, **extra)
    two = workspace(tmp_path / "two", family, model, nproc=2, **extra)
    code, out = finish(stage(one, family))
    assert code == 0, out
    code, out = finish(stage(two, family))
    assert code == 0, out
    assert "2 processes (gloo), 4 windows each per step" in out
    a, b = trained(one, family), trained(two, family)
    assert a["step"] == b["step"] == 20 and b["processes"] == 2 and b["params"]["train"]["nproc"] == 2
    worst = assert_same_run(a, b)
    print(f"{family}: worst per-step loss difference {worst:.2e} (relative)")
    # rank 0 alone wrote the outputs, with the same validation figures
    metrics = json.loads(paths.metrics_file("train", family, two).read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 20
    assert metrics["val_nll"] == pytest.approx(json.loads(paths.metrics_file("train", family, one).read_text())
                                               ["val_nll"], abs=2e-4)
    assert json.loads(paths.headline_file("train", family, two).read_text())["steps"] == 20


def workers(torchrun_pid: int) -> dict[int, int]:
    """rank -> pid of the workers torchrun started (read from /proc: their parent and RANK)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours
        if ppid == torchrun_pid and "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


# dropout on: a resumed run must redraw exactly the masks of the uninterrupted one (seeded by step and rank)
RESUMED = {"max_steps": 60, "save_every_seconds": 0.001, "nproc": 2}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    folder = workspace(tmp_path_factory.mktemp("straight"), "performance_rnn", {**RNN, "dropout": 0.2}, **RESUMED)
    code, out = finish(stage(folder, "performance_rnn"))
    assert code == 0, out
    return trained(folder, "performance_rnn")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_rank_resumes_where_the_uninterrupted_run_ends(tmp_path, uninterrupted, sig):
    """SIGTERM to rank 1 alone: rank 0 saves at the same step and both stop. SIGKILL: rank 0 fails in the
    all-reduce, and the last periodic save is the checkpoint. Either way a rerun ends as the uninterrupted run."""
    folder = workspace(tmp_path, "performance_rnn", {**RNN, "dropout": 0.2}, **RESUMED)
    proc = stage(folder, "performance_rnn")  # the stage execs torchrun: proc.pid is torchrun's
    sess = paths.checkpoint("performance_rnn", root=folder)
    deadline = time.monotonic() + 60
    while not (sess.exists() and checkpoint.load(sess)["step"] >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    os.kill(workers(proc.pid)[1], sig)
    code, out = finish(proc)
    assert code != 0, out  # not done: DVC must not record the stage
    stopped = trained(folder, "performance_rnn")
    assert 5 <= stopped["step"] < RESUMED["max_steps"], out
    if sig == signal.SIGTERM:
        assert stopped["stopped_by"] == "interrupted" and "stopped by a stop on another process" in out
    assert not paths.metrics_file("train", "performance_rnn", folder).exists()
    code, out = finish(stage(folder, "performance_rnn"))
    assert code == 0, out
    assert f"resuming at step {stopped['step']}" in out
    resumed = trained(folder, "performance_rnn")
    assert resumed["step"] == RESUMED["max_steps"]
    worst = assert_same_run(uninterrupted, resumed)
    print(f"{sig.name} at step {stopped['step']}: worst per-step loss difference {worst:.2e}")


def test_params_gate_refuses_a_bad_nproc():
    for value, message in ((0, r"train.defaults.nproc: .*0"), ("two", r"train.defaults.nproc"),
                           (True, r"train.defaults.nproc")):
        with pytest.raises(UserError, match=message) as e:
            validate({"train": {"defaults": {"nproc": value}}})
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"train.performance_rnn.nproc: 3 does not divide batch_size 16"):
        validate({"train": {"defaults": {"batch_size": 16}, "performance_rnn": {"nproc": 3}}})
    validate({"train": {"defaults": {"batch_size": 16, "nproc": 4}}})  # a divisor passes


def test_a_launch_whose_world_does_not_divide_the_batch_is_refused(tmp_path, monkeypatch):
    """torchrun by hand with 2 processes and batch_size 3: one line before any process group is made."""
    from amadeus.training import Outputs, TrainConfig, train

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = TrainConfig(device="cpu", batch_size=3, window=24, max_steps=1)
    with pytest.raises(UserError, match=r"train.performance_rnn.batch_size: 3 does not divide by 2 processes"):
        train("performance_rnn", RNN, cfg, [synthetic_piece(100, 0)], [synthetic_piece(60, 1)],
              Outputs(checkpoint=tmp_path / "m.sess"), progress=False)
    assert not torch.distributed.is_initialized()


def test_launch_from_torchrun_environment():
    assert distributed.launch_from_env({}) is None
    assert distributed.launch_from_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None  # one process
    launch = distributed.launch_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert launch == distributed.Launch(rank=3, world_size=4, local_rank=1) and not launch.is_main
    assert distributed.launch_from_env({"RANK": "0", "WORLD_SIZE": "2"}).is_main
    with pytest.raises(UserError, match="outside a world of 2"):
        distributed.launch_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(UserError, match="expected integers"):
        distributed.launch_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    assert distributed.under_torchrun({"RANK": "0"}) and not distributed.under_torchrun({})


def test_backend_and_device_follow_the_device_and_local_rank():
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.device_for(torch.device("cuda"), 3, cuda_devices=4) == torch.device("cuda", 3)
    assert distributed.device_for(torch.device("cpu"), 3, cuda_devices=0) == torch.device("cpu")
    with pytest.raises(UserError, match="LOCAL_RANK 2 but this machine has 2 CUDA device"):
        distributed.device_for(torch.device("cuda"), 2, cuda_devices=2)


def test_ranks_take_disjoint_slices_that_make_the_global_batch():
    batch = torch.arange(24).reshape(8, 3)
    slices = [distributed.Launch(rank=r, world_size=4, local_rank=r).shard(batch) for r in range(4)]
    assert torch.equal(torch.cat(slices), batch) and all(len(s) == 2 for s in slices)
    assert distributed.Launch(rank=1, world_size=2, local_rank=0).shard(None) is None
    assert distributed.check_batch(16, 4, "k") == 4
    with pytest.raises(UserError, match=r"^k.batch_size: 16 does not divide by 3 processes"):
        distributed.check_batch(16, 3, "k")
    seeds = {distributed.step_seed(0, step, rank) for step in range(3) for rank in range(2)}
    assert len(seeds) == 6 and distributed.step_seed(0, 1, 1) == distributed.step_seed(0, 1, 1)
    assert all(0 <= s < 2**63 for s in seeds)  # torch.manual_seed's range


def test_the_stage_relaunches_itself_under_torchrun():
    command = distributed.torchrun_command(4, "stages/train.py", ["perceiver_ar", "--params", "p.yaml"])
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                       "stages/train.py", "perceiver_ar", "--params", "p.yaml"]
