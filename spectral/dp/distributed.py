"""Data-parallel DP steps on torch.distributed (launched by ``torchrun``).

Every rank draws the same logical batch (a function of seed and step) and clips its share of it;
the clipped sums are all-reduced, then one noise draw is added. The draw is the same on every rank
(their noise generators are restored from rank 0's state), so every rank applies the same update
and the clipped sum is the whole batch's: the store's ``clipped`` stream is the single-process one.

Opacus' ``DistributedDPOptimizer`` adds the noise on rank 0 and all-reduces the noised gradient
instead; the clipped sum of the batch then never exists anywhere, and logging it would cost a
second all-reduce of d values. :class:`SumOverRanksBeforeNoise` keeps one all-reduce and logs it.
Accounting is unchanged: the logical batch is the union over ranks, Poisson-sampled at rate q.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ..errors import SpectralError


@dataclass(frozen=True)
class Group:
    """This process's place in a ``torchrun`` job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes the store, evaluates and prints."""
        return self.rank == 0


SINGLE = Group(rank=0, world_size=1, local_rank=0)


def launched_world_size() -> int:
    """The world size ``torchrun`` set in the environment (1 for a plain ``python -m``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 for a plain ``python -m``)."""
    return int(os.environ.get("RANK", "0"))


def join(device: torch.device, timeout_minutes: float = 30) -> tuple[Group, torch.device]:
    """Join the job ``torchrun`` started (gloo on CPUs, NCCL on GPUs); each rank gets its local GPU.

    Returns ``(SINGLE, device)`` outside torchrun. ``timeout_minutes`` bounds how long a rank waits
    for the others in one collective (evaluation on rank 0 and checkpoint writes must fit in it).
    """
    world = launched_world_size()
    if world <= 1:
        return SINGLE, device
    rank, local = launched_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise SpectralError(
                f"rank {rank}: local rank {local} has no GPU (this node has {torch.cuda.device_count()}); "
                "start at most one process per GPU"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(minutes=timeout_minutes),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return Group(rank, world, local), device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def share(obj, group: Group):
    """Rank 0's ``obj`` on every rank (small settings and, on resume, the training state: pickled
    between the job's own processes, never read from a file)."""
    if group.world_size == 1:
        return obj
    box = [obj if group.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_of(indices: np.ndarray, lengths: np.ndarray, group: Group) -> np.ndarray:
    """This rank's part of a logical batch: the batch sorted by length and dealt round-robin, so every
    rank gets the same number of examples (±1) and of padded tokens."""
    if group.world_size == 1:
        return indices
    return indices[np.argsort(lengths[indices], kind="stable")][group.rank :: group.world_size]


def seed_dropout(seed: int, step: int, group: Group) -> None:
    """Seed this rank's dropout for ``step`` from (seed, step, rank) alone, so that a resumed job
    draws the masks the uninterrupted one would have (with the same number of ranks)."""
    torch.manual_seed(int(np.random.SeedSequence([seed, step, group.rank]).generate_state(1)[0]))


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of a few numbers over ranks (float64)."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def sum_over_ranks_tensor(x: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``x`` over ranks (a new tensor)."""
    out = x.clone()
    dist.all_reduce(out)
    return out


def gather_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The concatenation over ranks of 1-d tensors of different lengths (the batch's per-example norms)."""
    n = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


class SumOverRanksBeforeNoise:
    """Opacus optimizer mixin: all-reduce the clipped sums, then add the (rank-identical) noise once."""

    def add_noise(self):
        for p in self.params:
            dist.all_reduce(p.summed_grad)
        super().add_noise()


def data_parallel_class(optimizer_class: type) -> type:
    """``optimizer_class`` (an Opacus DP optimizer) with :class:`SumOverRanksBeforeNoise` in front."""
    return type(f"DataParallel{optimizer_class.__name__}", (SumOverRanksBeforeNoise, optimizer_class), {})
