"""A sampler whose order is a function of (seed, epoch) and that can start mid-epoch."""

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
    """

    def __init__(self, data_source: Sized | int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.num_samples = data_source if isinstance(data_source, int) else len(data_source)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise OptionError(f"The start sample {start} is outside the epoch of {self.num_samples} samples.")
        self.start = start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        key = hashlib.sha256(f"{self.seed}:{self.epoch}".encode()).digest()
        generator = torch.Generator()
        generator.manual_seed(int.from_bytes(key[:8], "little") >> 1)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
