"""Aligned plain-text columns (rich's layout costs seconds for a thousand rows), coloured on a terminal."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TextIO

BOLD = "1"
STATE_COLOURS = {  # SGR codes
    "succeeded": "32", "running": "36", "starting": "36", "failed": "31", "backoff": "33",
    "stopping": "33", "held": "35", "cancelled": "2", "queued": "34",
}


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, never when NO_COLOR is set (https://no-color.org) or TERM is dumb."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def state_colour(text: str) -> str | None:
    """The colour of a state cell: `failed`, `backoff (4m30s)`, `queued: waiting for ...`."""
    return STATE_COLOURS.get(text.split(":")[0].split(" ")[0])


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                 paint: Callable[[int, str], str | None] | None = None) -> str:
    """`paint(column, cell)` gives an SGR code for a cell (None: plain); the header is bold with it."""
    lines = [tuple(header)] + [tuple(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    if paint is None:
        return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                         for line in lines)
    out = []
    for number, line in enumerate(lines):
        cells = []
        for column, (cell, width) in enumerate(zip(line, widths)):
            code = BOLD if number == 0 else paint(column, cell)
            cells.append(f"\x1b[{code}m{cell}\x1b[0m" + " " * (width - len(cell)) if code and cell else cell.ljust(width))
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
