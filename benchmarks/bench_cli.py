"""Figure 6, CLI latency: `trainsup status` / `submit` with 1,000 jobs in the store.

The store is filled directly through `trainsup.jobs.store.Store` (what the daemon
would have written after running them: jobs with the quickstart spec and a real
environment, 1-3 attempts each, ~6 events each), then each command runs `reps` times,
interleaved with `python -c pass` (the floor of any Python CLI) and
`python -c "import torch"` (what a script that imports torch pays before doing
anything). No daemon runs: the CLI only reads SQLite (read-only) and drops submissions
into the inbox, so the daemon is not part of its latency.

    python benchmarks/bench_cli.py [--quick] [--jobs N] [--reps N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STATES = ["succeeded"] * 6 + ["failed"] * 2 + ["cancelled", "queued", "held", "backoff"]


def populate(home: Path, jobs: int, seed: int = 0) -> list[str]:
    """`jobs` realistic finished/queued jobs with attempts and events; return their ids."""
    from trainsup.commands.submit import resolve
    from trainsup.jobs.spec import load_spec
    from trainsup.jobs.states import EndReason, JobState
    from trainsup.jobs.store import Attempt, Job, Store
    from trainsup.paths import StateDir

    rng = random.Random(seed)
    state = StateDir(home)
    state.ensure()
    spec_path = common.REPO / "jobs" / "quickstart" / "job.yaml"
    spec, text = load_spec(spec_path)
    environment = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    store = Store.open(state.db)
    ids = []
    now = time.time() - jobs * 600.0
    with store.transaction():
        for i in range(jobs):
            job_id = f"{i:08x}"
            ids.append(job_id)
            resolved = resolve(spec, spec_path, state, job_id)
            name = f"run-{i % 97}-{rng.choice(['mlp', 'resnet', 'gpt', 'vit'])}"
            job_state = JobState(rng.choice(STATES))
            submitted = now + i * 600.0
            store.insert_job(Job(
                id=job_id, name=name, state=job_state, state_since=submitted + 500, submitted_at=submitted,
                spec_json=resolved.model_dump_json(by_alias=True), spec_text=text, spec_path=str(spec_path),
                environment=environment, checkpoint_dir=str(resolved.checkpoint_dir), next_start_at=None,
                stop_requested=None, batch=None,
                result=None if not job_state.is_terminal else f"{job_state}: benchmark row",
            ))
            store.add_event(job_id, "submitted", f"submitted from {spec_path}", submitted)
            attempts = 0 if job_state in (JobState.QUEUED, JobState.HELD) else rng.randint(1, 3)
            for n in range(1, attempts + 1):
                started = submitted + n * 100
                last = n == attempts
                reason = EndReason.SUCCEEDED if (last and job_state is JobState.SUCCEEDED) else EndReason.CRASH
                store.insert_attempt(Attempt(
                    job_id=job_id, number=n, run_dir=str(state.run_dir(job_id, n)),
                    log_path=str(state.attempt_log(job_id, n)), boot_id="bench", started_at=started,
                    monitor_pid=None, monitor_started=None, job_pid=None, ended_at=None, exit_code=None,
                    signal=None, reason=None, detail=None, checkpoint_before=None, checkpoint_after=None,
                    batch=None, peak_gpu_memory=None,
                ))
                store.update_attempt(job_id, n, monitor_pid=10000 + n, monitor_started=started,
                                     job_pid=20000 + n, ended_at=started + 90,
                                     exit_code=0 if reason is EndReason.SUCCEEDED else 1, reason=reason,
                                     detail="exited 0" if reason is EndReason.SUCCEEDED else "exited 1",
                                     checkpoint_after=f"{resolved.checkpoint_dir}/step-{n * 1000:09d}")
                store.add_event(job_id, "attempt_started", f"attempt {n} starting", started)
                store.add_event(job_id, "attempt_running", f"attempt {n} running as pid {20000 + n}", started)
                store.add_event(job_id, "attempt_ended", f"attempt {n} ended: exited 1 → {reason}", started + 90)
                store.add_event(job_id, "decision", "restart: crash; restart 1 of 5 in 1.0s", started + 90)
    store.close()
    return ids


def run(quick: bool = False, jobs: int = 1000, reps: int | None = None, warmup: int = 1,
        torch_import: bool = True) -> dict[str, Any]:
    reps = reps or (5 if quick else 15)
    with common.workdir("cli") as tmp:
        home = tmp / "state"
        started = time.perf_counter()
        ids = populate(home, jobs)
        populate_s = time.perf_counter() - started
        env = dict(os.environ, TRAINSUP_HOME=str(home))
        env.pop("NOTIFY_SOCKET", None)
        spec = common.write_job(tmp / "job", "bench-submit", [common.PYTHON, "-c", "pass"])
        inbox = home / "inbox"

        def cli(*args: str):
            return lambda: common.run_once([*common.TRAINSUP, *args], env=env)

        def submit() -> float:
            elapsed = common.run_once([*common.TRAINSUP, "submit", str(spec), "--json"], env=env)
            for path in inbox.iterdir():  # keep the inbox empty: status reads pending submissions
                path.unlink()
            return elapsed

        cases = {
            "python -c pass": lambda: common.run_once([common.PYTHON, "-c", "pass"]),
            "trainsup status": cli("status"),
            "trainsup status --json": cli("status", "--json"),
            "trainsup status JOB --json": cli("status", ids[len(ids) // 2], "--json"),
            "trainsup submit --json": submit,
        }
        if torch_import:
            cases["python -c 'import torch'"] = lambda: common.run_once([common.PYTHON, "-c", "import torch"])
        times = common.interleaved(cases, reps, warmup)
    figures = {name: common.summary(values, 1000.0) for name, values in times.items()}
    floor = figures["python -c pass"]["median"]
    torch_ms = figures.get("python -c 'import torch'", {}).get("median")
    ratios = {}
    for name in ("trainsup status", "trainsup status --json", "trainsup status JOB --json", "trainsup submit --json"):
        ratios[f"{name} / python -c pass"] = common.ratio(figures[name]["median"], floor)
        ratios[f"{name} / import torch"] = common.ratio(figures[name]["median"], torch_ms)
    return {
        "figure": "cli",
        "title": "CLI latency with %d jobs in the store (ms, median of %d)" % (jobs, reps),
        "unit": "ms",
        "jobs_in_store": jobs,
        "reps": reps,
        "populate_s": populate_s,
        "commands": figures,
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-torch", action="store_true", help="leave out `python -c 'import torch'`")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, jobs=args.jobs, reps=args.reps, warmup=args.warmup, torch_import=not args.skip_torch)
    common.emit(result, args.json)


if __name__ == "__main__":
    main()
