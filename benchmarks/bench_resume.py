"""Figure 4, resume cost: process start → first training step, resuming vs fresh.

The script is `jobs/trainer-demo/train.py` (trainsup.trainer: verified, bit-exact
resume), or `jobs/quickstart/train.py` (plain torch.load) if the trainer demo is not
there. A tiny runner starts it with a global optimizer step hook that prints the time of
the first `optimizer.step()` and exits at once.

- fresh:  an empty checkpoint dir.
- resume: the checkpoint dir a crashed run left (it was SIGKILLed mid-epoch: committed
  checkpoints and possibly a half-written temp dir), so the script finds, verifies
  (sha256) and loads the newest checkpoint and restores model, optimizer, scheduler, RNG
  and data position before its first step.

Runs alternate (fresh, resume, fresh, ...). Each is timed from process start and, less
noisily, from the moment `import torch` returned (torch's import, with the
torch._dynamo import the first optimizer triggers, 2-6 s on 2 busy cores, dominates
both and is the same for both); resume − fresh of the latter is what
resuming costs.

    python benchmarks/bench_resume.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

RUNNER = """\
import os, runpy, signal, sys, time
import torch.optim.optimizer as optimizer_module
import torch._dynamo  # torch imports it lazily at the first optimizer: count it as torch's import
imported = time.time()
mode, script, *args = sys.argv[1:]
steps = 0
def hook(optimizer, a, kw):
    global steps
    steps += 1
    if mode == "first" and steps == 1:
        print(f"BENCH first_step {time.time():.6f} imported {imported:.6f}", flush=True)
        os._exit(0)
    if mode.startswith("crash@") and steps == int(mode[6:]):
        print(f"BENCH crashing at step {steps}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
optimizer_module.register_optimizer_step_post_hook(hook)
sys.argv = [script, *args]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
"""
FIRST = re.compile(r"BENCH first_step (\d+\.\d+) imported (\d+\.\d+)")


def pick_script() -> tuple[str, Path, list[str]]:
    demo = common.REPO / "jobs" / "trainer-demo" / "train.py"
    if demo.exists():
        return "jobs/trainer-demo/train.py", demo, ["--epochs", "5"]
    return "jobs/quickstart/train.py", common.REPO / "jobs" / "quickstart" / "train.py", []


def _env(checkpoint_dir: Path, uses_flag: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSUP_")}
    env["TRAINSUP_CHECKPOINT_DIR"] = str(checkpoint_dir)  # quickstart reads it; the demo gets --checkpoint-dir
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(runner: Path, mode: str, script: Path, args: list[str], checkpoint_dir: Path,
         demo: bool) -> tuple[tuple[float, float], str]:
    """(start → first step, torch imported → first step) in seconds, and the output."""
    argv = [common.PYTHON, str(runner), mode, str(script), *args]
    if demo:
        argv += ["--checkpoint-dir", str(checkpoint_dir)]
    started = time.time()
    result = subprocess.run(argv, cwd=script.parent, env=_env(checkpoint_dir, demo), capture_output=True,
                            text=True, timeout=300)
    match = FIRST.search(result.stdout)
    if mode == "first" and match is None:
        raise RuntimeError(f"no first step (exit {result.returncode}): {result.stderr[-600:]}")
    if match is None:
        return (time.time() - started, 0.0), result.stdout + result.stderr
    first, imported = float(match.group(1)), float(match.group(2))
    return (first - started, first - imported), result.stdout + result.stderr


def run(quick: bool = False) -> dict[str, Any]:
    reps = 2 if quick else 10
    label, script, args = pick_script()
    demo = "trainer-demo" in label
    with common.workdir("resume") as tmp:
        runner = tmp / "runner.py"
        runner.write_text(RUNNER)
        crashed = tmp / "crashed"
        crash_step = 50
        _, output = _run(runner, f"crash@{crash_step}", script, args, crashed, demo)
        checkpoints = sorted(p.name for p in crashed.glob("step-*")) if crashed.exists() else []
        if not checkpoints:
            return {"figure": "resume", "error": f"the crashed run left no checkpoint: {output[-400:]}"}
        checkpoint_bytes = sum(f.stat().st_size for f in (crashed / checkpoints[-1]).rglob("*") if f.is_file())

        def fresh() -> tuple[float, float]:
            folder = tmp / "fresh"
            shutil.rmtree(folder, ignore_errors=True)
            return _run(runner, "first", script, args, folder, demo)[0]

        def resume() -> tuple[float, float]:
            folder = tmp / "resume"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(crashed, folder)
            return _run(runner, "first", script, args, folder, demo)[0]

        pairs = common.interleaved({"fresh": fresh, "resume": resume}, reps)
    figures = {}
    for name, values in pairs.items():
        figures[name] = common.summary([v[0] for v in values], 1000.0)
        figures[f"{name}, after import torch"] = common.summary([v[1] for v in values], 1000.0)
    fresh_ms = figures["fresh, after import torch"]["median"]
    resume_ms = figures["resume, after import torch"]["median"]
    cost = None if None in (fresh_ms, resume_ms) else resume_ms - fresh_ms
    return {
        "figure": "resume",
        "title": f"Start → first training step, {label} (ms, median of {reps})",
        "unit": "ms",
        "script": label,
        "crashed_at_step": crash_step,
        "resumed_from": checkpoints[-1],
        "checkpoint_bytes": checkpoint_bytes,
        "runs": figures,
        "resume_cost_ms": cost,
        "ratios": {"resume / fresh": common.ratio(figures["resume"]["median"], figures["fresh"]["median"]),
                   "resume / fresh, after import torch": common.ratio(resume_ms, fresh_ms)},
    }


if __name__ == "__main__":
    common.standalone_main(run)
