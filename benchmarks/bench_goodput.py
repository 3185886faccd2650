"""Figure 7, goodput under chaos: useful steps per second while SIGKILLs land at random.

`jobs/trainer-demo/train.py --epochs E` runs under a trainsup daemon:

- uninterrupted with in-memory snapshots off (`TRAINSUP_SNAPSHOTS=off`): the baseline,
  and once with them on (what snapshots cost when nothing fails);
- for each kill interval, twice (snapshots on, then off) under the same seeded schedule
  of SIGKILLs to the job's training process (exponential intervals of that mean),
  with `restart: {initial: 0s, jitter: 0, crash_loop: 0}` so the figure shows what the
  mechanism costs, not a chosen backoff.

Reported per run: wall time submit → succeeded, kills that landed, attempts, goodput
(useful steps / wall s) and its ratio to the baseline, steps lost per kill (the step of
the killed attempt's last heartbeat minus the step the next attempt resumed at, from its
`resume.json`; heartbeats are written at most every 0.25 s, so this undercounts by up to
0.25 s of steps), and whether the final checkpoint's tensors (model, optimizer,
scheduler, extra state) are bit-identical (`torch.equal` on every tensor) to the
baseline's. With the plain-torch quickstart (no trainer library) equality is reported
as "n/a (no bit-exact resume)".

    python benchmarks/bench_goodput.py [--quick] [--json PATH] [--intervals 10,30,120] [--epochs E]

`--quick`: 2 epochs, one interval (the baseline's wall time / 4, so about 3 kills land).
Full: as many epochs as take about 90 s here (timed first, outside the daemon;
`--patience` keeps trainer-demo from stopping early), kill intervals 30 s (the headline
row), 10 s and 120 s: a 90 s run sees about 3 kills 30 s apart and often none 120 s
apart. `rows(fig)` gives a table row per run (for benchmarks/run.py).
"""

from __future__ import annotations

import json
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


def _spec(folder: Path, name: str, epochs: int, snapshots: bool = True) -> tuple[Path, bool]:
    demo = common.REPO / "jobs" / "trainer-demo"
    restart = {"max_restarts": 1000, "initial": "0s", "max": "0s", "jitter": 0, "crash_loop": 0}
    if (demo / "train.py").exists():
        return common.write_job(
            folder, name, [common.PYTHON, "train.py", "--epochs", str(epochs), "--patience", "1000000"],
            workdir=str(demo),
            restart=restart, batch_size={"global": 128, "micro": 64, "min_micro": 8},
            env={"TRAINSUP_SNAPSHOTS": "on" if snapshots else "off"},
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _beat_step(run_dir: str) -> int | None:
    beat = _read_json(Path(run_dir) / "heartbeat" / "rank-0.json")
    return beat.get("step") if isinstance(beat, dict) else None


def _resumed_after(attempts: list[dict[str, Any]], number: int) -> int | None:
    """The step the first attempt after `number` that got into its loop (it wrote a heartbeat)
    started at: its `resume.json`, or 0 (a fresh start writes none). Attempts killed
    before that resumed nothing: the next one starts from the same state."""
    for attempt in attempts:
        if attempt["number"] > number and _beat_step(attempt["run_dir"]) is not None:
            record = _read_json(Path(attempt["run_dir"]) / "resume.json")
            return (record.get("step") or 0) if isinstance(record, dict) else 0
    return None


def _run_job(daemon: common.Daemon, spec: Path, timeout: float, kill_mean: float | None,
             max_kills: int, rng: random.Random) -> dict[str, Any]:
    started = time.monotonic()
    job_id = daemon.submit(spec)
    kills, next_kill, killed = 0, None, {}  # attempt number -> step of its last heartbeat at the kill
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
                step = _beat_step(live["run_dir"])
                try:
                    os.kill(live["job_pid"], signal.SIGKILL)
                    kills += 1
                    killed[live["number"]] = step
                except ProcessLookupError:
                    pass
                next_kill = now + rng.expovariate(1.0 / kill_mean)
        time.sleep(0.02)
    wall = time.monotonic() - started
    attempts = daemon.attempts(job_id)
    lost = []
    for number, step in sorted(killed.items()):
        resumed = _resumed_after(attempts, number)
        if step is not None and resumed is not None:
            lost.append(step - resumed)
    return {"job_id": job_id, "state": state, "wall_s": wall, "kills": kills, "attempts": len(attempts),
            "reasons": [a["reason"] for a in attempts], "steps_lost_per_kill": lost,
            "steps_lost_median": common.median(lost), "steps_lost_mean": sum(lost) / len(lost) if lost else None}


def _checkpoint_dir(daemon: common.Daemon, job_id: str) -> Path:
    db = daemon.db()
    try:
        return Path(db.execute("SELECT checkpoint_dir FROM jobs WHERE id=?", (job_id,)).fetchone()["checkpoint_dir"])
    finally:
        db.close()


def _judge(run_: dict[str, Any], base_state: Any, demo: bool, steps: int | None, base_goodput: float | None,
           checkpoint_dir: Path) -> dict[str, Any]:
    """Goodput, its ratio to the baseline, and bit-exactness of one run's final checkpoint."""
    name, state = _final_state(checkpoint_dir)
    equal: Any
    if not demo:
        equal, compared, differences = "n/a (no bit-exact resume)", 0, []
    elif run_["state"] != "succeeded" or base_state is None or state is None:
        equal, compared, differences = "n/a (the run did not finish)", 0, []
    else:
        compared, differences = _compare(base_state, state)
        equal = not [d for d in differences if not d.startswith(UNSEEDED)]
    goodput = steps / run_["wall_s"] if steps and run_["state"] == "succeeded" else None
    return {**{k: v for k, v in run_.items() if k != "job_id"}, "goodput_steps_per_s": goodput,
            "goodput_ratio": common.ratio(goodput, base_goodput), "final_checkpoint": name, "bit_exact": equal,
            "tensors_compared": compared, "differences": differences[:20]}


TARGET_S = 90.0  # the uninterrupted run: long enough for a few kills 30 s apart


def _epochs_for(seconds: float) -> int:
    """Epochs of trainer-demo that take about `seconds` here: 1 and 3 epochs timed, the difference is 2."""
    demo = common.REPO / "jobs" / "trainer-demo" / "train.py"
    if not demo.exists():
        return 30
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSUP_")}
    env["TRAINSUP_SNAPSHOTS"] = "off"
    times = []
    with common.workdir("goodput-calibrate") as tmp:
        for count in (1, 3):
            argv = [common.PYTHON, str(demo), "--epochs", str(count), "--patience", "1000000",
                    "--checkpoint-dir", str(tmp / f"ckpt-{count}")]
            times.append(common.run_once(argv, env=env))
    per_epoch = max((times[1] - times[0]) / 2, 0.05)
    return max(4, round(seconds / per_epoch))


def run(quick: bool = False, intervals: list[float] | None = None, epochs: int | None = None) -> dict[str, Any]:
    """Figure 7; `intervals` are mean seconds between kills (default: 30, 10, 120; quick: one, a
    quarter of the baseline's wall time)."""
    epochs = epochs or (2 if quick else _epochs_for(TARGET_S))
    result: dict[str, Any] = {"figure": "goodput", "seed": SEED, "epochs": epochs}
    with common.workdir("goodput") as tmp, common.Daemon(tmp / "state") as daemon:
        spec, demo = _spec(tmp, "goodput-plain", epochs, snapshots=False)
        plain = _run_job(daemon, spec, 3600, None, 0, random.Random(SEED))
        if plain["state"] != "succeeded":
            return {**result, "error": f"the uninterrupted run ended {plain['state']}"}
        base_name, base_state = _final_state(_checkpoint_dir(daemon, plain["job_id"]))
        steps = int(base_name.split("-")[1]) if base_name else None
        base_goodput = steps / plain["wall_s"] if steps else None
        runs: dict[str, dict[str, Any]] = {}
        if not quick:
            spec, _ = _spec(tmp, "goodput-plain-snapshots", epochs, snapshots=True)
            on = _run_job(daemon, spec, 3600, None, 0, random.Random(SEED))
            runs["uninterrupted, snapshots on"] = _judge(on, base_state, demo, steps, base_goodput,
                                                         _checkpoint_dir(daemon, on["job_id"]))
        means = intervals or ([plain["wall_s"] / 4] if quick else [30.0, 10.0, 120.0])
        for mean in means:
            for snapshots in (True, False):
                label = f"every {mean:.0f} s, snapshots {'on' if snapshots else 'off'}"
                spec, _ = _spec(tmp, f"goodput-{mean:.0f}s-{'on' if snapshots else 'off'}", epochs, snapshots)
                chaos = _run_job(daemon, spec, max(3600, 20 * plain["wall_s"]), mean, 10_000, random.Random(SEED))
                runs[label] = {"kill_mean_interval_s": mean, "snapshots": snapshots,
                               **_judge(chaos, base_state, demo, steps, base_goodput,
                                        _checkpoint_dir(daemon, chaos["job_id"]))}
    headline = runs[f"every {means[0]:.0f} s, snapshots on"]
    result.update({
        "title": f"Goodput under random SIGKILLs, {'jobs/trainer-demo' if demo else 'jobs/quickstart'}, "
                 f"{steps} steps",
        "script": "jobs/trainer-demo/train.py" if demo else "jobs/quickstart/train.py",
        "steps": steps,
        "kill_mean_interval_s": means[0],
        "uninterrupted": {k: plain[k] for k in ("state", "wall_s", "attempts")},
        "chaos": {k: headline[k] for k in ("state", "wall_s", "attempts", "kills", "reasons")},
        "goodput_steps_per_s": {"uninterrupted": base_goodput, "chaos": headline["goodput_steps_per_s"]},
        "goodput_ratio": headline["goodput_ratio"],
        "final_checkpoints": {"uninterrupted": base_name, "chaos": headline["final_checkpoint"]},
        "bit_exact": headline["bit_exact"],
        "tensors_compared": headline["tensors_compared"],
        "differences": headline["differences"],
        "runs": runs,
        "ignored": "global python/numpy RNG states: the script never seeds them, so two clean runs differ too",
    })
    return result


def rows(fig: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Table rows (figure, measure, trainsup, alternative, ratio) for every run of the figure:
    goodput, kills and steps lost per kill, snapshots on beside off."""
    out = []
    for label, r in fig.get("runs", {}).items():
        lost = r.get("steps_lost_median")
        kills = f"{r['kills']} kills, median {lost:g} steps lost per kill" if lost is not None else f"{r['kills']} kills"
        rate = r.get("goodput_steps_per_s")
        out.append(("", label, f"{rate:.2f} steps/s ({r['wall_s']:.1f} s)" if rate else str(r.get("state")),
                    kills + ("" if r.get("bit_exact") is True else f"; bit-exact: {r.get('bit_exact')}"),
                    f"{r['goodput_ratio']:.2f}×" if r.get("goodput_ratio") else "–"))
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--intervals", default=None, help="mean seconds between kills, comma-separated")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    intervals = [float(v) for v in args.intervals.split(",")] if args.intervals else None
    common.emit(run(quick=args.quick, intervals=intervals, epochs=args.epochs), args.json)


if __name__ == "__main__":
    main()
