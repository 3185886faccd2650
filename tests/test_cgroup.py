"""Memory cgroups: a real limit, a real OOM kill, and reading the kernel's count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainsup.supervisor.cgroup import CgroupError, cgroup_of, create_job_cgroup, move, oom_kill_count, remove

LIMIT = 64 * 2**20
# Waits for a line on stdin (so it can be moved first), then touches 256 MiB.
HOG = (
    "import sys\n"
    "sys.stdin.readline()\n"
    "chunks = [b'\\x01' * (8 << 20) for _ in range(32)]\n"
    "print('survived', flush=True)\n"
)


@pytest.fixture
def job_cgroup() -> Iterator[Path]:
    try:
        cgroup = create_job_cgroup(f"trainsup-test-{uuid.uuid4().hex[:8]}", LIMIT)
    except CgroupError as exc:
        pytest.skip(f"cannot limit a memory cgroup here: {exc}")
    if cgroup is None:
        pytest.skip("no writable memory cgroup here (needs cgroup v2 with delegation, or v1 as root)")
    yield cgroup
    remove(cgroup)


def test_a_process_over_the_limit_is_oom_killed_and_counted(job_cgroup: Path) -> None:
    assert oom_kill_count(job_cgroup) == 0
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        move(hog.pid, job_cgroup)
        assert cgroup_of(hog.pid) == job_cgroup
        assert oom_kill_count(hog.pid) == 0
        out, _ = hog.communicate(b"go\n", timeout=60)
    finally:
        hog.kill()
        hog.wait()
    assert hog.returncode == -signal.SIGKILL
    assert out == b""
    assert oom_kill_count(job_cgroup) == 1
    assert remove(job_cgroup)
    assert oom_kill_count(job_cgroup) is None


def test_the_limit_is_set_and_can_be_lifted(job_cgroup: Path) -> None:
    v2 = (job_cgroup / "memory.max").exists()
    limit_file = job_cgroup / ("memory.max" if v2 else "memory.limit_in_bytes")
    assert int(limit_file.read_text()) == LIMIT
    assert create_job_cgroup(job_cgroup.name, None, parent=job_cgroup.parent) == job_cgroup
    assert limit_file.read_text().strip() in ("max", str(2**63 - 1), str(2**63 - 4096))


def test_a_cgroup_with_a_process_cannot_be_removed(job_cgroup: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        move(sleeper.pid, job_cgroup)
        assert not remove(job_cgroup)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"memory.events": "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n"}, 2),
        ({"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n"}, 5),
        ({"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n"}, None),  # kernels before 4.13
        ({}, None),
    ],
)
def test_oom_kill_count_reads_v1_and_v2_files(tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert oom_kill_count(tmp_path) == expected


def test_oom_kill_count_of_a_process_that_is_gone() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    assert oom_kill_count(int(done.stdout)) is None


def test_our_own_count_is_readable_or_unknown() -> None:
    count = oom_kill_count(os.getpid())
    assert count is None or count >= 0


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(CgroupError, match="not a valid cgroup name"):
        create_job_cgroup(name, LIMIT)


def test_a_parent_outside_the_memory_hierarchy_gives_none(tmp_path: Path) -> None:
    assert create_job_cgroup("trainsup-test", LIMIT, parent=tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_moving_into_a_missing_cgroup_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match=r"^cannot move process \d+ into the cgroup .+\.$"):
        move(os.getpid(), tmp_path / "missing")
