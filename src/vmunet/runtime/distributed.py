"""Data-parallel training on PyTorch's own engine (torchrun + DistributedDataParallel).

``torchrun --nproc_per_node N -m vmunet train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; we join the
process group (NCCL on CUDA, gloo on CPU) with a finite timeout, so a dead rank ends the job with an
error instead of a hang. Every rank sees the same epoch permutation and takes every world-th sample.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from vmunet.runtime.device import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str, timeout_minutes: float = 30.0) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; returns (DistInfo, this rank's device)."""
    if not launched_by_torchrun():
        return DistInfo(), resolve_device(device_name)
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return info, device


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """True when the value is finite on every rank (so all ranks stop together on a NaN)."""
    flag = torch.isfinite(value.detach()).all().float().reshape(1)
    if info.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def mean_over_ranks(total: float, count: int, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return total / max(count, 1)
    pair = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(pair)
    return (pair[0] / pair[1].clamp(min=1)).item()


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, split across ranks as rank, rank + world, ...

    With one process it is a plain shuffled order; with N processes, batch k of every rank together holds
    the samples of batch k of one process with an N times larger batch (the same data order).
    The permutation is padded by repetition to a multiple of the world size, as DistributedSampler does.
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1):
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.length // self.world_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        padding = len(self) * self.world_size - self.length
        order += order[:padding]
        return iter(order[self.rank::self.world_size])


def check_replicas_in_sync(model: torch.nn.Module, info: DistInfo, device: torch.device) -> None:
    """Raise if the ranks' parameters differ (a cheap per-epoch guard: one checksum per parameter tensor)."""
    if not info.enabled:
        return
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)
    gathered = [torch.empty_like(sums) for _ in range(info.world_size)]
    dist.all_gather(gathered, sums)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise RuntimeError(f"model replicas diverged: rank {rank}'s parameters differ from rank 0's")
