"""Figure 5, supervision overhead: CPU and memory of what watches 8 heart-beating jobs.

Eight copies of a job that does nothing but write its heartbeat file
(`<TRAINSUP_HEARTBEAT>/rank-0.json`, temp file + rename, at `rate` per second: the
contract's maximum is 4/s) run for `window` seconds

- under one trainsup daemon (plus one attempt monitor per job), and
- each under its own torchrun agent (`--standalone --nproc-per-node 1`), which is what
  a user gets per job from torch's elastic launcher.

Reported: CPU (% of one core, from psutil cpu_times over the window) and RSS (median
of 1 s samples) of the daemon, of the 8 monitors together, and of the 8 torchrun
agents together; the jobs' own processes are not counted on either side.

    python benchmarks/bench_daemon_overhead.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

JOBS = 8  # 4 with --quick
JOB = """\
import json, os, sys, time
rate = float(sys.argv[1])
folder = os.environ.get("TRAINSUP_HEARTBEAT") or sys.argv[2]
os.makedirs(folder, exist_ok=True)
path = os.path.join(folder, "rank-0.json")
tmp = os.path.join(folder, f".rank-0.json.tmp-{os.getpid()}")
step = 0
while True:
    step += 1
    with open(tmp, "w") as handle:
        json.dump({"time": time.time(), "step": step, "epoch": 0, "phase": "train", "pid": os.getpid(),
                   "loss": 1.0 / step, "samples_per_s": 100.0}, handle)
    os.replace(tmp, path)
    time.sleep(1.0 / rate)
"""


def _measure(groups: "dict[str, list[Any]]", window: float) -> dict[str, dict[str, Any]]:
    """Per group: CPU % of one core and RSS (MiB) of its processes together, over one window."""
    import psutil

    def cpu(processes: list[Any]) -> float:
        total = 0.0
        for p in processes:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss(processes: list[Any]) -> float:
        total = 0
        for p in processes:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    start_cpu = {name: cpu(ps) for name, ps in groups.items()}
    start = time.monotonic()
    samples: dict[str, list[float]] = {name: [] for name in groups}
    while time.monotonic() - start < window:
        for name, ps in groups.items():
            samples[name].append(rss(ps))
        time.sleep(min(1.0, max(0.0, window - (time.monotonic() - start))))
    elapsed = time.monotonic() - start
    return {
        name: {"cpu_percent": 100.0 * (cpu(ps) - start_cpu[name]) / elapsed,
               "rss_mib": common.median(samples[name]), "rss_mib_max": max(samples[name]),
               "processes": len(ps)}
        for name, ps in groups.items()
    }


def _beating(folders: list[Path], since: float) -> bool:
    for folder in folders:
        try:
            if (folder / "rank-0.json").stat().st_mtime < since:
                return False
        except FileNotFoundError:
            return False
    return True


def trainsup(folder: Path, rate: float, window: float, jobs: int) -> dict[str, Any]:
    import psutil

    (folder / "beat.py").write_text(JOB)
    spec = common.write_job(folder, "beat", [common.PYTHON, "beat.py", str(rate), "unused"])
    with common.Daemon(folder / "state") as daemon:
        daemon_process = psutil.Process(daemon.pid)
        idle = _measure({"daemon": [daemon_process]}, min(window, 3.0))["daemon"]
        ids = [daemon.submit(spec) for _ in range(jobs)]
        running = [daemon.wait_state(job_id, {"running"}, timeout=60) for job_id in ids]
        if not all(running):
            return {"error": "not every job reached running in 60 s"}
        beat_dirs = [Path(daemon.attempts(job_id)[-1]["run_dir"]) / "heartbeat" for job_id in ids]
        if not common.wait_for(lambda: _beating(beat_dirs, time.time() - 1), 30):
            return {"error": "the jobs did not write heartbeats"}
        monitors = [psutil.Process(a["monitor_pid"]) for job_id in ids for a in daemon.attempts(job_id)[-1:]]
        busy = _measure({"daemon": [daemon_process], "monitors": monitors}, window)
    return {"daemon_idle": idle, **busy}


def torchrun(folder: Path, rate: float, window: float, jobs: int) -> dict[str, Any]:
    import psutil

    (folder / "beat.py").write_text(JOB)
    agents = []
    beat_dirs = [folder / f"beats-{i}" for i in range(jobs)]
    env = {k: v for k, v in os.environ.items() if k != "TRAINSUP_HEARTBEAT"}
    try:
        for beat_dir in beat_dirs:
            agents.append(subprocess.Popen(
                [*common.TORCHRUN, "--standalone", "--nnodes", "1", "--nproc-per-node", "1",
                 "beat.py", str(rate), str(beat_dir)],
                cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            ))
        if not common.wait_for(lambda: _beating(beat_dirs, time.time() - 1), 120, 0.2):
            return {"error": "the torchrun jobs did not write heartbeats in 120 s"}
        time.sleep(1.0)
        return _measure({"agents": [psutil.Process(a.pid) for a in agents]}, window)
    finally:
        for agent in agents:
            try:
                os.killpg(agent.pid, 15)
            except ProcessLookupError:
                pass
        for agent in agents:
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, 9)
                agent.wait()


def run(quick: bool = False, rate: float = 4.0) -> dict[str, Any]:
    window = 10.0 if quick else 60.0
    jobs = 4 if quick else JOBS
    result: dict[str, Any] = {
        "figure": "daemon_overhead",
        "title": f"Supervision overhead, {jobs} jobs heart-beating {rate:g}/s, {window:.0f} s window",
        "jobs": jobs, "heartbeat_rate": rate, "window_s": window,
    }
    with common.workdir("overhead") as tmp:
        for name, runner in (("trainsup", trainsup), ("torchrun", torchrun)):
            folder = tmp / name
            folder.mkdir()
            try:
                result[name] = runner(folder, rate, window, jobs)
            except Exception as exc:
                result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    ts, tr = result.get("trainsup", {}), result.get("torchrun", {})
    if "daemon" in ts and "agents" in tr:
        ts_cpu = ts["daemon"]["cpu_percent"] + ts["monitors"]["cpu_percent"]
        ts_rss = ts["daemon"]["rss_mib"] + ts["monitors"]["rss_mib"]
        result["totals"] = {
            "trainsup_cpu_percent": ts_cpu, "trainsup_rss_mib": ts_rss,
            "torchrun_cpu_percent": tr["agents"]["cpu_percent"], "torchrun_rss_mib": tr["agents"]["rss_mib"],
            "cpu_ratio_trainsup_over_torchrun": common.ratio(ts_cpu, tr["agents"]["cpu_percent"]),
            "rss_ratio_trainsup_over_torchrun": common.ratio(ts_rss, tr["agents"]["rss_mib"]),
        }
    return result


if __name__ == "__main__":
    common.standalone_main(run)
