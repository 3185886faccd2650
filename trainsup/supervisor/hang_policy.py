"""The pure policy that calls an attempt hung, from its heartbeats (see `contracts.Heartbeat`).

Heartbeat times are the wall clock (the writer is another process), so `now` and
`attempt_started_at` given to `is_hung` are wall-clock times too.

The hang policy follows NVIDIA's fault-tolerance launcher (nvidia-resiliency-ext,
`FaultToleranceConfig` and `TimeoutsCalc`): a long timeout for the first heartbeat
(`initial_rank_heartbeat_timeout`), then either a fixed timeout
(`rank_heartbeat_timeout`) or one calculated as `safety_factor` × the longest interval
seen between heartbeats. Like NVRx's checkpointing section, the checkpoint phase has
its own timeout, as heartbeats stop while saving. The defaults live in the job spec
(`HeartbeatPolicy`), nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from trainsup.jobs.spec import HeartbeatPolicy

# Phases whose silences the calculated timeout judges, and so the phases it learns from.
STEADY_PHASES = frozenset({"train", "eval"})


@dataclass(frozen=True)
class HangPolicy:
    """Timeouts in seconds. `calibration_gaps`: intervals needed before calculating.

    A job that has never written a heartbeat (a script without the trainer library) is
    not judged unless `expect_heartbeats` says it will write them.
    """

    fixed_timeout: float | None
    first_timeout: float
    checkpoint_timeout: float
    safety_factor: float
    min_timeout: float
    calibration_gaps: int = 3
    expect_heartbeats: bool = False

    @classmethod
    def of(cls, spec: HeartbeatPolicy) -> "HangPolicy":
        """The policy a job's `heartbeat:` section asks for."""
        return cls(fixed_timeout=spec.timeout, first_timeout=spec.first_timeout,
                   checkpoint_timeout=spec.checkpoint_timeout, safety_factor=spec.safety_factor,
                   min_timeout=spec.min_timeout)

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
