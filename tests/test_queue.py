"""The queue: groups and their limits, reservations, priority, `after` and `not_before`.

The decision (`supervisor/queue.py`) is tested pure; the daemon's use of it end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import Cli, DaemonProcess, wait_for, write_spec
from trainsup.jobs import groups
from trainsup.jobs.spec import parse_spec
from trainsup.supervisor.queue import Ask, Dependency, Holding, Machine, Queue

MACHINE = Machine(cpus=8, memory=16 * 2**30)
T = 1_800_000_000.0


def ask(job_id: str, at: float = 0.0, **fields) -> Ask:
    return Ask(job_id, T + at, **fields)


def test_order_is_priority_then_submission():
    asks = [ask("a", 1), ask("b", 2, priority=5), ask("c", 3), ask("d", 0), ask("e", 4, priority=5)]
    assert [a.id for a in Queue.order(asks)] == ["b", "e", "d", "a", "c"]


def test_group_limit_counts_running_and_started_jobs():
    queue = Queue([Holding("cpu")], {"cpu": 2}, MACHINE)
    first, second = ask("a", group="cpu"), ask("b", group="cpu")
    assert queue.verdict(first, {}, T).action == "try"
    queue.take(first)
    verdict = queue.verdict(second, {}, T)
    assert (verdict.action, verdict.message) == ("wait", "group cpu is full (2 of 2 running)")
    assert queue.verdict(ask("c", group="other"), {}, T).action == "try"
    assert queue.verdict(ask("g", gpus=1), {}, T).action == "try", "a GPU job without a group is in none"


def test_default_limits():
    assert groups.default_limit("default", 2) == 2
    assert groups.default_limit("default", 32) == 16
    assert groups.default_limit("eval", 32) == 1
    assert groups.group_of(None, 0) == "default" and groups.group_of(None, 2) is None
    assert groups.group_of("eval", 2) == "eval"
    queue = Queue([Holding("default")] * 4, {}, MACHINE)
    assert queue.verdict(ask("a", group="default"), {}, T).message == "group default is full (4 of 4 running)"
    assert queue.verdict(ask("b", group="new"), {}, T).action == "try"


def test_cpus_and_memory_are_reserved_and_checked_against_the_machine():
    queue = Queue([Holding(None, cpus=6, memory=10 * 2**30)], {}, MACHINE)
    assert queue.verdict(ask("a", cpus=2), {}, T).action == "try"
    verdict = queue.verdict(ask("b", cpus=3), {}, T)
    assert (verdict.action, verdict.message) == ("wait", "waiting for 3 CPUs (2 of 8 unreserved)")
    verdict = queue.verdict(ask("c", memory=8 * 2**30), {}, T)
    assert verdict.action == "wait" and "8 GiB of memory (6 GiB of 16 GiB unreserved)" in verdict.message
    never = queue.verdict(ask("d", cpus=9), {}, T)
    assert (never.action, never.kind) == ("fail", "unplaceable") and "this machine has 8" in never.message
    assert queue.verdict(ask("e", memory=17 * 2**30), {}, T).action == "fail"


def test_dependencies_wait_then_fail_with_the_reason():
    running = {"p1": Dependency("p1", "prep", "running"), "t1": Dependency("t1", "train", "succeeded")}
    queue = Queue([], {}, MACHINE)
    waiting = queue.verdict(ask("e", after=("t1", "p1")), running, T)
    assert (waiting.action, waiting.message) == ("wait", "waiting for job prep (p1) to succeed")
    assert queue.verdict(ask("e", after=("t1",)), running, T).action == "try"
    for state in ("failed", "cancelled"):
        failed = queue.verdict(ask("e", after=("t1", "p1")), {**running, "p1": Dependency("p1", "prep", state)}, T)
        assert (failed.action, failed.kind) == ("fail", "dependency_failed")
        assert failed.message == f"job prep (p1), which it runs after, {state}"
    gone = queue.verdict(ask("e", after=("zz",)), {}, T)
    assert gone.action == "fail" and "does not exist" in gone.message


def test_not_before():
    queue = Queue([], {}, MACHINE)
    early = queue.verdict(ask("a", not_before=T + 60), {}, T)
    assert early.action == "wait" and early.message.startswith("not before ")
    assert queue.verdict(ask("a", not_before=T + 60), {}, T + 60).action == "try"


def test_spec_fields_and_their_errors():
    base = "name: a\ncommand: 'true'\n"
    spec = parse_spec(base + "group: eval\ncpus: 1.5\nmemory: 2GiB\npriority: -3\nafter: [prep, 0a1b2c3d]\n"
                      "not_before: 2026-12-01T02:00:00+00:00\n", "job.yaml")
    assert Ask.of("x", T, spec) == Ask("x", T, -3, "eval", 0, 1.5, 2 * 2**30, ("prep", "0a1b2c3d"), 1796090400.0)
    assert Ask.of("x", T, parse_spec(base + "gpus: 1\n", "job.yaml")).group is None
    for bad, field in (("group: '../x'", "group"), ("priority: true", "priority"), ("cpus: -1", "cpus"),
                       ("not_before: soon", "not_before"), ("after: ['a b']", "after.0")):
        with pytest.raises(Exception, match=f"field '{field}'"):
            parse_spec(base + bad, "job.yaml")


def test_limits_file(tmp_path: Path):
    path = groups.limits_path(tmp_path)
    assert groups.read_limits(path) == {}
    groups.set_limit(path, "cpu", 2)
    groups.set_limit(path, "eval", 1)
    assert groups.read_limits(path) == {"cpu": 2, "eval": 1}
    path.write_text("{not json")
    assert groups.read_limits(path) == {}


# --- the daemon -----------------------------------------------------------------------------------------


def _intervals(cli: Cli, jobs: list[str]) -> list[tuple[float, float]]:
    return [(a["started_at"], a["ended_at"]) for job in jobs for a in cli.job(job)["attempts"]]


def _waiting(cli: Cli, job: str) -> str | None:
    return next((row.get("waiting") for row in cli.json("status") if row["id"] == job), None)


def test_six_cpu_jobs_in_a_group_of_two_never_overlap_more_than_two(cli: Cli, daemon: DaemonProcess,
                                                                     tmp_path: Path):
    cli.run("group", "set", "pair", "2")
    jobs = [cli.submit(write_spec(tmp_path / f"j{i}.yaml", name=f"j{i}", command="sleep 0.5", group="pair"))
            for i in range(6)]
    daemon.start()
    wait_for(lambda: any("group pair is full (2 of 2 running)" in (row.get("waiting") or "")
                         for row in cli.json("status")), 60, 0.1, "a job waiting for its group")
    for job in jobs:
        assert cli.wait_state(job, "succeeded", "failed")["state"] == "succeeded"
    intervals = _intervals(cli, jobs)
    assert len(intervals) == 6
    most = max(sum(1 for s, e in intervals if s <= start < e) for start, _ in intervals)
    assert most == 2
    rows = {row["name"]: row for row in cli.json("group")}
    assert (rows["pair"]["limit"], rows["pair"]["running"], rows["pair"]["queued"]) == (2, 0, 0)


def test_priority_delay_and_why_a_job_waits(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    go = tmp_path / "go"
    daemon.start()
    blocker = cli.submit(write_spec(tmp_path / "b.yaml", name="blocker", group="solo",
                                    command=f"while [ ! -e {go} ]; do sleep 0.1; done"))
    cli.wait_state(blocker, "running")
    low = cli.submit(write_spec(tmp_path / "low.yaml", name="low", command="true", group="solo"))
    high = cli.submit(write_spec(tmp_path / "high.yaml", name="high", command="true", group="solo", priority=5))
    late = cli.submit(write_spec(tmp_path / "late.yaml", name="late", command="true"), "--delay", "2s")
    wait_for(lambda: _waiting(cli, low) == "queued: group solo is full (1 of 1 running)", 30, 0.1, "low waits")
    wait_for(lambda: (_waiting(cli, late) or "").startswith("queued: not before "), 30, 0.1, "late waits")
    text = cli.run("status").stdout
    assert "queued: group solo is full (1 of 1 running)" in text and "queued: not before" in text
    go.touch()
    finals = {job: cli.wait_state(job, "succeeded", "failed") for job in (blocker, low, high, late)}
    assert all(final["state"] == "succeeded" for final in finals.values())
    assert finals[high]["attempts"][0]["started_at"] < finals[low]["attempts"][0]["started_at"]
    assert finals[late]["attempts"][0]["started_at"] >= finals[late]["submitted_at"] + 2


def test_a_chain_of_three_with_a_failure_in_the_middle(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    go = tmp_path / "go"
    first = cli.submit(write_spec(tmp_path / "a.yaml", name="prep", command=f"while [ ! -e {go} ]; do sleep 0.1; done"))
    second = cli.submit(write_spec(tmp_path / "b.yaml", name="train", command="exit 3", after=["prep"],
                                   restart={"max_restarts": 0}))
    third = cli.submit(write_spec(tmp_path / "c.yaml", name="evaluate", command="true", after=[second]))
    daemon.start()
    wait_for(lambda: _waiting(cli, second) == f"queued: waiting for job prep ({first}) to succeed", 30, 0.1,
             "train waits for prep")
    assert _waiting(cli, third) == f"queued: waiting for job train ({second}) to succeed"
    go.touch()
    assert cli.wait_state(first, "succeeded", "failed")["state"] == "succeeded"
    assert cli.wait_state(second, "succeeded", "failed")["state"] == "failed"
    final = cli.wait_state(third, "succeeded", "failed")
    assert final["state"] == "failed" and final["attempts"] == []
    assert final["result"] == f"job train ({second}), which it runs after, failed"


def test_after_names_a_job_that_exists(cli: Cli, tmp_path: Path):
    result = cli.run("submit", str(write_spec(tmp_path / "c.yaml", name="c", command="true", after=["nope"])),
                     check=False)
    assert result.returncode == 2
    assert "field 'after': no job matches 'nope'" in result.stderr
    assert cli.run("submit", str(tmp_path / "c.yaml"), "--delay", "soon", check=False).returncode == 2
