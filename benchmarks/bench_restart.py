"""Figure 1, restart latency: from one attempt's death to the next attempt's first line.

The job is `python job.py`, which prints `time.time()` as its first line, lives a
second (its first run six, so that trainsup's warm standby, which starts 5 s into a
fresh attempt, can be ready), and prints the time again right before it exits 1. The
same job runs `restarts` + 1 times under

- trainsup (`max_restarts: N`, `initial: 0s`, jitter 0, crash_loop 0: no backoff), with
  its warm standby (the default) and with `standby: false` (a fresh monitor and Python),
- torchrun (`--standalone --nproc-per-node 1 --max-restarts N`, default
  `--monitor-interval` of 0.1 s), and
- a bare shell loop (`until python job.py ...; do :; done`): the floor, the cost of
  starting Python again and nothing else.

For each restart: death→first line = next attempt's first timestamp − previous
attempt's exit timestamp. trainsup's time is split with its own records:

    detect  = job's exit print → the daemon's step that records the end (event `attempt_ended`)
              (reap: → the monitor's ended.json; notice: → the daemon's step)
    decide  = that step → the next monitor process exists (decide, two SQLite commits
              with synchronous=FULL, fork+exec of the monitor)
    spawn   = monitor process created → the job's first line
              (monitor: → started.json, the job forked; job: → its first line)

With a standby, decide ends when the standby reads its activation and spawn is the hand-over
(lock and log passed, staleness checked) → the script's first line.

    python benchmarks/bench_restart.py [--quick] [--json PATH]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

JOB = """\
import os, sys, time
print(f"BENCH start {time.time():.6f}", flush=True)
first = not os.path.exists("started-once")
open("started-once", "w").close()
time.sleep(6.0 if first else 1.0)
print(f"BENCH exit {time.time():.6f}", flush=True)
sys.exit(1)
"""
LINE = re.compile(r"BENCH (start|exit) (\d+\.\d+)")


def _marks(text: str) -> tuple[list[float], list[float]]:
    starts, exits = [], []
    for kind, stamp in LINE.findall(text):
        (starts if kind == "start" else exits).append(float(stamp))
    return starts, exits


def _gaps(starts: list[float], exits: list[float]) -> list[float]:
    """Death of attempt n → first line of attempt n+1, for every consecutive pair."""
    return [s - e for e, s in zip(exits, starts[1:])]


def shell_loop(folder: Path, restarts: int) -> dict[str, Any]:
    script = (f'i=0; until "{common.PYTHON}" job.py || [ "$i" -ge {restarts} ]; do i=$((i+1)); done')
    started = time.perf_counter()
    result = subprocess.run(["/bin/sh", "-c", script], cwd=folder, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    starts, exits = _marks(result.stdout)
    return {"gaps": _gaps(starts, exits), "attempts": len(starts), "wall_s": wall}


def torchrun(folder: Path, restarts: int) -> dict[str, Any]:
    argv = [*common.TORCHRUN, "--standalone", "--nnodes", "1", "--nproc-per-node", "1",
            "--max-restarts", str(restarts), "job.py"]
    started = time.perf_counter()
    try:
        result = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"torchrun did not finish in {exc.timeout:.0f} s"}
    wall = time.perf_counter() - started
    starts, exits = _marks(result.stdout + result.stderr)
    if len(starts) < 2:
        return {"error": f"torchrun ran {len(starts)} attempts: {(result.stderr or '')[-400:]}"}
    return {"gaps": _gaps(starts, exits), "attempts": len(starts), "wall_s": wall}


def trainsup(folder: Path, restarts: int, standby: bool = True) -> dict[str, Any]:
    spec = common.write_job(
        folder, "restart-bench", [common.PYTHON, "job.py"], workdir=str(folder),
        restart={"max_restarts": restarts, "initial": "0s", "max": "0s", "jitter": 0, "crash_loop": 0},
        standby=standby,
    )
    with common.Daemon(folder / "state") as daemon:
        started = time.perf_counter()
        job_id = daemon.submit(spec)
        final = daemon.wait_state(job_id, {"failed", "succeeded", "cancelled"}, timeout=60 + restarts * 10)
        wall = time.perf_counter() - started
        if final is None:
            return {"error": f"the job did not finish: {daemon.job_state(job_id)}"}
        attempts = daemon.attempts(job_id)
        events = daemon.events(job_id)
    ended_event = {}
    for event in events:
        if event["kind"] == "attempt_ended":
            number = int(event["message"].split()[1])
            ended_event[number] = event["at"]
    boot_offset = _boot_time_error()
    rows = []
    for attempt in attempts:
        run_dir = Path(attempt["run_dir"])
        starts, exits = _marks(Path(attempt["log_path"]).read_text())
        started = _read(run_dir / "started.json") or {}
        rows.append({
            "number": attempt["number"],
            "start": starts[0] if starts else None,
            "exit": exits[-1] if exits else None,
            # a standby's monitor exists long before: its attempt begins when it is activated
            "monitor_created": started.get("activated_at") or _precise(attempt["monitor_started"], boot_offset),
            "job_forked": started.get("started_at"),
            "standby": started.get("standby"),
            "monitor_recorded_end": (_read(run_dir / "ended.json") or {}).get("ended_at"),
            "daemon_recorded_end": ended_event.get(attempt["number"]),
        })
    phases: dict[str, list[float]] = {k: [] for k in
                                      ("total", "detect", "reap", "notice", "decide", "spawn", "monitor", "job")}
    for prev, nxt in zip(rows, rows[1:]):
        if None in (prev["exit"], nxt["start"], prev["daemon_recorded_end"], nxt["monitor_created"]):
            continue
        phases["total"].append(nxt["start"] - prev["exit"])
        phases["detect"].append(prev["daemon_recorded_end"] - prev["exit"])
        phases["reap"].append(prev["monitor_recorded_end"] - prev["exit"])
        phases["notice"].append(prev["daemon_recorded_end"] - prev["monitor_recorded_end"])
        phases["decide"].append(nxt["monitor_created"] - prev["daemon_recorded_end"])
        phases["spawn"].append(nxt["start"] - nxt["monitor_created"])
        phases["monitor"].append(nxt["job_forked"] - nxt["monitor_created"])
        phases["job"].append(nxt["start"] - nxt["job_forked"])
    used = sum(row["standby"] == "used" for row in rows)
    return {"gaps": phases["total"], "attempts": len(rows), "wall_s": wall, "phases": phases, "standby_used": used}


def _boot_time_error() -> float:
    """psutil's create_time counts from /proc/stat's btime, a whole second: how far off it is."""
    import psutil

    precise_boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return psutil.boot_time() - precise_boot


def _precise(create_time: float | None, boot_error: float) -> float | None:
    """A psutil create_time (10 ms ticks) on the precise boot clock."""
    return None if create_time is None else create_time - boot_error


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run(quick: bool = False) -> dict[str, Any]:
    restarts = 5 if quick else 10
    rounds = 2 if quick else 3
    runners = (("shell loop", shell_loop), ("trainsup", trainsup),
               ("trainsup (no standby)", lambda folder, n: trainsup(folder, n, standby=False)), ("torchrun", torchrun))
    results: dict[str, Any] = {name: {"gaps": [], "attempts": 0, "wall_s": 0.0, "phases": {}} for name, _ in runners}
    with common.workdir("restart") as tmp:
        for round_ in range(rounds):  # interleaved, so load from elsewhere hits all three alike
            for name, runner in runners:
                if "error" in results[name]:
                    continue
                folder = tmp / f"{name.replace(' ', '-')}-{round_}"
                folder.mkdir()
                (folder / "job.py").write_text(JOB)
                try:
                    one = runner(folder, restarts)
                except Exception as exc:  # a broken alternative must not sink the other figures
                    one = {"error": f"{type(exc).__name__}: {exc}"}
                if "error" in one:
                    results[name] = {"error": one["error"]}
                    continue
                total = results[name]
                total["gaps"] += one["gaps"]
                total["attempts"] += one["attempts"]
                total["standby_used"] = total.get("standby_used", 0) + one.get("standby_used", 0)
                total["wall_s"] += one["wall_s"]
                for phase, values in one.get("phases", {}).items():
                    total["phases"].setdefault(phase, []).extend(values)
    figures: dict[str, Any] = {}
    for name, result in results.items():
        if "error" in result:
            figures[name] = {"error": result["error"]}
            continue
        figures[name] = {**common.summary(result["gaps"], 1000.0), "attempts": result["attempts"],
                         "wall_s": result["wall_s"]}
        if name.startswith("trainsup"):
            figures[name]["standby_used"] = result.get("standby_used", 0)
    breakdown = {}
    for name in ("trainsup", "trainsup (no standby)"):
        if "phases" not in results.get(name, {}):
            continue
        breakdown[name] = {phase: common.summary(values, 1000.0)
                           for phase, values in results[name]["phases"].items() if phase != "total"}
    if breakdown:
        breakdown["note"] = ("detect = reap (job exit → monitor's ended.json) + notice (→ daemon step); "
                             "decide = daemon step → next monitor process exists; "
                             "spawn = monitor (start Python, lock, fork job, fsync started.json) + job (→ first line)")
    floor = figures.get("shell loop", {}).get("median")
    ratios = {f"{name} / shell loop": common.ratio(figures[name].get("median"), floor)
              for name in ("trainsup", "trainsup (no standby)", "torchrun") if name in figures}
    ratios["trainsup − shell loop (ms)"] = (figures["trainsup"]["median"] - floor
                                           if floor is not None and figures.get("trainsup", {}).get("median") is not None
                                           else None)
    ratios["trainsup / torchrun"] = common.ratio(figures.get("trainsup", {}).get("median"),
                                                 figures.get("torchrun", {}).get("median"))
    return {
        "figure": "restart",
        "title": f"Restart latency, death → next attempt's first line (ms, median of {rounds}×{restarts} restarts)",
        "unit": "ms",
        "restarts": restarts,
        "rounds": rounds,
        "supervisors": figures,
        "trainsup_breakdown": breakdown,
        "ratios": ratios,
    }


if __name__ == "__main__":
    common.standalone_main(run)
