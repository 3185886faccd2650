"""Heartbeat files and the pure policy that calls an attempt hung.

Contract: TRAINSUP_HEARTBEAT names a directory; each process of a job replaces
`<dir>/rank-<N>.json` (temp file + `os.replace`, at most 4 times a second) with::

    {"time": 1718000000.5, "step": 1200, "epoch": 3, "phase": "train",
     "loss": 1.93, "samples_per_s": 812.4, "max_memory_bytes": 9663676416, "pid": 4242}

`time` is the wall clock (the writer is another process), so `now` and
`attempt_started_at` given to `is_hung` are wall-clock times too.

The hang policy follows NVIDIA's fault-tolerance launcher (nvidia-resiliency-ext,
`FaultToleranceConfig` and `TimeoutsCalc`): a long timeout for the first heartbeat
(`initial_rank_heartbeat_timeout`, default 3600 s), then either a fixed timeout
(`rank_heartbeat_timeout`, default 2700 s) or one calculated as `safety_factor`
(default 5.0) × the longest interval seen between heartbeats. Like NVRx's checkpointing
section, the checkpoint phase has its own timeout, as heartbeats stop while saving.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

PHASES = ("start", "train", "eval", "checkpoint")
# Phases whose silences the calculated timeout judges, and so the phases it learns from.
STEADY_PHASES = frozenset({"train", "eval"})
_FILE = re.compile(r"rank-(\d+)\.json")


@dataclass(frozen=True)
class Heartbeat:
    rank: int
    time: float
    step: int
    epoch: int
    phase: str
    pid: int
    loss: float | None = None
    samples_per_s: float | None = None
    max_memory_bytes: int | None = None
    total_steps: int | None = None  # the run's length, for the ETA in `trainsup status`

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        del payload["rank"]
        return payload


def write_heartbeat(directory: Path, beat: Heartbeat) -> None:
    """Replace `<directory>/rank-<N>.json` with `beat` (no fsync: a heartbeat is not durable)."""
    path = directory / f"rank-{beat.rank}.json"
    tmp = directory / f".rank-{beat.rank}.json.tmp-{os.getpid()}"
    data = json.dumps(beat.to_json())
    try:
        tmp.write_text(data)
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(data)
    os.replace(tmp, path)


def read_heartbeats(directory: Path) -> list[Heartbeat]:
    """Every readable heartbeat in `directory`, by rank; missing or garbled files are skipped."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    beats = []
    for name in names:
        match = _FILE.fullmatch(name)
        if match is None:
            continue
        try:
            payload = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        beat = _parse(int(match.group(1)), payload)
        if beat is not None:
            beats.append(beat)
    return sorted(beats, key=lambda b: b.rank)


def latest(beats: Iterable[Heartbeat]) -> Heartbeat | None:
    return max(beats, key=lambda b: b.time, default=None)


def _parse(rank: int, payload: Any) -> Heartbeat | None:
    if not isinstance(payload, Mapping):
        return None
    time, step, epoch, pid = (payload.get(k) for k in ("time", "step", "epoch", "pid"))
    phase = payload.get("phase")
    if not _is_number(time) or not math.isfinite(time) or phase not in PHASES:
        return None
    if not (_is_int(step) and _is_int(pid) and (epoch is None or _is_int(epoch))):
        return None
    return Heartbeat(
        rank=rank,
        time=float(time),
        step=step,
        epoch=epoch or 0,
        phase=phase,
        pid=pid,
        loss=_optional_float(payload.get("loss")),
        samples_per_s=_optional_float(payload.get("samples_per_s")),
        max_memory_bytes=payload.get("max_memory_bytes") if _is_int(payload.get("max_memory_bytes")) else None,
        total_steps=payload.get("total_steps") if _is_int(payload.get("total_steps")) else None,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optional_float(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


@dataclass(frozen=True)
class HangPolicy:
    """Timeouts in seconds. `calibration_gaps`: intervals needed before calculating.

    A job that has never written a heartbeat (a script without the trainer library) is
    not judged unless `expect_heartbeats` says it will write them.
    """

    fixed_timeout: float | None = None
    first_timeout: float = 3600.0
    checkpoint_timeout: float = 1800.0
    safety_factor: float = 5.0
    min_timeout: float = 60.0
    calibration_gaps: int = 3
    expect_heartbeats: bool = False

    def __post_init__(self) -> None:
        timeouts = [self.first_timeout, self.checkpoint_timeout, self.min_timeout, self.safety_factor]
        if self.fixed_timeout is not None:
            timeouts.append(self.fixed_timeout)
        if min(timeouts) <= 0:
            raise ValueError("hang timeouts and the safety factor must be positive")


@dataclass(frozen=True)
class HangTracker:
    """What the daemon keeps about a job's heartbeats, across attempts.

    `last_beat` / `last_phase` / `beats` belong to the current attempt; `ever_beat`,
    `gaps` and `longest_gap` (intervals ending a train or eval phase) cover all attempts.
    """

    attempt_started_at: float | None = None
    last_beat: float | None = None
    last_phase: str | None = None
    beats: int = 0
    gaps: int = 0
    longest_gap: float = 0.0
    ever_beat: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HangTracker:
        """The tracker saved by `to_dict`; unknown keys are ignored, missing ones default."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class HangVerdict:
    """`timeout` is which one fired: first, checkpoint, fixed or calculated."""

    timeout: str
    limit: float
    silence: float
    phase: str | None

    def describe(self) -> str:
        during = f"during {self.phase}" if self.phase else "since the attempt started"
        return (
            f"no heartbeat for {self.silence:.0f} s {during}, "
            f"past the {self.timeout} timeout of {self.limit:.0f} s."
        )


def new_attempt(tracker: HangTracker, started_at: float) -> HangTracker:
    """Forget the previous attempt's last beat, keep the calibration.

    Call it when an attempt starts and when a restarted daemon re-adopts one, so a
    silence the daemon did not watch is not learnt as an interval between heartbeats.
    """
    return replace(tracker, attempt_started_at=started_at, last_beat=None, last_phase=None, beats=0)


def observe(tracker: HangTracker, beat_time: float, phase: str) -> HangTracker:
    """The tracker after seeing a heartbeat; repeated, stale and earlier beats change nothing."""
    if tracker.last_beat is not None and beat_time <= tracker.last_beat:
        return tracker
    if tracker.attempt_started_at is not None and beat_time < tracker.attempt_started_at:
        return tracker
    gaps, longest = tracker.gaps, tracker.longest_gap
    if tracker.last_beat is not None and tracker.last_phase in STEADY_PHASES:
        gaps += 1
        longest = max(longest, beat_time - tracker.last_beat)
    return HangTracker(
        attempt_started_at=tracker.attempt_started_at,
        last_beat=beat_time,
        last_phase=phase,
        beats=tracker.beats + 1,
        gaps=gaps,
        longest_gap=longest,
        ever_beat=True,
    )


def current_timeout(tracker: HangTracker, policy: HangPolicy, attempt_started_at: float) -> tuple[str, float]:
    """Which timeout applies now and its length in seconds."""
    if _last_beat(tracker, attempt_started_at) is None or tracker.last_phase == "start":
        return "first", policy.first_timeout
    if tracker.last_phase == "checkpoint":
        return "checkpoint", policy.checkpoint_timeout
    if policy.fixed_timeout is not None:
        return "fixed", policy.fixed_timeout
    if tracker.gaps >= policy.calibration_gaps:
        return "calculated", max(policy.min_timeout, policy.safety_factor * tracker.longest_gap)
    return "first", policy.first_timeout


def is_hung(tracker: HangTracker, policy: HangPolicy, attempt_started_at: float, now: float) -> HangVerdict | None:
    """A verdict if the attempt has been silent longer than the timeout that applies.

    `attempt_started_at` and `now` are wall-clock seconds, like heartbeat times.
    """
    if not (tracker.ever_beat or policy.expect_heartbeats):
        return None
    last = _last_beat(tracker, attempt_started_at)
    silence = now - (attempt_started_at if last is None else last)
    which, limit = current_timeout(tracker, policy, attempt_started_at)
    if silence <= limit:
        return None
    return HangVerdict(which, limit, silence, tracker.last_phase if last is not None else None)


def _last_beat(tracker: HangTracker, attempt_started_at: float) -> float | None:
    if tracker.last_beat is None or tracker.last_beat < attempt_started_at:
        return None
    return tracker.last_beat
