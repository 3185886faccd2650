"""Human forms of durations and sizes: `30s`, `5m`, `1h30m`, `20GiB`. Stdlib only."""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|d)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Seconds in `value`: a number of seconds or a string like `1h30m`, `250ms`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value.strip().lower())
    else:
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _parse_duration_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"'{text}' is not a duration such as 30s, 5m or 1h30m")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def parse_size(value: object) -> int:
    """Bytes in `value`: a number of bytes or a string like `20GiB`, `512MB`."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 20GiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if not match or match.group(2) not in _SIZE_UNITS:
            raise ValueError(f"'{value}' is not a size such as 512MiB or 20GiB")
        number = float(match.group(1))
        if not math.isfinite(number) or number > 2**63:
            raise ValueError(f"'{value}' is too large a size")
        size = int(number * _SIZE_UNITS[match.group(2)])
    else:
        raise ValueError("expected a size such as 512MiB or 20GiB")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


LONGEST_SHOWN_S = 365 * 86400


def format_span(seconds: float) -> str:
    """Any duration, however long: `format_duration` below two days, `3d04h` up to a year,
    `over a year` beyond (a backoff or ETA that long is a mistake, not a plan)."""
    if seconds != seconds or seconds >= LONGEST_SHOWN_S:  # NaN or absurd
        return "over a year"
    if seconds < 2 * 86400:
        return format_duration(max(0.0, seconds))
    days, rest = divmod(int(seconds), 86400)
    return f"{days}d{rest // 3600:02d}h"


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that keeps one digit before the point: `100 TiB`, `1.5 GiB`."""
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if value == int(value) or unit == "B" else f"{value:.1f} {unit}"
