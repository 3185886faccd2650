"""`trainsup status [JOB]`: the jobs, or one job and its attempts."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from trainsup.commands.common import daemon_running, open_store, pending_submissions, resolve_job, waiting_reason
from trainsup.commands.table import format_table, state_colour
from trainsup.contracts import (
    HEARTBEAT_DIR,
    SNAPSHOTS_FILE,
    STANDBY_DIR_PREFIX,
    STANDBY_READY_FILE,
    latest_heartbeat,
    parse_step_dir,
    read_heartbeats,
    read_json,
)
from trainsup.layouts import newest_checkpoint
from trainsup.jobs.states import JobState
from trainsup.paths import StateDir
from trainsup.units import format_duration, format_size, format_span


def job_rows(state: StateDir) -> list[dict[str, Any]]:
    """One dict per job, the newest last; jobs still in the inbox included."""
    pending = pending_submissions(state)  # before the store: see commands.common._all_refs
    store = open_store(state)
    rows = []
    if store is not None:
        for row in store.job_summaries():
            summary = _summary(row)
            if summary["state"] == "queued":
                summary["waiting"] = waiting_reason(store, summary["id"])
            rows.append(summary)
        store.close()
    known = {r["id"] for r in rows}
    running = daemon_running(state) if any(sub["job_id"] not in known for sub in pending) else False
    for sub in pending:
        if sub["job_id"] not in known:
            rows.append({
                "id": sub["job_id"], "name": sub["spec"]["name"], "state": "queued",
                "pending_intake": True, "attempts": 0, "submitted_at": sub["submitted_at"],
                "state_since": sub["submitted_at"], "pid": None, "last_reason": None,
                "runtime_s": None, "result": None, "batch": None, "progress": None, "last_checkpoint": None,
                "peak_gpu_memory": None, "next_start_at": None,
                "waiting": "queued: the daemon has not taken it yet" if running
                else "queued: the daemon is not running",
            })
    return rows


def _summary(row) -> dict[str, Any]:
    live = row["attempt_started"] is not None and row["attempt_ended"] is None
    now = time.time()
    runtime = None
    if row["attempt_started"] is not None:
        runtime = (now if live else row["attempt_ended"]) - row["attempt_started"]
    return {
        "id": row["id"], "name": row["name"], "state": row["state"], "pending_intake": False,
        "attempts": row["attempts"], "submitted_at": row["submitted_at"],
        "state_since": row["state_since"], "pid": row["job_pid"] if live else None,
        "last_reason": row["last_reason"], "runtime_s": runtime, "result": row["result"],
        "batch": json.loads(row["batch_json"]) if row["batch_json"] else None,
        "next_start_at": row["next_start_at"],
        "progress": _with_eta(_progress(row["run_dir"]), row) if live else None,
        "peak_gpu_memory": row["peak_gpu_memory"],
        "last_checkpoint": _last_checkpoint(row),
        "waiting": None,  # for a queued job, why it waits, when the daemon said so
    }


def _last_checkpoint(row) -> dict | None:
    """What the next attempt will find: looked up on disk for unfinished jobs, as recorded otherwise."""
    if row["live_spec_json"] is not None:
        resume = json.loads(row["live_spec_json"]).get("resume") or {}
        found = newest_checkpoint(Path(row["checkpoint_dir"]), resume.get("checkpoint"))
        if found is not None:
            return {"name": found.name, "saved_at": found.written_at, "layout": found.layout}
    name = row["checkpoint_after"] or row["checkpoint_before"]
    if name is None:
        return None
    try:
        at = os.stat(os.path.join(row["checkpoint_dir"], name)).st_mtime
    except OSError:
        return None  # removed, or set aside into quarantine/ since
    return {"name": name, "saved_at": at, "layout": None}


def _with_eta(beat: dict | None, row) -> dict | None:
    """Add `eta_s` when the trainer says how many steps the run has in total."""
    if not beat or not beat.get("total_steps") or row["attempt_started"] is None:
        return beat
    first_step = parse_step_dir(row["checkpoint_before"] or "") or 0
    done = beat["step"] - first_step
    elapsed = beat.get("time", time.time()) - row["attempt_started"]
    if done > 0 and elapsed > 0:
        beat = {**beat, "eta_s": max(0.0, (beat["total_steps"] - beat["step"]) * elapsed / done)}
    return beat


def _progress(run_dir: str | None) -> dict | None:
    """The newest heartbeat of the running attempt, if the job sends them."""
    if not run_dir:
        return None
    beat = latest_heartbeat(read_heartbeats(Path(run_dir) / HEARTBEAT_DIR))
    return beat.to_json() if beat else None


def job_detail(state: StateDir, key: str) -> dict[str, Any]:
    store = open_store(state)
    ref = resolve_job(state, store, key)
    summary = next(r for r in job_rows(state) if r["id"] == ref.id)
    attempts = []
    if store is not None and not ref.pending:
        for a in store.attempts(ref.id):
            attempts.append({
                "number": a.number, "started_at": a.started_at, "ended_at": a.ended_at,
                "pid": a.job_pid, "exit_code": a.exit_code, "signal": a.signal,
                "reason": a.reason, "detail": a.detail, "checkpoint_before": a.checkpoint_before,
                "checkpoint_after": a.checkpoint_after, "batch": a.batch.as_dict() if a.batch else None,
                "peak_gpu_memory": a.peak_gpu_memory, "log": a.log_path, "run_dir": a.run_dir,
            })
        store.close()
    running = [a for a in attempts if a["ended_at"] is None]
    snapshots = read_json(Path(running[-1]["run_dir"]) / SNAPSHOTS_FILE) if running else None
    return {**summary, "attempts": attempts, "standby": _standby(state.job_dir(ref.id)),
            "snapshots": snapshots if isinstance(snapshots, dict) else None}


def _standby(job_dir: Path) -> dict | None:
    """The job's warm standby, if one is ready (docs/standby.md): what it preloaded, its memory."""
    for directory in job_dir.glob(f"{STANDBY_DIR_PREFIX}*"):
        ready = read_json(directory / STANDBY_READY_FILE)
        if not isinstance(ready, dict) or not isinstance(ready.get("pid"), int):
            continue
        try:
            with open(f"/proc/{ready['pid']}/statm") as handle:
                ready["rss_bytes"] = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue  # it has gone (dropped, or it became the attempt a moment ago)
        return ready
    return None


def render_table(rows: list[dict[str, Any]], colour: bool = False) -> None:
    if not rows:
        print("no jobs yet: trainsup submit job.yaml")
        return
    header = ("ID", "NAME", "STATE", "ATTEMPT", "RUNTIME", "LAST END", "PID", "CHECKPOINT", "PROGRESS")
    paint = (lambda column, cell: state_colour(cell) if column == 2 else None) if colour else None
    print(format_table(header, [
        (
            row["id"], row["name"], _state_text(row), str(row["attempts"] or "-"),
            format_duration(row["runtime_s"]) if row["runtime_s"] is not None else "-",
            row["last_reason"] or "-", str(row["pid"] or "-"), _checkpoint_text(row.get("last_checkpoint")),
            _progress_text(row["progress"], row["peak_gpu_memory"] if row["pid"] else None),
        )
        for row in rows
    ], paint))


def watch(state: StateDir, job: str | None, interval: float, colour: bool) -> None:
    """`status -w`: redraw every `interval` seconds, in place on a terminal, until Ctrl+C (exit 0)."""
    terminal = sys.stdout.isatty()
    try:
        while True:
            screen = io.StringIO()
            with contextlib.redirect_stdout(screen):
                if job is None:
                    render_table(job_rows(state), colour)
                else:
                    render_detail(job_detail(state, job))
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            top = "\x1b[H\x1b[2J" if terminal else ""
            sys.stdout.write(f"{top}Every {interval:g}s: trainsup status {job or ''}  {stamp}\n\n{screen.getvalue()}")
            if not terminal:
                sys.stdout.write("\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        if terminal:
            sys.stdout.write("\n")


def render_detail(detail: dict[str, Any]) -> None:
    print(f"{detail['name']} ({detail['id']}): {_state_text(detail)}")
    if detail.get("result"):
        print(f"  result: {detail['result']}")
    if detail.get("batch"):
        batch = detail["batch"]
        print(f"  batch: micro {batch['micro']} × accumulation {batch['grad_accum']} = global {batch['global']}")
    if detail.get("progress"):
        print(f"  progress: {_progress_text(detail['progress'])}")
    if detail.get("last_checkpoint"):
        print(f"  last checkpoint: {_checkpoint_text(detail['last_checkpoint'])}")
    if snapshots := detail.get("snapshots"):
        print("  in-memory snapshots: " + (f"on, about every {snapshots.get('every_seconds'):g} s"
                                            if snapshots.get("on") else f"off: {snapshots.get('why_off')}"))
    if standby := detail.get("standby"):
        preloaded = ", ".join(standby.get("preloaded") or []) or "nothing"
        print(f"  warm standby: ready for attempt {standby.get('attempt')} for "
              f"{format_duration(time.time() - standby['ready_at'])} (preloaded {preloaded}; "
              f"{format_size(standby['rss_bytes'])} resident)")
    if not detail["attempts"]:
        return
    header = ("ATTEMPT", "STARTED", "DURATION", "PID", "EXIT", "REASON", "BATCH", "GPU PEAK", "CHECKPOINT")
    rows = []
    for a in detail["attempts"]:
        end = a["ended_at"] or time.time()
        rows.append((
            str(a["number"]), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["started_at"])),
            format_duration(end - a["started_at"]), str(a["pid"] or "-"), a["detail"] or "running",
            a["reason"] or "-", _batch_text(a["batch"]), _bytes_text(a["peak_gpu_memory"]),
            a["checkpoint_after"] or a["checkpoint_before"] or "-",
        ))
    print(format_table(header, rows))


def _state_text(row: dict[str, Any]) -> str:
    """`queued: waiting for 1 free GPU(s)`, `backoff (4m30s)`, or just the state."""
    if row.get("waiting"):
        return row["waiting"]
    if row["state"] == "backoff" and row.get("next_start_at"):
        return f"backoff ({format_span(row['next_start_at'] - time.time())})"
    return row["state"]


def _checkpoint_text(checkpoint: dict | None) -> str:
    """`step 1200, 3 min ago` for the trainer's checkpoints, `last.ckpt, 40 s ago` for others."""
    if not checkpoint:
        return "-"
    step = parse_step_dir(checkpoint["name"])
    name = f"step {step}" if step is not None else checkpoint["name"]
    if checkpoint.get("saved_at") is None:
        return name
    return f"{name}, {format_duration(max(0.0, time.time() - checkpoint['saved_at']))} ago"


def _batch_text(batch: dict | None) -> str:
    return f"{batch['micro']}×{batch['grad_accum']}" if batch else "-"


def _bytes_text(size: int | None) -> str:
    return f"{size / 2**30:.1f} GiB" if size else "-"


def _progress_text(beat: dict | None, gpu_peak: int | None = None) -> str:
    gpu = f"GPU peak {_bytes_text(gpu_peak)}" if gpu_peak else None
    if not beat:
        return gpu or "-"
    parts = [f"step {beat.get('step')}", f"epoch {beat.get('epoch')}"]
    if beat.get("loss") is not None:
        parts.append(f"loss {beat['loss']:.4g}")
    if beat.get("samples_per_s"):
        parts.append(f"{beat['samples_per_s']:.0f} samples/s")
    if beat.get("eta_s") is not None:
        parts.append(f"ETA {format_span(beat['eta_s'])}")
    if beat.get("phase") not in (None, "train"):
        parts.append(str(beat["phase"]))
    if gpu:
        parts.append(gpu)
    return ", ".join(parts)


def sweep_summary(state: StateDir, sweep: str) -> dict[str, Any]:
    """`status --sweep NAME`: the newest job of each combination of the sweep, and totals by state.

    Raises:
        JobNotFoundError: no job belongs to a sweep of that name.
    """
    pending = pending_submissions(state)  # before the store: see commands.common._all_refs
    store = open_store(state)
    members, names = [], []
    if store is not None:
        try:
            for row in store.sweep_members(sweep):
                members.append({"id": row["id"], "name": row["name"], "state": row["state"],
                                "values": json.loads(row["sweep_values"] or "{}"), "attempts": row["attempts"],
                                "last_reason": row["last_reason"], "result": row["result"]})
            names = store.sweep_names()
        finally:
            store.close()
    known = {member["id"] for member in members}
    for sub in pending:
        point = sub["spec"].get("sweep")
        if isinstance(point, dict) and point.get("name") == sweep and sub["job_id"] not in known:
            members.append({"id": sub["job_id"], "name": sub["spec"]["name"], "state": "queued",
                            "values": point.get("values") or {}, "attempts": 0, "last_reason": None, "result": None})
    if not members:
        from trainsup.errors import JobNotFoundError

        known_sweeps = f" (sweeps: {', '.join(names[:10])})" if names else ""
        raise JobNotFoundError(f"no sweep is named '{sweep}'{known_sweeps}; a sweep's name is its job file's "
                               "name without the placeholders.")
    newest: dict[str, dict[str, Any]] = {}
    for member in members:  # oldest first: the newest job of a combination wins
        runs = newest[member["name"]]["runs"] + 1 if member["name"] in newest else 1
        newest[member["name"]] = {**member, "runs": runs}
    combinations = list(newest.values())
    totals: dict[str, int] = {}
    for combination in combinations:
        totals[combination["state"]] = totals.get(combination["state"], 0) + 1
    return {"sweep": sweep, "combinations": combinations, "totals": totals}


def render_sweep(summary: dict[str, Any]) -> None:
    from trainsup.jobs.sweep import text as sweep_text

    header = ("COMBINATION", "JOB", "NAME", "STATE", "ATTEMPTS", "RUNS", "LAST END")
    print(format_table(header, [
        (" ".join(f"{key}={sweep_text(value)}" for key, value in c["values"].items()), c["id"], c["name"],
         c["state"], str(c["attempts"] or "-"), str(c["runs"]), c["last_reason"] or "-")
        for c in summary["combinations"]
    ]))
    totals = ", ".join(f"{count} {state}" for state, count in sorted(summary["totals"].items()))
    print(f"sweep {summary['sweep']}: {len(summary['combinations'])} combinations: {totals}")
