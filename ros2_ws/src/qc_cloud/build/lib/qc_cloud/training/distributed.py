"""Training that outgrows one machine: the same `qc_cloud train` under PyTorch's own launcher.

    torchrun --nproc-per-node 2 -m qc_cloud.cli train --data DIR --out PKG        # 2 processes, one host
    torchrun --nnodes 2 --node-rank R --master-addr HOST --nproc-per-node 4 -m qc_cloud.cli train ...

torchrun sets WORLD_SIZE / RANK / MASTER_ADDR...; `World.from_environment()` joins the process group (NCCL on
GPUs, gloo on CPUs; this machine tests two CPU processes with gloo). What each part of a run does then:
- feature cache (Phase I) and validation: every process scores its share of the images (every size-th, by the
  image's index, so the augmentation draws are the very ones one process would make) and the shares are summed
  into the full array on every process: Phase I then runs identically everywhere, as in one process;
- Phase II: DistributedDataParallel; every global batch (batch_size images, the same permutation on every
  process) is split between the processes, gradients are averaged, so one step sees what one process sees;
- decisions that depend on the clock (the time budget) are taken by rank 0 and broadcast, so no process leaves
  a collective operation the others still wait in;
- rank 0 alone exports, evaluates and writes the package; the others wait for it and return.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> World:
        """The process group torchrun describes in the environment (joined once), or a single process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return cls(rank=dist.get_rank(), size=dist.get_world_size())

    def share(self, indices: Sequence[int]) -> list[int]:
        """This process's share of `indices` (every size-th, from its rank)."""
        return list(indices)[self.rank :: self.size]

    def sum_rows(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over the processes (each filled its own rows, zeros elsewhere): the full array."""
        if not self.active:
            return array
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.numpy()

    def agree(self, value: float) -> float:
        """Rank 0's value on every process (for decisions taken from the clock)."""
        if not self.active:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()
