"""Figure 2, hang detection: from a job's last heartbeat to its kill.

The job writes `<TRAINSUP_HEARTBEAT>/rank-0.json` every 0.1 s for `beats` beats, prints
the time of its last beat, then stays alive without beating (sleeps). trainsup should
call it hung and kill it; the figure is the attempt's end (monitor's `ended_at`) minus
the last beat, and how far past the timeout that is (the detection lag).

- fixed:      `heartbeat: {timeout: 2s}`
- calibrated: `heartbeat: {safety_factor: 5, min_timeout: 1s}`, after 30 beats (so the
              timeout is max(1 s, 5 × the longest gap seen) ≈ 1 s)

What a user has instead: nothing. torchrun has no heartbeat (a hung worker hangs the
job until someone notices; NCCL's watchdog covers only collectives, after 10 min by
default), and a shell loop never notices. Every wait here is bounded: if trainsup does
not kill the job within timeout + 20 s, the figure says "not available".

    python benchmarks/bench_hang.py [--quick] [--json PATH]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

JOB = """\
import json, os, sys, time
beats = int(sys.argv[1])
folder = os.environ["TRAINSUP_HEARTBEAT"]
os.makedirs(folder, exist_ok=True)
path, tmp = os.path.join(folder, "rank-0.json"), os.path.join(folder, f".rank-0.json.tmp-{os.getpid()}")
for step in range(1, beats + 1):
    now = time.time()
    with open(tmp, "w") as handle:
        json.dump({"time": now, "step": step, "epoch": 0, "phase": "train", "pid": os.getpid()}, handle)
    os.replace(tmp, path)
    time.sleep(0.1)
print(f"BENCH last_beat {now:.6f}", flush=True)
while True:
    time.sleep(3600)
"""
LAST = re.compile(r"BENCH last_beat (\d+\.\d+)")

CASES = {
    "fixed 2s": ({"timeout": "2s"}, 2.0),
    "calibrated (5x gap, min 1s)": ({"safety_factor": 5, "min_timeout": "1s"}, 1.0),
}


def one(folder: Path, daemon: common.Daemon, name: str, heartbeat: dict, limit: float, beats: int) -> dict[str, Any]:
    spec = common.write_job(folder, name, [common.PYTHON, "hang.py", str(beats)], heartbeat=heartbeat,
                            restart={"max_restarts": 0})
    job_id = daemon.submit(spec)
    budget = 60 + beats * 0.5 + limit + 20
    if not daemon.wait_state(job_id, {"failed", "succeeded", "cancelled", "backoff", "queued"}, budget):
        daemon.cli("cancel", job_id, check=False)
        daemon.wait_state(job_id, {"cancelled", "failed"}, 20)
        return {"available": False, "why": f"not killed within {budget:.0f} s: hang detection not available?"}
    attempt = daemon.attempts(job_id)[0]
    match = LAST.search(Path(attempt["log_path"]).read_text())
    if match is None or attempt["reason"] != "hang":
        return {"available": False, "why": f"the attempt ended as {attempt['reason']}, not hang"}
    killed = attempt["ended_at"] - float(match.group(1))
    return {"available": True, "silence_to_kill_s": killed, "timeout_s": limit, "lag_s": killed - limit}


def run(quick: bool = False) -> dict[str, Any]:
    reps = 1 if quick else 5
    beats = 30
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in CASES}
    with common.workdir("hang") as tmp:
        (tmp / "hang.py").write_text(JOB)
        with common.Daemon(tmp / "state") as daemon:
            for round_ in range(reps):
                for name, (heartbeat, limit) in CASES.items():
                    result = one(tmp, daemon, f"hang-{round_}-{len(samples[name])}-{name.split()[0]}",
                                 heartbeat, limit, beats)
                    samples[name].append(result)
                    if not result["available"]:
                        break
                if any(not s[-1]["available"] for s in samples.values() if s):
                    break
    figures: dict[str, Any] = {}
    for name, results in samples.items():
        bad = [r for r in results if not r["available"]]
        if bad or not results:
            figures[name] = {"available": False, "why": bad[0]["why"] if bad else "not run"}
            continue
        figures[name] = {
            "available": True,
            "timeout_s": results[0]["timeout_s"],
            "silence_to_kill": common.summary([r["silence_to_kill_s"] for r in results], 1000.0),
            "lag_past_timeout": common.summary([r["lag_s"] for r in results], 1000.0),
        }
    return {
        "figure": "hang",
        "title": f"Hang detection, last heartbeat → kill (ms, median of {reps})",
        "unit": "ms",
        "beats_before_hang": beats,
        "cases": figures,
        "alternatives": {"torchrun": "no heartbeat: never detected", "shell loop": "never detected"},
    }


if __name__ == "__main__":
    common.standalone_main(run)
