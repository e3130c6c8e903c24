"""The training loop shared by every model family (it only calls `model.loss`).

    cfg = TrainConfig(max_steps=100)
    train("performance_rnn", {"hidden_size": 256}, cfg, train_arrays, val_arrays, Outputs(checkpoint=path))

The train stage (amadeus.pipeline.train) builds the config from params.yaml and names the outputs.

- Batches: random windows of `window + 1` events (stride, augmentation, controls: amadeus.windows),
  reproducible by step; validation on evenly spaced windows of the validation split (amadeus.nll).
- AdamW (weight decay on matrices only), linear warm-up then cosine decay to `min_lr_ratio * lr`,
  gradient-norm clipping; bf16 autocast on CUDA, and on CPU when `cpu_bf16` is set.
- Stops at `max_steps`; a user may also set `max_seconds` (wall time summed over resumed runs, off by
  default), and when that cap ends a run it says so loudly: a warning, `stopped_by: max_seconds` in the
  metrics and in the checkpoint (else `max_steps`, or `interrupted` for a signal or `on_step`).
- The checkpoint and the metrics are functions of the data and params only (no wall time, so the same
  params give the same bytes on a slower machine); timings (seconds, tokens/s) go to `Outputs.timings`.
- Under torchrun (amadeus.distributed, docs/distributed.md): DDP, `batch_size` the global batch split
  among the ranks, rank 0 validates and writes, stops and the time cap decided by all ranks together.
- Saves the `.sess` atomically every `save_every_seconds`, at the end, and on SIGINT/SIGTERM; a rerun
  resumes from it and (on CPU) ends with exactly the weights of an uninterrupted run.
- Resuming is refused for a checkpoint made with other model config, codec, datasets or data/optimiser
  params (every `train` key except the budget keys in `BUDGET_KEYS`): with `on_mismatch: restart`
  (default, what a `dvc repro` after a params change wants) the differences are logged and training
  starts fresh; with `on_mismatch: stop` it ends with a UserError naming them.
- Fine-tuning: `init_from` names an fp32 `.sess` of the same family and architecture; its weights
  replace the fresh ones before step 0, while the optimizer, schedule and step count start fresh. A
  resumed run keeps its own weights (the base is read only when training starts from step 0), and
  the checkpoint records the base (`init_from`: path, sha256, its step, and the sha256 of the train
  events, so that new phrases or a changed base start the fine-tune over). Null changes nothing.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amadeus import checkpoint, distributed, release_prior
from amadeus.data import sha256_file
from amadeus.errors import UserError
from amadeus.fileio import atomic_open, write_json
from amadeus.hardware import resolve_device
from amadeus.models import build_config, build_model, parameter_count
from amadeus.nll import mean_nll
from amadeus.params import Invalid, as_dict, knob, seed_knob
from amadeus.windows import WindowSampler, evenly_spaced_windows, unigram_nll

log = logging.getLogger("amadeus.train")


@dataclass
class TrainConfig:
    """params.yaml `train.defaults` (the defaults here are its values), overridden per family."""

    device: str = knob("auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when present, else CPU")
    cpu_precision: str = knob("auto", choices=("auto", "bf16", "fp32"),
                              help="auto: bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX)")
    cuda_bf16: bool = knob(True, help="bf16 autocast on CUDA")
    threads: int = knob(2, min=0, help="torch CPU threads, pinned (sums reproducible); 0 = torch's default")
    nproc: int = knob(1, min=1, help="processes (one per GPU) the train stage starts under torchrun; "
                      "batch_size is the global batch and must divide by it (docs/distributed.md)")
    seed: int = seed_knob(0)
    window: int | None = knob(200, min=1, help="events per window; null = the model's context_length")
    stride: int = knob(10, min=1, help="window starts are multiples of this")
    batch_size: int = knob(16, min=1)
    lr: float = knob(3e-3, gt=0)
    min_lr_ratio: float = knob(0.1, min=0, max=1, help="cosine decays to lr * this at max_steps")
    warmup_steps: int = knob(30, min=0)
    weight_decay: float = knob(0.01, min=0)
    beta1: float = knob(0.9, min=0, lt=1)
    beta2: float = knob(0.99, min=0, lt=1)
    grad_clip: float = knob(1.0, min=0, help="max gradient norm; 0 = no clipping")
    transpose: int = knob(3, min=0, max=12, help="random transposition up to +-this many semitones")
    stretch: float = knob(0.05, min=0, lt=0.5, help="random time stretch by a factor in 1 +- this")
    max_steps: int = knob(1200, min=1)
    max_seconds: float = knob(0.0, min=0, help="wall-time cap, summed over resumed runs; 0 = off (the result "
                              "then depends on the machine's speed: stopped_by says when it hit)")
    release_prior_events: int = knob(3000, min=0, help="events per train piece the release prior is fitted "
                                     "on after training (amadeus.release_prior); 0 = none")
    val_every: int = knob(200, min=1, help="steps between validations")
    val_windows: int = knob(64, min=1, help="evenly spaced validation windows (and train windows for train_nll)")
    log_every: int = knob(10, min=1, help="steps between TensorBoard points")
    save_every_seconds: float = knob(60.0, gt=0)
    on_mismatch: str = knob("restart", choices=("restart", "stop"),
                            help="what to do with a checkpoint made with other params")
    init_from: str | None = knob(None, help="an fp32 .sess (same family and architecture) whose weights "
                                 "training starts from, with a fresh optimizer and step count; relative "
                                 "to the workspace; null = fresh weights")

    def check(self) -> None:
        if self.batch_size % self.nproc:
            raise Invalid(f"nproc: {self.nproc} does not divide batch_size {self.batch_size} (the global batch, "
                          f"split evenly among the processes); choose a batch_size that is a multiple of it")


# Keys that may change between a run and its resumption (they do not define the model or data; nproc
# splits the same global batch, docs/distributed.md).
BUDGET_KEYS = ("device", "cpu_precision", "cuda_bf16", "threads", "nproc", "max_steps", "max_seconds", "val_every",
               "val_windows", "log_every", "save_every_seconds", "on_mismatch", "release_prior_events")


@dataclass
class Outputs:
    checkpoint: Path
    tensorboard: Path | None = None  # runs/<family>/ (event files are named by time and host: not a DVC output)
    plots: Path | None = None        # train loss every log_every steps: step,train_loss
    val_plots: Path | None = None    # validation NLL every val_every steps and at the end: step,val_nll
    metrics: Path | None = None      # results (functions of data and params)
    timings: Path | None = None      # measurements of this run: seconds, tokens/s (machine-dependent)


def autocast(device: torch.device, cfg: TrainConfig) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and cfg.cuda_bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and (cfg.cpu_precision == "bf16" or (cfg.cpu_precision == "auto" and cpu_has_bf16())):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def cpu_has_bf16() -> bool:
    """Native bf16 dot products (x86 AVX512-BF16 or AMX): where bf16 autocast speeds CPU training up.

    Measured here (AMD EPYC with avx512_bf16, torch 2.13, 1 thread, 2x256 GRU, batch 32, window
    200): 1.9x the fp32 step, and the same validation NLL after 100 steps (4.114 vs 4.110). Without
    native support bf16 is emulated and slower, so auto stays fp32 there.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine down to min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Decay matrices only; biases and norm gains are not weights to shrink (as nanoGPT does).
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _train_params(cfg: TrainConfig) -> dict:
    """The train params a checkpoint stores: init_from only when set and nproc only above 1, so that a run
    without them writes the same bytes as before the keys existed (and resumes the checkpoints made then)."""
    values = as_dict(cfg)
    if values["init_from"] is None:
        del values["init_from"]
    if values["nproc"] == 1:
        del values["nproc"]
    return values


def _identity(family: str, model_cfg: dict, cfg: TrainConfig, params: Mapping[str, Any],
              base: dict | None = None) -> dict:
    """What a checkpoint must share with the current params to be resumed (and, fine-tuning, the base file)."""
    train_keys = {k: v for k, v in _train_params(cfg).items() if k not in BUDGET_KEYS}
    extra = {k: params.get(k) for k in ("codec", "datasets")}
    return {"family": family, f"models.{family}": model_cfg, "train": train_keys, **extra,
            **({"init_from": base} if base else {})}


# Model config keys a fine-tune may change: they act only in training (dropout) or at initialisation.
_TUNABLE = ("init_scale",)


def load_init(cfg: TrainConfig, family: str, model_cfg: Mapping[str, Any], *, root: str | os.PathLike = ".",
              codec: Mapping[str, Any] | None = None, output: str | os.PathLike | None = None
              ) -> tuple[dict, dict] | None:
    """The weights `cfg.init_from` names and the record the checkpoint keeps of them, or None when unset.

    Refused, in one line naming the key and the file: a missing file, anything checkpoint.load refuses
    (corrupt, foreign, code), an int8 file, another family, another architecture than `model_cfg`
    (dropout rates may differ), another codec flavour, and `output` itself (training replaces it)."""
    if cfg.init_from is None:
        return None
    key = f"params.yaml: train.{family}.init_from"
    path = Path(cfg.init_from).expanduser()
    path = path if path.is_absolute() else Path(root) / path
    if not path.is_file():
        raise UserError(f"{key}: {path}: not found; name an fp32 .sess, e.g. a copy of save/{family}.sess")
    if output is not None and path.resolve() == Path(output).resolve():
        raise UserError(f"{key}: {path} is this stage's own output, which training replaces; copy it first "
                        f"(e.g. to save/{family}.base.sess) and name the copy")
    try:
        base = checkpoint.load(path)
    except UserError as e:  # checkpoint.load's one line names the file and what is wrong
        raise UserError(f"{key}: {e}") from None
    if base.get("precision", "fp32") != "fp32":
        fp32 = path.name.replace(".int8.sess", ".sess")
        raise UserError(f"{key}: {path}: an int8 checkpoint (rounded weights for playback); fine-tune from "
                        f"the fp32 one ({fp32})")
    if base["family"] != family:
        raise UserError(f"{key}: {path}: a {base['family']} checkpoint; train.{family} needs a {family} one")
    theirs = as_dict(build_config(family, base["config"]))
    diffs = [f"{k}: {theirs.get(k)!r} in the file, {v!r} in models.{family}" for k, v in model_cfg.items()
             if "dropout" not in k and k not in _TUNABLE and _plain(theirs.get(k)) != _plain(v)]
    if diffs:
        raise UserError(f"{key}: {path}: another architecture than models.{family} ({'; '.join(diffs[:3])}); "
                        f"set models.{family} to the checkpoint's config (`amadeus info {path}` prints it)")
    flavour = (base.get("codec") or {}).get("flavour", "magenta")
    wanted = (codec or {}).get("flavour")
    if wanted is not None and flavour != wanted:
        raise UserError(f"{key}: {path}: learned the {flavour!r} codec flavour, not codec.flavour {wanted!r}")
    record = {"path": cfg.init_from, "sha256": sha256_file(path), "step": int(base.get("step", 0))}
    return base["model"], record


def _arrays_sha256(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        digest.update(b"|")  # piece boundaries count
    return digest.hexdigest()


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif _plain(a) != _plain(b):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _plain(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


class _StopFlag:
    """Set by SIGINT/SIGTERM (or the on_step hook); the loop saves and returns at the next step."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if self.reason is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name


@contextlib.contextmanager
def _signals(flag: _StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, flag.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _Board:
    """TensorBoard scalars, or nothing when tensorboard is unavailable or not asked for."""

    def __init__(self, folder: Path | None, purge_step: int | None):
        self.writer = None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is a dependency; never fail a run for its logs
            log.warning("TensorBoard logging off (%s)", e)
            return
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def add(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(family: str, model_config: Mapping[str, Any] | Any, cfg: TrainConfig,
          train_arrays: list[np.ndarray], val_arrays: list[np.ndarray], out: Outputs, *,
          params: Mapping[str, Any] | None = None, progress: bool = True,
          on_step: Callable[[int, float], bool | None] | None = None, root: str | os.PathLike = ".") -> dict:
    """Train (or resume) `family` and return the metrics; see the module docstring.

    `params`: further params.yaml sections the run depends on (`codec`, `datasets`), stored in the
    checkpoint and compared on resume. `on_step(step, loss)` returning True stops the run as a
    signal would (the checkpoint is saved; the result has `interrupted` set; no metrics written).
    `root`: the folder a relative `cfg.init_from` is read from (the workspace).
    """
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    launch = distributed.launch_from_env()  # torchrun's environment; None: the one-process loop
    try:
        device = resolve_device(cfg.device, "params.yaml: train.device")
        if launch is not None:
            device = distributed.device_for(device, launch.local_rank, torch.cuda.device_count())
            distributed.check_batch(cfg.batch_size, launch.world_size, f"params.yaml: train.{family}")
        with distributed.process_group(launch, device) as group:
            return _train(family, model_config, cfg, train_arrays, val_arrays, out, dict(params or {}), progress,
                          on_step, Path(root), device, group)
    finally:
        torch.set_num_threads(threads)


class _Loss(nn.Module):
    """`model.loss` as a forward: DDP averages the gradients of what runs through its wrapper's forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, ctrl: torch.Tensor | None) -> torch.Tensor:
        return self.model.loss(ids, ctrl) if ctrl is not None else self.model.loss(ids)


def _train(family: str, model_config: Mapping[str, Any] | Any, cfg: TrainConfig, train_arrays: list[np.ndarray],
           val_arrays: list[np.ndarray], out: Outputs, params: dict, progress: bool,
           on_step: Callable[[int, float], bool | None] | None, root: Path, device: torch.device,
           group: distributed.Group | None) -> dict:
    launch = group.launch if group is not None else None
    main = launch is None or launch.is_main  # the one process that writes files
    config = build_config(family, model_config)
    model_cfg = as_dict(config)
    # Read before the seed is set, so a fine-tune draws exactly the random numbers a fresh run draws.
    init = load_init(cfg, family, model_cfg, root=root, codec=params.get("codec"), output=out.checkpoint)
    base = init[1] if init else None
    torch.manual_seed(cfg.seed)
    model = build_model(family, config).to(device)
    window = cfg.window or getattr(model, "context_length", None)
    if not window:
        raise UserError(f"params.yaml: train.{family}.window: required ({family} has no context_length)")
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    if base:
        # A fine-tune is defined by its base and its few phrases: new phrases start it over from the base
        # instead of resuming a finished run (runs without init_from keep comparing params only).
        base = {**base, "train_sha256": _arrays_sha256(train_arrays)}
    identity = _identity(family, model_cfg, cfg, params, base)
    # seconds: time in this run's training steps (for tokens/s); wall: that plus validation and saving,
    # summed over resumed runs (the max_seconds budget; kept in the checkpoint only when a cap is set).
    # history: [step, train_loss, val_nll] per validation; curve: [step, train_loss] per log step.
    state = {"step": 0, "seconds": 0.0, "wall": 0.0, "history": [], "curve": [], "acc": [0.0, 0],
             "log_acc": [0.0, 0], "stopped_by": None}
    resumed = out.checkpoint.exists() and _resume(out.checkpoint, identity, cfg, model, optimizer, scheduler, state)
    if init and not resumed:  # a resumed fine-tune keeps its own weights
        model.load_state_dict(init[0])
        log.info("%s: starting from the weights of %s (step %d of its run)", family, cfg.init_from, base["step"])
    first_step = state["step"]
    trainer: nn.Module | None = None
    if group is not None:
        group.barrier()  # every rank has read the checkpoint before rank 0 may replace it
        # After loading: DDP starts every rank from rank 0's weights (the same file's here).
        trainer = nn.parallel.DistributedDataParallel(
            _Loss(model), device_ids=[device.index] if device.type == "cuda" else None)

    uses_controls = bool(getattr(model, "uses_controls", False))
    sampler = WindowSampler(train_arrays, window, cfg.stride, transpose=cfg.transpose, stretch=cfg.stretch,
                            controls=uses_controls, seed=cfg.seed)
    if sampler.n_windows == 0:
        raise UserError(f"train split: no piece has {window + 1} events; add data or lower train.window")
    val_ids, val_ctrl = evenly_spaced_windows(val_arrays, window, cfg.val_windows, controls=uses_controls)
    if len(val_ids) == 0:
        raise UserError(f"validation split: no piece has {window + 1} events; add data or lower train.window")
    train_ids, _ = evenly_spaced_windows(train_arrays, window, cfg.val_windows)
    unigram = unigram_nll(train_arrays, val_ids)

    def amp() -> contextlib.AbstractContextManager:
        return autocast(device, cfg)

    def validate(final: bool = False) -> dict:
        # Unconditioned NLL (comparable across families); with controls only at the end (saves time).
        result = {"val_nll": mean_nll(model, val_ids, None, cfg.batch_size, device, amp)}
        if uses_controls and final:
            result["val_nll_controls"] = mean_nll(model, val_ids, val_ctrl, cfg.batch_size, device, amp)
        return result

    def save() -> None:
        checkpoint.save(out.checkpoint, {
            "format": checkpoint.FORMAT, "family": family, "config": model_cfg, "precision": "fp32",
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": state["step"], "rng": checkpoint.rng_state(),
            "params": {"train": _train_params(cfg), f"models.{family}": model_cfg,
                       **{k: v for k, v in params.items() if v is not None}},
            "codec": dict(params.get("codec") or {}),
            "history": state["history"], "curve": state["curve"], "acc": list(state["acc"]),
            "log_acc": list(state["log_acc"]), "window": window, "stopped_by": state["stopped_by"],
            **({"wall": state["wall"]} if cfg.max_seconds else {}),
            **({"release_prior": state["release_prior"]} if state.get("release_prior") else {}),
            **({"init_from": base} if base else {}),
            **({"processes": launch.world_size} if launch else {}),
        })

    tokens_per_step = cfg.batch_size * (window + 1)
    board = _Board(out.tensorboard if main else None, purge_step=state["step"] or None)
    board.add("val/unigram_nll", unigram, state["step"])
    stop = _StopFlag()
    bar = _progress(progress and main, cfg.max_steps, state["step"])
    votes = [False]  # with several ranks: whether the last vote stopped the run

    def running() -> bool:
        stopping, capped = stop.reason is not None, bool(cfg.max_seconds) and state["wall"] >= cfg.max_seconds
        if group is not None:
            # One rank's signal (or its clock past max_seconds) ends the run of every rank after the same step.
            stopping, capped = group.stop_votes(stopping, capped)
            votes[0] = stopping
            if stopping and stop.reason is None:
                stop.reason = "a stop on another process"
        return state["step"] < cfg.max_steps and not capped and not stopping

    last_save = time.monotonic()
    model.train()
    log.info("%s: %s parameters, window %d, batch %d, %d train windows, %d validation windows, device %s%s",
             family, f"{parameter_count(model):,}", window, cfg.batch_size, sampler.n_windows, len(val_ids),
             device, " (bf16 autocast)" if not isinstance(amp(), contextlib.nullcontext) else "")
    if launch is not None and main:
        log.info("%s: %d processes (%s), %d windows each per step; rank 0 validates and writes", family,
                 launch.world_size, distributed.backend_for(device), cfg.batch_size // launch.world_size)
    with _signals(stop):
        while running():
            t0 = time.perf_counter()
            ids, ctrl = sampler.batch(state["step"], cfg.batch_size)
            if launch is not None:
                # Every rank draws the global batch and keeps its rows; dropout seeded by step and rank.
                ids, ctrl = launch.shard(ids), launch.shard(ctrl)
                torch.manual_seed(distributed.step_seed(cfg.seed, state["step"], launch.rank))
            ids = ids.to(device, non_blocking=True)
            ctrl = ctrl.to(device, non_blocking=True) if ctrl is not None else None
            lr = scheduler.get_last_lr()[0]
            with amp():
                if trainer is not None:
                    loss = trainer(ids, ctrl)
                else:
                    loss = model.loss(ids, ctrl) if ctrl is not None else model.loss(ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            optimizer.step()
            scheduler.step()
            value = loss.detach().item() if group is None else group.mean(loss)  # the global batch's loss
            if not math.isfinite(value):
                raise UserError(f"{family}: training loss became {value} at step {state['step']}; "
                                "lower train.lr or raise train.warmup_steps")
            dt = time.perf_counter() - t0
            state["step"] += 1
            state["seconds"] += dt
            state["acc"][0] += value
            state["acc"][1] += 1
            state["log_acc"][0] += value
            state["log_acc"][1] += 1
            step = state["step"]
            bar.update(1)
            if step % cfg.log_every == 0:
                total, n = state["log_acc"]
                state["curve"].append([step, total / n])  # mean loss of the steps since the last point
                state["log_acc"] = [0.0, 0]
                bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{tokens_per_step / dt:,.0f}")
                board.add("train/loss", value, step)
                board.add("train/lr", lr, step)
                board.add("train/grad_norm", float(grad_norm), step)
                board.add("train/tokens_per_second", tokens_per_step / dt, step)
            if step % cfg.val_every == 0 and main:  # the others go on to the next step's all-reduce
                _record(state, validate(), board)
            if on_step is not None and on_step(step, value):
                stop.reason = "on_step"
            if time.monotonic() - last_save >= cfg.save_every_seconds:
                if main:
                    save()
                last_save = time.monotonic()
            state["wall"] += time.perf_counter() - t0
    bar.close()
    if group is not None and not votes[0]:
        stop.reason = None  # a signal after the last vote: the ranks finish together, as voted
    if stop.reason is not None:
        state["stopped_by"] = "interrupted"
        if main:
            save()
        board.close()
        if group is not None:
            group.barrier()  # the others wait for the save: torchrun stops every worker once one exits non-zero
        log.warning("%s: stopped by %s at step %d; checkpoint saved to %s (rerun to resume)",
                    family, stop.reason, state["step"], out.checkpoint)
        return {"interrupted": True, "steps": state["step"], "stopped_by": "interrupted"}
    state["stopped_by"] = "max_steps" if state["step"] >= cfg.max_steps else "max_seconds"
    if state["stopped_by"] == "max_seconds":
        log.warning("%s: STOPPED BY THE TIME CAP train.max_seconds=%g at step %d of %d: this result depends "
                    "on the machine's speed (set max_seconds: 0 to end by max_steps)", family, cfg.max_seconds,
                    state["step"], cfg.max_steps)
    if not main:  # rank 0 validates, fits the release prior and writes the outputs
        return {"steps": state["step"], "stopped_by": state["stopped_by"], "interrupted": False, "rank": launch.rank}
    final = validate(final=True)  # deterministic: equals the row recorded at this step, if any
    if not state["history"] or state["history"][-1][0] != state["step"]:
        _record(state, final, board)
    prior_figures = {}
    if cfg.release_prior_events:
        prior, prior_figures = release_prior.fit_model(model, train_arrays, val_arrays, cfg.release_prior_events,
                                                       device)
        state["release_prior"] = prior.as_dict()
    save()
    board.close()
    metrics = {
        "parameters": parameter_count(model),
        "steps": state["step"],
        "stopped_by": state["stopped_by"],
        "train_nll": round(mean_nll(model, train_ids, None, cfg.batch_size, device, amp), 4),
        "val_nll": round(final["val_nll"], 4),
        "unigram_nll": round(unigram, 4),
    }
    if uses_controls:
        metrics["val_nll_controls"] = round(final["val_nll_controls"], 4)
    metrics.update({f"release_prior_{k}": v for k, v in prior_figures.items()})
    if base:
        metrics["init_from"] = cfg.init_from
    metrics["device"] = str(device)
    if launch is not None:
        metrics["processes"] = launch.world_size
    timings = {"steps_this_run": state["step"] - first_step, "seconds_in_steps": round(state["seconds"], 2),
               "tokens_per_second": round((state["step"] - first_step) * tokens_per_step
                                          / max(state["seconds"], 1e-9), 1),
               "wall_seconds_summed": round(state["wall"], 2) if cfg.max_seconds else None}
    _write_outputs(out, state, metrics, timings)
    log.info("%s: step %d (stopped by %s), val_nll %.4f (unigram %.4f), %.0f tokens/s", family, metrics["steps"],
             metrics["stopped_by"], metrics["val_nll"], metrics["unigram_nll"], timings["tokens_per_second"])
    return {**metrics, **timings, "interrupted": False}


def _record(state: dict, val: dict, board: _Board) -> None:
    """One plots row: step, mean train loss since the last row, validation NLL."""
    total, n = state["acc"]
    train_loss = total / n if n else None
    state["history"].append([state["step"], train_loss, val["val_nll"]])
    state["acc"] = [0.0, 0]
    for key, value in val.items():
        board.add(f"val/{key}", value, state["step"])


def _resume(path: Path, identity: dict, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, state: dict) -> bool:
    """Load `path` into the run when it was made with the same identity; False when training starts fresh."""
    ckpt = checkpoint.load(path)
    old_params = ckpt.get("params") or {}
    old_train = {k: v for k, v in (old_params.get("train") or {}).items() if k not in BUDGET_KEYS}
    old = {"family": ckpt.get("family"), f"models.{identity['family']}": ckpt.get("config"), "train": old_train,
           **{k: old_params.get(k) for k in ("codec", "datasets")}, "init_from": ckpt.get("init_from")}
    if ckpt.get("precision", "fp32") != "fp32":
        diffs = [f"precision: {ckpt.get('precision')!r} (only fp32 checkpoints are trained)"]
    else:
        diffs = _differences(old, identity)
    if diffs:
        what = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        if cfg.on_mismatch == "stop":
            raise UserError(f"{path}: made with other params ({what}); delete it or set "
                            f"train.on_mismatch: restart")
        log.warning("%s: made with other params (%s): training from scratch; it is replaced at the first save",
                    path, what)
        return False
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    checkpoint.set_rng_state(ckpt["rng"])
    state.update(step=int(ckpt["step"]), wall=float(ckpt.get("wall", 0.0)),
                 history=[list(r) for r in ckpt.get("history", [])], curve=[list(r) for r in ckpt.get("curve", [])],
                 acc=list(ckpt.get("acc", [0.0, 0])), log_acc=list(ckpt.get("log_acc", [0.0, 0])))
    log.info("%s: resuming at step %d", path, state["step"])
    return True


def _progress(enabled: bool, total: int, initial: int) -> Any:
    from tqdm import tqdm

    quiet = not enabled or bool(os.environ.get("CI"))
    return tqdm(total=total, initial=initial, disable=quiet, unit="step", dynamic_ncols=True)


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_open(path, "w") as f:
        f.write(buf.getvalue())


def _write_outputs(out: Outputs, state: dict, metrics: dict, timings: dict) -> None:
    if out.plots is not None:
        _write_csv(out.plots, ["step", "train_loss"], [[step, f"{loss:.5f}"] for step, loss in state["curve"]])
    if out.val_plots is not None:
        _write_csv(out.val_plots, ["step", "val_nll"], [[step, f"{val:.5f}"] for step, _, val in state["history"]])
    if out.metrics is not None:
        write_json(out.metrics, metrics)
    if out.timings is not None:
        write_json(out.timings, timings)


__all__ = ["BUDGET_KEYS", "Outputs", "TrainConfig", "autocast", "load_init", "lr_factor", "make_optimizer",
           "train"]
