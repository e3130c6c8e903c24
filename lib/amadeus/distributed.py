"""Data-parallel training: torch DistributedDataParallel in processes started by torchrun.

    torchrun --nproc_per_node 2 stages/train.py performance_rnn     # or train.<family>.nproc: 2

What the training loop (amadeus.training) relies on, semantics in docs/distributed.md:

- A launch is recognised from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). Without it, or
  with a world of one process, there is no launch and training is exactly the one-process loop.
- Backend NCCL on CUDA, gloo on CPU; one GPU per process, `cuda:<LOCAL_RANK>`.
- `batch_size` is the global batch: every rank draws the same seeded batch and keeps its own rows
  (`Launch.shard`), so N processes see exactly the windows one process sees at each step.
- Dropout is drawn per rank from a seed of (seed, step, rank): resumable at any step, and not the same
  masks on every rank.
- Collectives: `Group.stop_votes` (any rank's stop or time cap stops all ranks at the same step) and
  `Group.mean` (the loss logged is the global batch's).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from amadeus.errors import UserError

# torchrun's environment (https://docs.pytorch.org/docs/stable/elastic/run.html#environment-variables)
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch of `world_size` > 1 processes."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the checkpoint, metrics, plots and TensorBoard."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor | None) -> torch.Tensor | None:
        """This rank's rows of a global batch: disjoint, contiguous, equal slices (rank 0 the first)."""
        if batch is None:
            return None
        rows = batch.shape[0] // self.world_size
        return batch[self.rank * rows:(self.rank + 1) * rows]


def under_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Started by torchrun (or any launcher that sets RANK): the stage must not launch torchrun again."""
    return "RANK" in (os.environ if environ is None else environ)


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """torchrun's launch, or None without one or with a world of one process (the one-process loop)."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local = int(environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise UserError(f"torchrun environment: {', '.join(f'{k}={environ.get(k)!r}' for k in ENV_KEYS)}: "
                        "expected integers") from None
    if world <= 1:
        return None
    if not 0 <= rank < world or local < 0:
        raise UserError(f"torchrun environment: RANK {rank}, LOCAL_RANK {local}: outside a world of {world}")
    return Launch(rank=rank, world_size=world, local_rank=local)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes (the backends torch recommends for each)."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(device: torch.device, local_rank: int, cuda_devices: int) -> torch.device:
    """The device of the process with `local_rank` on its machine: one GPU each, the CPU shared."""
    if device.type != "cuda":
        return device
    if local_rank >= cuda_devices:
        raise UserError(f"torchrun: LOCAL_RANK {local_rank} but this machine has {cuda_devices} CUDA device(s); "
                        "start at most one process per GPU (--nproc_per_node)")
    return torch.device("cuda", local_rank)


def check_batch(batch_size: int, world_size: int, key: str) -> int:
    """The rows per rank of the global `batch_size`; a UserError naming `key` when it does not divide."""
    if batch_size % world_size:
        raise UserError(f"{key}.batch_size: {batch_size} does not divide by {world_size} processes (it is the "
                        f"global batch, split evenly); choose a multiple of {world_size}")
    return batch_size // world_size


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of `rank` at `step`: dropout that is reproducible by step (exact resume) and differs
    between ranks (the same masks on every shard would correlate them)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def torchrun_command(nproc: int, script: str, args: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node <nproc> script args`: one machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            script, *args]


class Group:
    """The default process group of a launch, with the few collectives the training loop needs."""

    def __init__(self, launch: Launch, device: torch.device):
        self.launch, self.device = launch, device

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def stop_votes(self, stop: bool, capped: bool) -> tuple[bool, bool]:
        """(any rank stopping, any rank past its time cap): every rank gets the same answer, so all of them
        leave the loop after the same step."""
        votes = torch.tensor([float(stop), float(capped)], device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return bool(votes[0].item()), bool(votes[1].item())

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over ranks (each rank's loss is the mean of its equal share of the batch)."""
        total = value.detach().float().reshape(1).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.item() / self.launch.world_size


@contextlib.contextmanager
def process_group(launch: Launch | None, device: torch.device) -> Iterator[Group | None]:
    """Join the launch's process group for the block (None without a launch); a group someone else made
    (a caller already inside DDP) is used as it is and left for them to destroy."""
    if launch is None:
        yield None
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL uses the current device
    made = not dist.is_initialized()
    if made:
        dist.init_process_group(backend=backend_for(device))
    try:
        yield Group(launch, device)
    finally:
        if made:
            dist.destroy_process_group()


__all__ = ["Group", "Launch", "backend_for", "check_batch", "device_for", "launch_from_env", "process_group",
           "step_seed", "torchrun_command", "under_torchrun"]
