"""`Step`: the micro-batches of one optimizer step, pulled lazily from the DataLoader."""

from __future__ import annotations

from typing import Any, Callable, Iterator


class Step:
    """Iterate it once; `len(step)` is how many micro-batches it has (scale the loss by it)."""

    def __init__(self, iterator: Iterator[Any], size: int, on_pull: Callable[[], None]) -> None:
        self.size = size
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
