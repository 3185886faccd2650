"""Helpers shared by the benchmark scripts: a private daemon, timing, statistics.

Every benchmark measures trainsup next to what a user would use instead, in the same
run on the same machine, and reports medians (and ratios of medians), never single
runs. Nothing here asserts a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
_BIN = Path(sys.executable).parent
TRAINSUP = [str(_BIN / "trainsup")] if (_BIN / "trainsup").exists() else [PYTHON, "-m", "trainsup"]
TORCHRUN = [str(_BIN / "torchrun")] if (_BIN / "torchrun").exists() else [PYTHON, "-m", "torch.distributed.run"]


# --- statistics -------------------------------------------------------------------

def median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    """Median, quartiles, min and count of `values` (times `scale`, e.g. 1000 for ms)."""
    values = sorted(v * scale for v in values if v is not None)
    if not values:
        return {"n": 0, "median": None}
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
    else:
        q1, q3 = values[0], values[-1]
    return {"n": len(values), "median": statistics.median(values), "p25": q1, "p75": q3,
            "min": values[0], "max": values[-1]}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b in (None, 0):
        return None
    return a / b


def timed_runs(argv: Sequence[str], reps: int, env: dict[str, str] | None = None,
               cwd: str | Path | None = None, warmup: int = 1) -> list[float]:
    """Wall seconds of `reps` runs of `argv` (output discarded), after `warmup` untimed ones."""
    times = []
    for i in range(warmup + reps):
        start = time.perf_counter()
        result = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} exited {result.returncode}: {result.stderr.decode()[-500:]}")
        if i >= warmup:
            times.append(elapsed)
    return times


def interleaved(cases: dict[str, Callable[[], float]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every case once per round, `reps` rounds, so machine noise hits all alike."""
    results: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(warmup + reps):
        for name, case in cases.items():
            value = case()
            if round_ >= warmup:
                results[name].append(value)
    return results


def run_once(argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | Path | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return elapsed


# --- a private trainsup daemon ---------------------------------------------------

def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """The first truthy value of `predicate()`, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class Daemon:
    """A `trainsup daemon` on a private TRAINSUP_HOME, stopped (with its jobs) on exit."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.env = dict(os.environ)
        self.env["TRAINSUP_HOME"] = str(self.home)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            self.env.pop(name, None)
        self.log = self.home.parent / f"{self.home.name}-daemon.log"
        self.process: subprocess.Popen | None = None
        # Every attempt's log and run dir stay (the default keeps the newest 10): figures read them all.
        config = self.home.parent / f"{self.home.name}-config.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("keep_attempts: 0\n")
        self.env["TRAINSUP_CONFIG"] = str(config)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60) -> "Daemon":
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen([*TRAINSUP, "daemon"], env=self.env, stdout=handle, stderr=handle)
        ready = wait_for(lambda: b"daemon ready" in self.log.read_bytes() or self.process.poll() is not None, timeout)
        if not ready or self.process.poll() is not None:
            raise RuntimeError(f"the daemon did not start: {self.log.read_text()[-1000:]}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_monitors(self.home)

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*TRAINSUP, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"trainsup {' '.join(args)} exited {result.returncode}: {result.stderr[-500:]}")
        return result

    def submit(self, spec_path: Path) -> str:
        return json.loads(self.cli("submit", str(spec_path), "--json").stdout)["id"]

    def status(self, job: str) -> dict[str, Any]:
        return json.loads(self.cli("status", job, "--json").stdout)

    def db(self) -> sqlite3.Connection | None:
        path = self.home / "trainsup.db"
        if not path.exists():
            return None
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        connection.row_factory = sqlite3.Row
        return connection

    def job_state(self, job_id: str) -> str | None:
        db = self.db()
        if db is None:
            return None
        try:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            return row["state"] if row else None
        finally:
            db.close()

    def wait_state(self, job_id: str, states: set[str], timeout: float) -> str | None:
        """The job's state once it is in `states`, or None after `timeout` (never hangs)."""
        return wait_for(lambda: (s := self.job_state(job_id)) in states and s, timeout, 0.1)

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        db = self.db()
        try:
            return [dict(r) for r in db.execute("SELECT * FROM attempts WHERE job_id=? ORDER BY number", (job_id,))]
        finally:
            db.close()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        db = self.db()
        try:
            return [dict(r) for r in db.execute("SELECT * FROM events WHERE job_id=? ORDER BY id", (job_id,))]
        finally:
            db.close()


def kill_monitors(home: Path) -> None:
    """Leave no job of a benchmark running: kill every monitor of `home` and its tree."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if "trainsup.supervisor.monitor" in cmdline and str(home) in cmdline:
                for member in [*process.children(recursive=True), process]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        member.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def write_job(folder: Path, name: str, command: list[str] | str, **fields: Any) -> Path:
    """A job file in `folder`; `fields` are spec fields (restart=..., heartbeat=...)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "command": command, "grace_period": "2s", **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A scratch directory, removed after: under $TRAINSUP_BENCH_DIR if set (put it on the
    disk you train on: the checkpoint and fsync figures measure that disk), else the temp dir."""
    base = os.environ.get("TRAINSUP_BENCH_DIR") or None
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"trainsup-bench-{prefix}-", dir=base) as path:
        yield Path(path)


def fsync_bandwidth(folder: Path, size: int, reps: int = 3, chunk: int = 4 << 20) -> dict[str, Any]:
    """The disk's own floor: seconds to write `size` bytes with os.write, then fsync (median)."""
    block = os.urandom(chunk)
    times, buffered = [], []
    for i in range(reps):
        path = folder / f"floor-{i}.bin"
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            left = size
            while left > 0:
                left -= os.write(fd, block[:min(chunk, left)])
            written = time.perf_counter()
            os.fsync(fd)
        finally:
            os.close(fd)
        end = time.perf_counter()
        times.append(end - start)
        buffered.append(written - start)
        path.unlink()
    seconds = median(times)
    return {"bytes": size, "write_fsync_s": seconds, "write_only_s": median(buffered),
            "mb_per_s": size / 1e6 / seconds if seconds else None, "reps": reps}


def machine() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    with contextlib.suppress(Exception):
        import importlib.metadata as md
        info["torch"] = md.version("torch")
    with contextlib.suppress(Exception):
        info["load_avg_1m"] = os.getloadavg()[0]
    return info


def emit(result: dict[str, Any], json_path: str | None) -> None:
    """Print a figure's result as JSON, and write it to `json_path` if given."""
    text = json.dumps(result, indent=2, default=str)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
    print(text)


def standalone_main(run: Callable[..., dict[str, Any]], argv: Sequence[str] | None = None) -> None:
    """`python benchmarks/bench_X.py [--quick] [--json PATH]`."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    emit(run(quick=args.quick), args.json)
