"""Heartbeat files and the hang policy, with explicit times (no sleeping, no clock)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainsup.contracts import Heartbeat, read_heartbeats, write_heartbeat
from trainsup.contracts import latest_heartbeat as latest
from trainsup.jobs.spec import HeartbeatPolicy
from trainsup.supervisor.hang_policy import (
    HangPolicy,
    HangTracker,
    HangVerdict,
    current_timeout,
    is_hung,
    new_attempt,
    observe,
)

T0 = 1_700_000_000.0  # the attempt starts; wall-clock seconds
POLICY = HangPolicy(fixed_timeout=None, first_timeout=600, checkpoint_timeout=300, safety_factor=5, min_timeout=60)
EXPECTING = HangPolicy(fixed_timeout=None, first_timeout=600, checkpoint_timeout=300, safety_factor=5, min_timeout=60,
                       expect_heartbeats=True)


def beat(rank: int = 0, time: float = T0, phase: str = "train", step: int = 1) -> Heartbeat:
    return Heartbeat(rank=rank, time=time, step=step, epoch=0, phase=phase, pid=100 + rank)


# --- files ---------------------------------------------------------------------------


def test_write_then_read(tmp_path: Path) -> None:
    full = Heartbeat(1, T0 + 2.5, 1200, 3, "eval", 4242, 1.93, 812.4, 9663676416)
    write_heartbeat(tmp_path / "hb", full)
    write_heartbeat(tmp_path / "hb", beat(0))
    assert read_heartbeats(tmp_path / "hb") == [beat(0), full]
    on_disk = json.loads((tmp_path / "hb" / "rank-1.json").read_text())
    assert on_disk == {"time": T0 + 2.5, "step": 1200, "epoch": 3, "phase": "eval", "loss": 1.93,
                       "samples_per_s": 812.4, "max_memory_bytes": 9663676416, "pid": 4242, "total_steps": None}
    assert sorted(p.name for p in (tmp_path / "hb").iterdir()) == ["rank-0.json", "rank-1.json"]


def test_total_steps_round_trips(tmp_path: Path) -> None:
    with_total = Heartbeat(0, T0, 10, 0, "train", 4242, total_steps=500)
    write_heartbeat(tmp_path, with_total)
    assert read_heartbeats(tmp_path) == [with_total]


def test_rewriting_replaces(tmp_path: Path) -> None:
    write_heartbeat(tmp_path, beat(0, T0, step=1))
    write_heartbeat(tmp_path, beat(0, T0 + 1, step=2))
    assert read_heartbeats(tmp_path) == [beat(0, T0 + 1, step=2)]


def test_missing_directory_has_no_beats(tmp_path: Path) -> None:
    assert read_heartbeats(tmp_path / "nope") == []


@pytest.mark.parametrize(
    "name, content",
    [
        ("rank-1.json", '{"time": 1700000000.0, "step": 3, "epo'),  # partial write
        ("rank-2.json", "\x00\xff garbage"),
        ("rank-3.json", "[1, 2]"),
        ("rank-4.json", '{"time": "soon", "step": 1, "phase": "train", "pid": 1}'),
        ("rank-5.json", '{"time": 1.0, "step": 1, "phase": "sleeping", "pid": 1}'),
        ("rank-6.json", '{"time": 1.0, "step": true, "phase": "train", "pid": 1}'),
        ("rank-7.json", '{"time": NaN, "step": 1, "phase": "train", "pid": 1}'),
        ("rank-8.json", '{"step": 1, "phase": "train", "pid": 1}'),
        ("rank-x.json", '{"time": 1.0, "step": 1, "phase": "train", "pid": 1}'),
        (".rank-0.json.tmp-99", '{"time": 1.0, "step": 1, "phase": "train", "pid": 1}'),
    ],
)
def test_garbage_is_skipped(tmp_path: Path, name: str, content: str) -> None:
    write_heartbeat(tmp_path, beat(0))
    (tmp_path / name).write_text(content)
    assert read_heartbeats(tmp_path) == [beat(0)]


def test_optional_fields_are_lenient(tmp_path: Path) -> None:
    (tmp_path / "rank-0.json").write_text(
        '{"time": 5, "step": 2, "phase": "start", "pid": 9, "loss": "x", "max_memory_bytes": 1.5}'
    )
    assert read_heartbeats(tmp_path) == [Heartbeat(0, 5.0, 2, 0, "start", 9)]


def test_latest() -> None:
    assert latest([]) is None
    assert latest([beat(0, T0 + 5), beat(1, T0 + 9), beat(2, T0 + 1)]) == beat(1, T0 + 9)


# --- observing ------------------------------------------------------------------------


def feed(tracker: HangTracker, *beats: tuple[float, str]) -> HangTracker:
    for offset, phase in beats:
        tracker = observe(tracker, T0 + offset, phase)
    return tracker


OBSERVE_CASES = [
    # (name, beats as (seconds after T0, phase), expected gaps, expected longest gap)
    ("one beat has no gap", [(5, "train")], 0, 0.0),
    ("train gaps are learnt", [(5, "train"), (7, "train"), (12, "train")], 2, 5.0),
    ("eval gaps are learnt", [(5, "eval"), (20, "eval")], 1, 15.0),
    ("start-up gap is not", [(5, "start"), (100, "train"), (101, "train")], 1, 1.0),
    ("checkpoint gap is not", [(5, "train"), (6, "checkpoint"), (200, "train")], 1, 1.0),
    ("train into checkpoint counts", [(5, "train"), (9, "checkpoint")], 1, 4.0),
    ("a repeated beat is ignored", [(5, "train"), (5, "train"), (6, "train")], 1, 1.0),
    ("an older beat is ignored", [(5, "train"), (3, "train"), (6, "train")], 1, 1.0),
    ("a beat before the attempt is ignored", [(-50, "train"), (5, "train"), (6, "train")], 1, 1.0),
]


@pytest.mark.parametrize(
    "beats, gaps, longest", [c[1:] for c in OBSERVE_CASES], ids=[c[0] for c in OBSERVE_CASES]
)
def test_observe(beats, gaps, longest) -> None:
    tracker = feed(new_attempt(HangTracker(), T0), *beats)
    assert (tracker.gaps, tracker.longest_gap) == (gaps, longest)


def test_new_attempt_keeps_calibration_and_forgets_the_last_beat() -> None:
    old = feed(new_attempt(HangTracker(), T0), (1, "train"), (3, "train"), (4, "train"), (5, "train"))
    fresh = new_attempt(old, T0 + 1000)
    assert (fresh.gaps, fresh.longest_gap, fresh.ever_beat) == (3, 2.0, True)
    assert (fresh.last_beat, fresh.last_phase, fresh.beats, fresh.attempt_started_at) == (None, None, 0, T0 + 1000)
    # The restart's silence is not learnt as a gap.
    assert observe(fresh, T0 + 1100, "train").longest_gap == 2.0


# --- hang verdicts --------------------------------------------------------------------

CALIBRATED = [(1, "train"), (3, "train"), (5, "train"), (6, "train")]  # 3 gaps, longest 2 s → 60 s floor
SLOW = [(10, "train"), (40, "train"), (70, "train"), (100, "train")]  # longest 30 s → 150 s

HANG_CASES = [
    # (name, policy, beats, now - T0, expected verdict or None)
    ("a job that never beats is never judged", POLICY, [], 10**6, None),
    ("no beat yet, within first timeout", EXPECTING, [], 599, None),
    ("no beat, first timeout fires", EXPECTING, [], 601, HangVerdict("first", 600, 601, None)),
    ("start phase still on the first timeout", POLICY, [(10, "start")], 609, None),
    ("start phase silent too long", POLICY, [(10, "start")], 611, HangVerdict("first", 600, 601, "start")),
    ("uncalibrated train uses the first timeout", POLICY, [(1, "train"), (2, "train")], 601, None),
    ("uncalibrated train can still hang", POLICY, [(1, "train"), (2, "train")], 603,
     HangVerdict("first", 600, 601, "train")),
    ("calibrated: min timeout floor", POLICY, CALIBRATED, 66, None),
    ("calibrated: past the floor", POLICY, CALIBRATED, 67, HangVerdict("calculated", 60, 61, "train")),
    ("calibrated: safety factor × longest gap", POLICY, SLOW, 250, None),
    ("calibrated: slow job hangs", POLICY, SLOW, 251, HangVerdict("calculated", 150, 151, "train")),
    ("eval judged like train", POLICY, [*CALIBRATED, (7, "eval")], 68, HangVerdict("calculated", 60, 61, "eval")),
    ("checkpoint has its own timeout", POLICY, [*CALIBRATED, (7, "checkpoint")], 307, None),
    ("checkpoint timeout fires", POLICY, [*CALIBRATED, (7, "checkpoint")], 308,
     HangVerdict("checkpoint", 300, 301, "checkpoint")),
    ("fixed timeout overrides calibration",
     HangPolicy(fixed_timeout=30, first_timeout=600, checkpoint_timeout=300, safety_factor=5, min_timeout=60),
     SLOW, 131, HangVerdict("fixed", 30, 31, "train")),
    ("fixed timeout applies before calibration",
     HangPolicy(fixed_timeout=30, first_timeout=600, checkpoint_timeout=300, safety_factor=5, min_timeout=60),
     [(1, "train")], 30, None),
    ("fixed timeout does not shorten checkpoints",
     HangPolicy(fixed_timeout=30, first_timeout=600, checkpoint_timeout=300, safety_factor=5, min_timeout=60),
     [(1, "checkpoint")], 200, None),
]


@pytest.mark.parametrize(
    "policy, beats, now, expected", [c[1:] for c in HANG_CASES], ids=[c[0] for c in HANG_CASES]
)
def test_is_hung(policy, beats, now, expected) -> None:
    tracker = feed(new_attempt(HangTracker(), T0), *beats)
    assert is_hung(tracker, policy, T0, T0 + now) == expected


def test_a_previous_attempts_beat_does_not_count() -> None:
    tracker = feed(new_attempt(HangTracker(), T0), *CALIBRATED)
    # The daemon forgot new_attempt(): the last beat predates this attempt, so it is ignored,
    # and the job, having beaten before, is expected to beat again.
    restarted_at = T0 + 1000
    assert current_timeout(tracker, POLICY, restarted_at) == ("first", 600)
    assert is_hung(tracker, POLICY, restarted_at, restarted_at + 599) is None
    assert is_hung(tracker, POLICY, restarted_at, restarted_at + 601) == HangVerdict("first", 600, 601, None)


def test_calibration_carries_over_to_the_next_attempt() -> None:
    tracker = new_attempt(feed(new_attempt(HangTracker(), T0), *SLOW), T0 + 1000)
    tracker = observe(tracker, T0 + 1010, "train")
    assert current_timeout(tracker, POLICY, T0 + 1000) == ("calculated", 150)


def test_a_job_that_beat_before_is_judged_before_its_first_beat() -> None:
    tracker = new_attempt(feed(new_attempt(HangTracker(), T0), (1, "start")), T0 + 1000)
    assert is_hung(tracker, POLICY, T0 + 1000, T0 + 1600) is None
    assert is_hung(tracker, POLICY, T0 + 1000, T0 + 1601) == HangVerdict("first", 600, 601, None)


def test_verdict_describes_itself_in_one_sentence() -> None:
    assert HangVerdict("calculated", 150, 151.4, "train").describe() == (
        "no heartbeat for 151 s during train, past the calculated timeout of 150 s."
    )
    assert HangVerdict("first", 600, 601, None).describe() == (
        "no heartbeat for 601 s since the attempt started, past the first timeout of 600 s."
    )


@pytest.mark.parametrize("field", ["first_timeout", "checkpoint_timeout", "min_timeout", "safety_factor", "fixed_timeout"])
def test_policy_rejects_non_positive_values(field: str) -> None:
    with pytest.raises(ValueError):
        HangPolicy(**{**vars(POLICY), field: 0})


def test_default_policy_follows_nvrx() -> None:
    """The defaults are written once, in the job spec's `heartbeat:` section."""
    policy = HangPolicy.of(HeartbeatPolicy())
    assert (policy.fixed_timeout, policy.first_timeout, policy.safety_factor) == (None, 3600.0, 5.0)
