"""`Step`: the micro-batches of one optimizer step, pulled lazily from the DataLoader."""

from __future__ import annotations

from typing import Any, Callable, Iterator


class Step:
    """Iterate it once; `len(step)` is how many micro-batches it has (scale the loss by it).

    `index` is this step's 0-based place in the epoch and `of` the epoch's true number of
    optimizer steps, both counted over the whole epoch even after a mid-epoch resume.
    """

    def __init__(self, iterator: Iterator[Any], size: int, on_pull: Callable[[], None],
                 index: int = 0, of: int = 0) -> None:
        self.size = size
        self.index = index
        self.of = of
        self.pulled = 0
        self._iterator = iterator
        self._on_pull = on_pull

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Any]:
        while self.pulled < self.size:
            try:
                batch = next(self._iterator)
            except StopIteration:
                self.size = self.pulled
                return
            self.pulled += 1
            self._on_pull()
            yield batch
