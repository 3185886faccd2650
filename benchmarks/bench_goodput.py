"""Figure 7, goodput under chaos: useful steps per second while SIGKILLs land at random.

`jobs/trainer-demo/train.py --epochs E` runs under a trainsup daemon twice:

- uninterrupted, and
- while a seeded random process SIGKILLs the job's training process (exponential
  intervals, mean = a fraction of the uninterrupted wall time, so several land; at most
  `max_kills`), with `restart: {initial: 0s, jitter: 0, crash_loop: 0}` so the figure
  shows what the mechanism costs, not a chosen backoff.

Reported: wall time submit → succeeded for both, kills that landed, attempts, goodput
(useful steps / wall s) for both and their ratio, and whether the final checkpoint's
tensors (model, optimizer, scheduler, extra state) are bit-identical (`torch.equal` on
every tensor) to the uninterrupted run's. With the plain-torch quickstart (no trainer
library) equality is reported as "n/a (no bit-exact resume)".

    python benchmarks/bench_goodput.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SEED = 20240611
# Python's and numpy's global RNGs, which trainer-demo never seeds (nor uses): each process
# starts them from OS entropy, so they differ between any two runs, interrupted or not.
UNSEEDED = ("/rng/python", "/rng/numpy")


def _spec(folder: Path, name: str, epochs: int) -> tuple[Path, bool]:
    demo = common.REPO / "jobs" / "trainer-demo"
    restart = {"max_restarts": 100, "initial": "0s", "max": "0s", "jitter": 0, "crash_loop": 0}
    if (demo / "train.py").exists():
        return common.write_job(
            folder, name, [common.PYTHON, "train.py", "--epochs", str(epochs)], workdir=str(demo),
            restart=restart, batch_size={"global": 128, "micro": 64, "min_micro": 8},
        ), True
    quick = common.REPO / "jobs" / "quickstart"
    return common.write_job(folder, name, [common.PYTHON, "train.py"], workdir=str(quick),
                            checkpoint_dir=str(folder / f"{name}-checkpoints"), restart=restart,
                            env={"STEPS": str(epochs * 600)}), False


def _final_state(checkpoint_dir: Path) -> tuple[str | None, Any]:
    import torch

    steps = sorted(checkpoint_dir.glob("step-*"))
    if not steps:
        return None, None
    return steps[-1].name, torch.load(steps[-1] / "state.pt", weights_only=True, map_location="cpu")


def _compare(a: Any, b: Any, path: str = "") -> tuple[int, list[str]]:
    """(tensors compared, paths that differ) over nested dicts/lists of tensors.

    Non-tensor leaves are compared too, except floats (times, rates) under keys that
    name wall-clock measurements.
    """
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return 1, [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return 0, [f"{path} (keys {sorted(set(a) ^ set(b), key=str)[:5]})"]
        count, diffs = 0, []
        for key in a:
            n, d = _compare(a[key], b[key], f"{path}/{key}")
            count, diffs = count + n, diffs + d
        return count, diffs
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return 0, [f"{path} (length {len(a)} vs {len(b)})"]
        count, diffs = 0, []
        for i, (x, y) in enumerate(zip(a, b)):
            n, d = _compare(x, y, f"{path}[{i}]")
            count, diffs = count + n, diffs + d
        return count, diffs
    if isinstance(a, float) and any(word in path for word in ("time", "created", "_s", "per_s")):
        return 0, []
    return 0, [] if a == b else [path]


def _run_job(daemon: common.Daemon, spec: Path, timeout: float, kill_mean: float | None,
             max_kills: int, rng: random.Random) -> dict[str, Any]:
    started = time.monotonic()
    job_id = daemon.submit(spec)
    kills, next_kill, killed = 0, None, set()
    if kill_mean is not None:
        next_kill = started + rng.expovariate(1.0 / kill_mean)
    state = None
    while time.monotonic() - started < timeout:
        state = daemon.job_state(job_id)
        if state in ("succeeded", "failed", "cancelled"):
            break
        now = time.monotonic()
        if next_kill is not None and now >= next_kill and kills < max_kills:
            attempts = daemon.attempts(job_id)
            live = attempts[-1] if attempts and attempts[-1]["ended_at"] is None else None
            if live and live["job_pid"] and live["number"] not in killed:
                try:
                    os.kill(live["job_pid"], signal.SIGKILL)
                    kills += 1
                    killed.add(live["number"])
                except ProcessLookupError:
                    pass
                next_kill = now + rng.expovariate(1.0 / kill_mean)
        time.sleep(0.05)
    wall = time.monotonic() - started
    attempts = daemon.attempts(job_id)
    return {"job_id": job_id, "state": state, "wall_s": wall, "kills": kills, "attempts": len(attempts),
            "reasons": [a["reason"] for a in attempts]}


def run(quick: bool = False) -> dict[str, Any]:
    epochs = 2 if quick else 5
    max_kills = 3 if quick else 6
    rng = random.Random(SEED)
    result: dict[str, Any] = {"figure": "goodput", "seed": SEED}
    with common.workdir("goodput") as tmp:
        spec_plain, demo = _spec(tmp, "goodput-plain", epochs)
        spec_chaos, _ = _spec(tmp, "goodput-chaos", epochs)
        with common.Daemon(tmp / "state") as daemon:
            plain = _run_job(daemon, spec_plain, 600, None, 0, rng)
            if plain["state"] != "succeeded":
                return {**result, "error": f"the uninterrupted run ended {plain['state']}"}
            # Mean interval: the clean run split in max_kills + 1, so that several land.
            kill_mean = plain["wall_s"] / (max_kills + 1)
            chaos = _run_job(daemon, spec_chaos, 900, kill_mean, max_kills, rng)
            dirs = {}
            for name, run_ in (("plain", plain), ("chaos", chaos)):
                db = daemon.db()
                row = db.execute("SELECT checkpoint_dir FROM jobs WHERE id=?", (run_["job_id"],)).fetchone()
                db.close()
                dirs[name] = Path(row["checkpoint_dir"])
        plain_ckpt, plain_state = _final_state(dirs["plain"])
        chaos_ckpt, chaos_state = _final_state(dirs["chaos"])
    steps = int(plain_ckpt.split("-")[1]) if plain_ckpt else None
    differences: list[str] = []
    if not demo:
        equal: Any = "n/a (no bit-exact resume)"
        compared = 0
    elif chaos["state"] != "succeeded" or plain_state is None or chaos_state is None:
        equal, compared = "n/a (the chaos run did not finish)", 0
    else:
        compared, differences = _compare(plain_state, chaos_state)
        equal = not [d for d in differences if not d.startswith(UNSEEDED)]
    goodput_plain = steps / plain["wall_s"] if steps else None
    goodput_chaos = steps / chaos["wall_s"] if steps and chaos["state"] == "succeeded" else None
    result.update({
        "title": f"Goodput under random SIGKILLs, {'jobs/trainer-demo' if demo else 'jobs/quickstart'}, "
                 f"{steps} steps",
        "script": "jobs/trainer-demo/train.py" if demo else "jobs/quickstart/train.py",
        "steps": steps,
        "kill_mean_interval_s": kill_mean,
        "uninterrupted": {k: plain[k] for k in ("state", "wall_s", "attempts")},
        "chaos": {k: chaos[k] for k in ("state", "wall_s", "attempts", "kills", "reasons")},
        "goodput_steps_per_s": {"uninterrupted": goodput_plain, "chaos": goodput_chaos},
        "goodput_ratio": common.ratio(goodput_chaos, goodput_plain),
        "final_checkpoints": {"uninterrupted": plain_ckpt, "chaos": chaos_ckpt},
        "bit_exact": equal,
        "tensors_compared": compared,
        "differences": differences[:20],
        "ignored": "global python/numpy RNG states: the script never seeds them, so two clean runs differ too",
    })
    return result


if __name__ == "__main__":
    common.standalone_main(run)
