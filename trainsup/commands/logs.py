"""`trainsup logs JOB`: one log across every attempt, with a separator per attempt.

As text: the attempts' output with a separator line before each attempt and the job's
outcome after the last. With `--json`: one JSON object per log line,
`{"job": ..., "attempt": N, "line": ...}`, and nothing else.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from trainsup.commands.common import open_store, resolve_job, waiting_text
from trainsup.contracts import describe_exit
from trainsup.errors import TrainsupError
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Attempt, Store
from trainsup.paths import StateDir

FOLLOW_POLL_S = 0.2


@dataclass(frozen=True)
class Record:
    kind: str  # "separator", "line" or "outcome"
    text: str
    attempt: int | None = None


def separator(attempt: Attempt, previous: Attempt | None) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(attempt.started_at))
    why = "first attempt"
    if previous is not None:
        why = f"previous ended: {previous.reason or 'unknown'} ({previous.detail or describe_exit(previous.exit_code, previous.signal)})"
    return f"──── trainsup: attempt {attempt.number} · started {started} · {why} ────"


def outcome(state: JobState, result: str | None) -> str:
    """The last line of a finished job's log: how it ended, in the job's or trainsup's words."""
    return f"──── trainsup: job {state}" + (f": {result}" if result else "") + " ────"


def records(store: Store, job_id: str, attempt_number: int | None, with_outcome: bool = True) -> Iterator[Record]:
    """Every record of the job's log so far: separators, lines, and the outcome once it ended."""
    attempts = store.attempts(job_id)
    for index, attempt in enumerate(attempts):
        if attempt_number is not None and attempt.number != attempt_number:
            continue
        yield Record("separator", separator(attempt, attempts[index - 1] if index else None), attempt.number)
        try:
            with open(attempt.log_path, errors="replace") as handle:
                for line in handle:
                    yield Record("line", line.rstrip("\n"), attempt.number)
        except FileNotFoundError:
            pass
    job = store.job(job_id)
    if with_outcome and job.state.is_terminal and attempt_number is None:
        yield Record("outcome", outcome(job.state, job.result))


def print_logs(state: StateDir, key: str, attempt_number: int | None, tail: int | None,
               as_json: bool = False, out: TextIO | None = None) -> str | None:
    """Print the job's log; return a note for stderr when there is nothing to print yet.

    Raises:
        TrainsupError: `attempt_number` names an attempt the job does not have.
    """
    out = out or sys.stdout
    store = open_store(state)
    try:
        ref = resolve_job(state, store, key)
        count = 0 if store is None or ref.pending else len(store.attempts(ref.id))
        if count == 0 and (ref.pending or store is None or not store.job(ref.id).state.is_terminal):
            note = f"no attempt has started yet ({waiting_text(state, store, ref)})"
            if attempt_number is not None:
                raise TrainsupError(f"job {ref.id} has no attempt {attempt_number}: {note}.")
            return f"job {ref.id}: {note}."
        if attempt_number is not None and attempt_number > count:
            have = f"{count} attempt" + ("s" if count != 1 else "")
            raise TrainsupError(f"job {ref.id} has {have}; there is no attempt {attempt_number}.")
        source = _shown(records(store, ref.id, attempt_number), as_json)
        sink = JsonSink(ref.id, out) if as_json else TextSink(out)
        for record in (deque(source, maxlen=tail) if tail else source):
            sink.record(record)
        out.flush()
        return None
    finally:
        if store is not None:
            store.close()


def _shown(source: Iterator[Record], as_json: bool) -> Iterator[Record]:
    """The records the output shows (JSON has log lines only), so that --tail counts those."""
    return (record for record in source if record.kind == "line") if as_json else source


class TextSink:
    """The log as it was written, with separator and outcome lines."""

    def __init__(self, out: TextIO):
        self.out = out

    def record(self, record: Record) -> None:
        print(record.text, file=self.out)

    def separator(self, attempt: Attempt, previous: Attempt | None) -> None:
        print(separator(attempt, previous), file=self.out, flush=True)

    def data(self, attempt: int, data: bytes) -> None:
        self.out.write(data.decode(errors="replace"))
        self.out.flush()

    def end_attempt(self, attempt: int) -> None:
        pass

    def outcome(self, state: JobState, result: str | None) -> None:
        print(outcome(state, result), file=self.out, flush=True)


class JsonSink:
    """One JSON object per complete log line; a last line without a newline when its attempt ends."""

    def __init__(self, job_id: str, out: TextIO):
        self.job_id = job_id
        self.out = out
        self.partial = b""

    def record(self, record: Record) -> None:
        if record.kind == "line":
            self._emit(record.attempt, record.text)

    def separator(self, attempt: Attempt, previous: Attempt | None) -> None:
        pass

    def data(self, attempt: int, data: bytes) -> None:
        *complete, self.partial = (self.partial + data).split(b"\n")
        for line in complete:
            self._emit(attempt, line.decode(errors="replace"))
        self.out.flush()

    def end_attempt(self, attempt: int) -> None:
        if self.partial:
            self._emit(attempt, self.partial.decode(errors="replace"))
            self.partial = b""
            self.out.flush()

    def outcome(self, state: JobState, result: str | None) -> None:
        pass

    def _emit(self, attempt: int | None, text: str) -> None:
        self.out.write(json.dumps({"job": self.job_id, "attempt": attempt, "line": text}) + "\n")


def follow(state: StateDir, key: str, tail: int | None = None, out: TextIO | None = None,
           as_json: bool = False) -> str:
    """Stream the log across restarts until the job ends; return its final state."""
    out = out or sys.stdout
    job_id = _wait_for_intake(state, key)
    store = open_store(state)
    sink = JsonSink(job_id, out) if as_json else TextSink(out)
    shown, offset, announced = 0, 0, False
    if tail is not None:
        for record in deque(_shown(records(store, job_id, None, with_outcome=False), as_json), maxlen=tail):
            sink.record(record)
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
                sink.separator(current, attempts[shown - 1] if shown else None)
                announced = True
            offset = _copy_new(Path(current.log_path), offset, current.number, sink)
            if current.ended_at is not None:
                _copy_new(Path(current.log_path), offset, current.number, sink)
                sink.end_attempt(current.number)
                shown, offset, announced = shown + 1, 0, False
                continue
        elif job.state.is_terminal:
            sink.outcome(job.state, job.result)
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
        store = open_store(state)
        try:
            ref = resolve_job(state, store, key)
        finally:
            if store is not None:
                store.close()
        if not ref.pending:
            return ref.id
        time.sleep(FOLLOW_POLL_S)


def _copy_new(path: Path, offset: int, attempt: int, sink: TextSink | JsonSink) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return offset
    if data:
        sink.data(attempt, data)
    return offset + len(data)


def exit_code_for(state: str) -> int:
    return 0 if state == JobState.SUCCEEDED else 1
