"""Human durations and sizes, table-driven."""

from __future__ import annotations

import pytest

from trainsup.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("10sec", 10.0),
        ("2min", 120.0),
        ("5 m", 300.0),
        ("  30S  ", 30.0),
        ("1H30M", 5400.0),
        ("45", 45.0),
        ("0.5", 0.5),
        ("0s", 0.0),
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
    ],
)
def test_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    [
        "5 parsecs",
        "",
        "   ",
        "s",
        "m30",
        "5x",
        "1h30",
        "-5s",
        "5s-",
        ".5s",
        "1,5s",
        "5 5s",
        "five minutes",
        -1,
        -0.5,
        True,
        False,
        None,
        [30],
        {"s": 30},
    ],
)
def test_bad_duration(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_negative_duration_says_so() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-5)


@pytest.mark.parametrize("bad", ["nan", "inf", "infinity", float("nan"), float("inf")])
def test_non_finite_duration(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    "text, size",
    [
        ("20GiB", 20 * 2**30),
        ("512MB", 512 * 10**6),
        ("512MiB", 512 * 2**20),
        ("1k", 1024),
        ("1K", 1024),
        ("1kb", 1000),
        ("1KiB", 1024),
        ("2g", 2 * 2**30),
        ("1t", 2**40),
        ("1TB", 10**12),
        ("1.5k", 1536),
        ("20 GiB", 20 * 2**30),
        (" 7 ", 7),
        ("100b", 100),
        ("0", 0),
        (4096, 4096),
        (0, 0),
    ],
)
def test_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "bad",
    ["lots", "", "GiB", "20 gigabytes", "20PiB", "-1k", "1k1", "1,5k", -1, 1.5, True, None, ["1k"]],
)
def test_bad_size(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_huge_size_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_size("9" * 400 + "k")


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (90, "1m30s"), (3600, "1h00m"), (5400, "1h30m"), (90000, "25h00m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("size, text", [(0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (20 * 2**30, "20 GiB"),
                                        (int(1.5 * 2**30), "1.5 GiB"), (100 * 2**40, "100 TiB")])
def test_format_size_reads_like_the_sizes_users_write(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text.replace(" ", "")) == size
