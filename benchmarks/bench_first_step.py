"""Figure 2, what a user waits for: a SIGKILL → the next attempt's first *training step*.

The job is the example `jobs/trainer-demo/train.py` (trainsup.trainer: it resumes from
its newest verified checkpoint). It runs through a small runner, `job.py`, that imports
what train.py imports, prints the time of each process's first `optimizer.step()`, and
then runs train.py unchanged. The benchmark waits `hold` seconds after each first step
(and, with a standby, until the standby is ready), SIGKILLs the process and times
death → the next first step, under

- trainsup with its warm standby (the default: docs/standby.md),
- trainsup with `standby: false` (a fresh interpreter: import torch again),
- torchrun (`--max-restarts`, its own restart loop), and
- a shell loop (`until python job.py; do :; done`).

None waits between attempts (trainsup: `initial: 0s`). The standby's cost is sampled just
before each kill: the resident memory of its two processes and the CPU time its preload
took.

    python benchmarks/bench_first_step.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "jobs" / "trainer-demo" / "train.py"
RUNNER = f"""\
import os, runpy, sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset
from trainsup import trainer
import torch.optim.optimizer as optimizer_module

def first_step(optimizer, args, kwargs):
    print(f"BENCH first_step {{time.time():.6f}} pid {{os.getpid()}}", flush=True)
    hook.remove()

hook = optimizer_module.register_optimizer_step_post_hook(first_step)
sys.argv = [{str(DEMO)!r}, *sys.argv[1:]]
runpy.run_path({str(DEMO)!r}, run_name="__main__")
"""
FIRST = re.compile(r"BENCH first_step (\d+\.\d+) pid (\d+)")
ARGS = ["--epochs", "100000", "--patience", "100000"]  # it never ends by itself


def kill_cycle(output: Callable[[], str], kills: int, hold: float, timeout: float,
               before_kill: Callable[[], None] | None = None) -> list[float]:
    """SIGKILL each new attempt `hold` s after its first step; death → next first step, `kills` times."""
    gaps: list[float] = []
    seen, death = 0, None
    deadline = time.monotonic() + timeout
    while len(gaps) < kills and time.monotonic() < deadline:
        firsts = FIRST.findall(output())
        if len(firsts) <= seen:
            time.sleep(0.005)
            continue
        stamp, pid = firsts[seen]
        seen += 1
        if death is not None:
            gaps.append(float(stamp) - death)
            if len(gaps) == kills:
                break
        time.sleep(hold)
        if before_kill is not None:
            before_kill()
        death = time.time()
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            raise RuntimeError(f"the job (pid {pid}) ended by itself before its kill") from None
    return gaps


def standalone(folder: Path, argv: list[str], kills: int, hold: float) -> dict[str, Any]:
    """torchrun or the shell loop: the job's output goes to one file the cycle reads."""
    out = folder / "output.txt"
    with open(out, "wb") as handle:
        process = subprocess.Popen(argv, cwd=folder, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        gaps = kill_cycle(lambda: out.read_text(errors="replace"), kills, hold, timeout=kills * (hold + 60) + 60)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if len(gaps) < kills:
        return {"error": f"only {len(gaps)} restarts: {out.read_text(errors='replace')[-500:]}"}
    return {"gaps": gaps}


def shell_loop(folder: Path, kills: int, hold: float) -> dict[str, Any]:
    loop = f'until "{common.PYTHON}" job.py {" ".join(ARGS)} --checkpoint-dir ckpt; do :; done'
    return standalone(folder, ["/bin/sh", "-c", loop], kills, hold)


def torchrun(folder: Path, kills: int, hold: float) -> dict[str, Any]:
    argv = [*common.TORCHRUN, "--standalone", "--nnodes", "1", "--nproc-per-node", "1",
            "--max-restarts", str(kills + 1), "job.py", *ARGS, "--checkpoint-dir", "ckpt"]
    return standalone(folder, argv, kills, hold)


def trainsup(folder: Path, kills: int, hold: float, standby: bool) -> dict[str, Any]:
    spec = common.write_job(
        folder, "first-step", [common.PYTHON, str(folder / "job.py"), *ARGS], workdir=str(folder),
        restart={"max_restarts": kills + 5, "initial": "0s", "max": "0s", "jitter": 0, "crash_loop": 0},
        standby=standby,
    )
    costs: list[dict[str, float]] = []
    with common.Daemon(folder / "state") as daemon:
        job_id = daemon.submit(spec)
        logs = folder / "state" / "jobs" / job_id

        def output() -> str:
            paths = sorted(logs.glob("attempt-*.log"), key=lambda p: int(p.stem.split("-")[1]))
            return "".join(p.read_text(errors="replace") for p in paths)

        def ready_then_sample() -> None:
            # a kill before the standby is ready would time the standby's own imports, not a restart
            common.wait_for(lambda: list(logs.glob("standby-*/ready.json")), 120)
            costs.append(_standby_cost(folder / "state"))

        sample = ready_then_sample if standby else None
        gaps = kill_cycle(output, kills, hold, timeout=kills * (hold + 60) + 60, before_kill=sample)
        used = [a for a in daemon.attempts(job_id)]
        notes = [_standby_note(Path(a["run_dir"])) for a in used[1:]]
        daemon.cli("cancel", "--force", job_id, check=False)
    if len(gaps) < kills:
        return {"error": f"only {len(gaps)} restarts; see {logs}"}
    result: dict[str, Any] = {"gaps": gaps, "standby_used": sum(note == "used" for note in notes),
                              "restarts": len(notes)}
    costs = [c for c in costs if c]
    if costs:
        result["standby_rss_mib"] = common.median([c["rss_mib"] for c in costs])
        result["standby_cpu_s"] = common.median([c["cpu_s"] for c in costs])
    return result


def _standby_cost(home: Path) -> dict[str, float]:
    """Resident memory (MiB) of a waiting standby's monitor and process, and their CPU time (s)."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "--standby" not in cmdline or not any(str(home) in word for word in cmdline):
            continue
        # an activated standby keeps its command line but not its dir: that one is the running attempt
        standby_dir = Path(cmdline[cmdline.index("--standby") + 1])
        if (standby_dir / "ready.json").exists():
            try:
                members = [process, *process.children(recursive=True)]
                rss = sum(m.memory_info().rss for m in members)
                cpu = sum(sum(m.cpu_times()[:2]) for m in members)
            except psutil.Error:
                return {}
            return {"rss_mib": rss / 2**20, "cpu_s": cpu}
    return {}


def _standby_note(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / "started.json").read_text()).get("standby")
    except (OSError, ValueError):
        return None


def run(quick: bool = False) -> dict[str, Any]:
    kills = 3 if quick else 6
    hold = 9.0  # a fresh attempt's standby starts 5 s in and imports torch: let it be ready
    runners: dict[str, Callable[[Path], dict[str, Any]]] = {
        "trainsup (standby)": lambda f: trainsup(f, kills, hold, standby=True),
        "trainsup (no standby)": lambda f: trainsup(f, kills, hold, standby=False),
        "torchrun": lambda f: torchrun(f, kills, hold),
        "shell loop": lambda f: shell_loop(f, kills, hold),
    }
    figures: dict[str, Any] = {}
    with common.workdir("first-step") as tmp:
        for name, runner in runners.items():
            folder = tmp / re.sub(r"\W+", "-", name)
            folder.mkdir()
            (folder / "job.py").write_text(RUNNER)
            try:
                one = runner(folder)
            except Exception as exc:  # a broken alternative must not sink the other figures
                one = {"error": f"{type(exc).__name__}: {exc}"}
            if "error" in one:
                figures[name] = one
                continue
            figures[name] = {**common.summary(one.pop("gaps"), 1000.0), **one}
    median = {name: f.get("median") for name, f in figures.items()}
    ours = median.get("trainsup (standby)")
    return {
        "figure": "first_step",
        "title": f"Death → next attempt's first training step, example job (ms, median of {kills} SIGKILLs)",
        "unit": "ms",
        "kills": kills,
        "hold_s": hold,
        "supervisors": figures,
        "ratios": {
            "standby / torchrun": common.ratio(ours, median.get("torchrun")),
            "standby / shell loop": common.ratio(ours, median.get("shell loop")),
            "standby / no standby": common.ratio(ours, median.get("trainsup (no standby)")),
        },
    }


if __name__ == "__main__":
    common.standalone_main(run)
