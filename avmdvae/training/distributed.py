"""Device choice, distributed data parallel (under `torchrun`) and deterministic data order.

Data order is a pure function of (seed, epoch): every rank computes the same permutation of the
training items, cuts it into GLOBAL batches of `batch_size`, and rank r takes items r, r+W, r+2W...
of each global batch. A W-rank run therefore sees, step for step, exactly the items that a
single-process run with the same global batch sees, and averaged DDP gradients equal that run's
gradients up to float rounding. Resuming mid-epoch just skips the first k global batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from avmdvae.errors import ConfigError

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: CUDA if available, else MPS, else CPU. An explicit device that is absent is an error."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available: use --device cpu or auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not has_mps:
        raise ConfigError("--device mps but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by `torchrun` (RANK/WORLD_SIZE set); else single process.

    Backend: nccl for CUDA, gloo otherwise (CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), pick_device(device_name)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = pick_device(device_name, info.local_rank)
    if device.type == "mps":
        raise ConfigError("distributed training on MPS is not supported: use --device cpu or cuda")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n training items in `epoch`: a pure function of (seed, epoch). (n,) int64."""
    g = torch.Generator()
    # Large odd multiplier keeps (seed, epoch) pairs from colliding for any realistic values.
    g.manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=g)


class GlobalBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's share of each global batch of one epoch (drop_last semantics).

    batches_per_epoch = n // batch_size (capped by max_steps); `skip` global batches are skipped
    (mid-epoch resume). Each rank gets batch_size // world_size items per step.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int,
        dist_info: DistInfo,
        max_steps: int = 0,
        skip: int = 0,
    ) -> None:
        if batch_size % dist_info.world_size:
            raise ConfigError(
                f"global batch size {batch_size} is not divisible by the {dist_info.world_size} "
                "processes: change --batch-size"
            )
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.dist = dist_info
        self.skip = skip
        self.steps = steps_per_epoch(n, batch_size, max_steps)

    def __len__(self) -> int:
        return max(0, self.steps - self.skip)

    def __iter__(self) -> Iterator[list[int]]:
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        for b in range(self.skip, self.steps):
            batch = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield batch[self.dist.rank :: self.dist.world_size].tolist()


def steps_per_epoch(n: int, batch_size: int, max_steps: int = 0) -> int:
    steps = n // batch_size
    return min(steps, max_steps) if max_steps > 0 else steps


class ShardSampler(torch.utils.data.Sampler[list[int]]):
    """Validation: items in order, batch b of rank r = every W-th item; keeps ALL items (no drop)."""

    def __init__(self, n: int, batch_size: int, dist_info: DistInfo, max_batches: int = 0) -> None:
        self.n, self.batch_size, self.dist = n, batch_size, dist_info
        self.batches = -(-n // batch_size)
        if max_batches > 0:
            self.batches = min(self.batches, max_batches)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.batches):
            idx = list(range(b * self.batch_size, min(self.n, (b + 1) * self.batch_size)))
            yield idx[self.dist.rank :: self.dist.world_size]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
