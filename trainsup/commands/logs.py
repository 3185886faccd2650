"""`trainsup logs JOB`: one log across every attempt, with a separator per attempt."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from trainsup.commands.common import open_store, resolve_job
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Attempt
from trainsup.paths import StateDir
from trainsup.contracts import describe_exit

FOLLOW_POLL_S = 0.2


def separator(attempt: Attempt, previous: Attempt | None) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(attempt.started_at))
    why = "first attempt"
    if previous is not None:
        why = f"previous ended: {previous.reason or 'unknown'} ({previous.detail or describe_exit(previous.exit_code, previous.signal)})"
    return f"──── trainsup: attempt {attempt.number} · started {started} · {why} ────"


def outcome(state: JobState, result: str | None) -> str:
    """The last line of a finished job's log: how it ended, in the job's or trainsup's words."""
    return f"──── trainsup: job {state}" + (f": {result}" if result else "") + " ────"


def lines(state: StateDir, key: str, attempt_number: int | None) -> Iterator[str]:
    """Every line of the job's log so far, separators included."""
    store = open_store(state)
    ref = resolve_job(state, store, key)
    if store is None or ref.pending:
        return
    attempts = store.attempts(ref.id)
    for index, attempt in enumerate(attempts):
        if attempt_number is not None and attempt.number != attempt_number:
            continue
        yield separator(attempt, attempts[index - 1] if index else None)
        try:
            with open(attempt.log_path, errors="replace") as handle:
                for line in handle:
                    yield line.rstrip("\n")
        except FileNotFoundError:
            pass
    job = store.job(ref.id)
    if job.state.is_terminal and attempt_number is None:
        yield outcome(job.state, job.result)
    store.close()


def print_logs(state: StateDir, key: str, attempt_number: int | None, tail: int | None) -> None:
    source = lines(state, key, attempt_number)
    for line in (deque(source, maxlen=tail) if tail else source):
        print(line)


def follow(state: StateDir, key: str, tail: int | None = None, out=sys.stdout) -> str:
    """Stream the log across restarts until the job ends; return its final state."""
    job_id = _wait_for_intake(state, key)
    store = open_store(state)
    shown, offset, announced = 0, 0, False
    if tail is not None:
        for line in deque(lines(state, job_id, None), maxlen=tail):
            print(line, file=out)
        attempts = store.attempts(job_id)
        if attempts:
            shown, announced = len(attempts) - 1, True
            offset = _size(Path(attempts[-1].log_path))
    while True:
        attempts = store.attempts(job_id)
        job = store.job(job_id)
        if shown < len(attempts):
            current = attempts[shown]
            if not announced:
                print(separator(current, attempts[shown - 1] if shown else None), file=out, flush=True)
                announced = True
            offset = _copy_new(Path(current.log_path), offset, out)
            if current.ended_at is not None:
                _copy_new(Path(current.log_path), offset, out)
                shown, offset, announced = shown + 1, 0, False
                continue
        elif job.state.is_terminal:
            print(outcome(job.state, job.result), file=out, flush=True)
            store.close()
            return job.state
        time.sleep(FOLLOW_POLL_S)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _wait_for_intake(state: StateDir, key: str) -> str:
    """A job still in the inbox has no attempts yet: wait until the daemon takes it."""
    while True:
        ref = resolve_job(state, open_store(state), key)
        if not ref.pending:
            return ref.id
        time.sleep(FOLLOW_POLL_S)


def _copy_new(path: Path, offset: int, out) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return offset
    if data:
        out.write(data.decode(errors="replace"))
        out.flush()
    return offset + len(data)


def exit_code_for(state: str) -> int:
    return 0 if state == JobState.SUCCEEDED else 1
