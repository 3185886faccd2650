"""A sampler whose order is a function of (seed, epoch) and that can start mid-epoch.

Under `torch.distributed` (or with `num_replicas`/`rank` given) it shards the epoch the
way `DistributedSampler` does: the epoch's seeded order, padded by repeating its start to
a multiple of the world size, of which rank `r` takes `order[r::world]`. Positions
(`set_start`, `start`) are always GLOBAL sample positions in that padded order, so a
checkpoint's position means the same thing whichever rank wrote it.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Sized

import torch
from torch.utils.data import Sampler

from trainsup.trainer.errors import OptionError


class ResumableSampler(Sampler[int]):
    """Yields dataset indices in an order fixed by `(seed, epoch)`, from sample `start` on.

    The session sets the epoch and the start before each epoch, so a resumed run
    skips exactly the samples already consumed, whatever the micro-batch size.
    `num_replicas`/`rank` default to the initialized `torch.distributed` group (1/0
    without one); `drop_last` drops the tail instead of padding, as DistributedSampler.
    """

    def __init__(self, data_source: Sized | int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False) -> None:
        self.num_samples = data_source if isinstance(data_source, int) else len(data_source)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0
        world, me = _group()
        self.num_replicas = world if num_replicas is None else num_replicas
        self.rank = me if rank is None else rank
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise OptionError(f"rank {self.rank} is not one of the {self.num_replicas} replicas.")
        self.drop_last = drop_last
        world = self.num_replicas
        if world == 1:
            self.total_size = self.num_samples
        elif drop_last:
            self.total_size = self.num_samples // world * world
        else:
            self.total_size = -(-self.num_samples // world) * world

    @property
    def rank_samples(self) -> int:
        """How many samples this rank takes in a whole epoch."""
        return self.total_size // self.num_replicas

    @property
    def rank_start(self) -> int:
        """Where this rank starts in its shard: the global start, rounded down to whole rounds of all ranks."""
        return self.start // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Start the epoch at global sample position `start` (0 … `total_size`)."""
        if not 0 <= start <= self.total_size:
            raise OptionError(f"The start sample {start} is outside the epoch of {self.total_size} samples.")
        self.start = start

    def order(self) -> list[int]:
        """The whole epoch's global order (padded or cut to `total_size` when sharded)."""
        if not self.shuffle:
            indices = list(range(self.num_samples))
        else:
            key = hashlib.sha256(f"{self.seed}:{self.epoch}".encode()).digest()
            generator = torch.Generator()
            generator.manual_seed(int.from_bytes(key[:8], "little") >> 1)
            indices = torch.randperm(self.num_samples, generator=generator).tolist()
        if self.total_size > len(indices) and indices:
            padding = self.total_size - len(indices)
            indices += (indices * -(-padding // len(indices)))[:padding]
        return indices[:self.total_size]

    def __iter__(self) -> Iterator[int]:
        if self.num_replicas == 1:
            return iter(self.order()[self.start:])
        return iter(self.order()[self.rank::self.num_replicas][self.rank_start:])

    def __len__(self) -> int:
        return self.rank_samples - self.rank_start


def _group() -> tuple[int, int]:
    """(world size, rank) of the initialized default process group; (1, 0) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0
