"""`submit --slurm`, and `status`/`logs`/`cancel`/`show` of Slurm jobs (docs/slurm.md).

A Slurm job is known by `slurm:<id>`, `slurm:<name>`, its Slurm id, or its name when no
local job has that name. What it is comes from Slurm (scontrol, else sacct) and from the
report `trainsup run` keeps beside its log; its log is Slurm's output file.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

from trainsup.errors import JobNotFoundError, SpecError, TrainsupError
from trainsup.jobs.spec import JobSpec, load_spec
from trainsup.paths import StateDir
from trainsup.slurm import cluster, script
from trainsup.slurm.cluster import SlurmInfo
from trainsup.slurm.records import RunReport, SlurmDir, SlurmJob, read_report

FOLLOW_POLL_S = 0.5


def render_script(spec_path: Path, name: str | None, state: StateDir) -> tuple[JobSpec, str]:
    """The job's spec, and the sbatch script for the job file (nothing written).

    Raises:
        SpecError: a bad job file; one without checkpoint_dir (a requeued job resumes from it,
            on a shared file system); a sweep.
    """
    from trainsup.commands.submit import resolve, sweep_of

    if sweep_of(spec_path, name) is not None:
        raise SpecError(f"{spec_path} is a sweep: submit each combination's job file to Slurm on its own.")
    spec, _text = load_spec(spec_path, name)
    if spec.checkpoint_dir is None:
        raise SpecError(f"{spec_path}: a Slurm job needs checkpoint_dir, a folder on a file system every node "
                        "shares: a requeued job resumes from it.")
    resolved = resolve(spec, spec_path, state, "slurm")
    slurm_dir = SlurmDir(state)
    return spec, script.render(resolved, spec_path.resolve(), resolved.workdir, slurm_dir.root, sys.executable, name)


def submit(spec_path: Path, name: str | None, state: StateDir) -> SlurmJob:
    """sbatch the job file's script; record it so that status, logs, cancel and show find it."""
    spec, text = render_script(spec_path, name, state)
    slurm_dir = SlurmDir(state)
    state.ensure()
    slurm_dir.ensure()  # the output file's folder must exist before the job starts
    slurm_id = cluster.sbatch(text)
    job = SlurmJob(slurm_id=slurm_id, name=spec.name, spec_path=str(spec_path.resolve()),
                   partition=spec.slurm.partition if spec.slurm else None, submitted_at=time.time(),
                   script=str(slurm_dir.script_path(slurm_id)), log=str(slurm_dir.log_path(slurm_id)),
                   report=str(slurm_dir.report_path(slurm_id)))
    Path(job.script).write_text(text)
    slurm_dir.save(job)
    return job


# --- finding and describing ------------------------------------------------------


def claim(state: StateDir, key: str) -> SlurmJob | None:
    """The Slurm job `key` names, or None when it names a local job (or nothing).

    `slurm:ID` and `slurm:NAME` always mean a Slurm job; an exact Slurm id does too; a
    name means the Slurm job of that name only when no local job answers to it.

    Raises:
        JobNotFoundError: `slurm:...` names no Slurm job.
    """
    from trainsup.commands.common import open_store, resolve_job

    slurm_dir = SlurmDir(state)
    if key.startswith("slurm:"):
        return lookup(state, key)
    if not slurm_dir.root.is_dir():
        return None
    jobs = slurm_dir.jobs()
    if any(job.slurm_id == key for job in jobs):
        return slurm_dir.find(key)
    if not any(job.name == key for job in jobs):
        return None
    store = open_store(state)
    try:
        resolve_job(state, store, key)
        return None
    except JobNotFoundError:
        return slurm_dir.find(key)
    finally:
        if store is not None:
            store.close()


def lookup(state: StateDir, key: str) -> SlurmJob:
    job = SlurmDir(state).find(key)
    if job is None:
        raise JobNotFoundError(f"no job matches '{key}'; see `trainsup status` for ids and names.")
    return job


def _info(job: SlurmJob) -> SlurmInfo | None:
    try:
        return cluster.info(job.slurm_id)
    except TrainsupError:
        return None  # no Slurm commands here: the report says what trainsup saw


def describe(job: SlurmJob, info: SlurmInfo | None, report: RunReport | None) -> str:
    """One line: pending on partition X, running on node Y, attempt N, requeued M times, or how it ended."""
    requeues = info.restarts if info is not None and info.restarts is not None else \
        (report.allocation - 1 if report else 0)
    requeued = f"requeued {requeues} time{'s' * (requeues != 1)}"
    attempt = f"attempt {report.attempt}" if report and report.attempt else None
    if info is None:
        if report is None:
            return "unknown to Slurm (no scontrol or sacct answer) and not started"
        return f"{report.state} (as trainsup run last reported, on node {report.node}; {requeued})" + \
            (f": {report.result}" if report.result else "")
    partition = info.partition or job.partition or "the default partition"
    if info.state == "PENDING":
        why = f" ({info.reason})" if info.reason else ""
        return f"pending on partition {partition}{why}" + (f", {requeued}" if requeues else "")
    if info.state in ("RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESIZING"):
        parts = [f"{info.state.lower()} on node {info.nodes or '?'}", attempt, requeued]
        if report is not None and report.stop == "requeue":
            parts.append("checkpointing for a requeue")
        return ", ".join(p for p in parts if p)
    ended = info.state.lower()
    result = report.result if report is not None and report.state in ("succeeded", "failed", "cancelled") else None
    comment = info.comment if info.comment and not result else None
    return f"{ended} (exit {info.exit_code or '?'}; {', '.join(p for p in (attempt, requeued) if p)})" + \
        (f": {result or comment}" if (result or comment) else "")


def detail(state: StateDir, key: str) -> dict[str, Any]:
    job = lookup(state, key)
    return _detail(job)


def _detail(job: SlurmJob) -> dict[str, Any]:
    info = _info(job)
    report = read_report(Path(job.report))
    return {
        "kind": "slurm", "id": f"slurm:{job.slurm_id}", "slurm_id": job.slurm_id, "name": job.name,
        "state": _state(info, report), "status": describe(job, info, report),
        "slurm": info.model_dump() if info else None, "report": report.model_dump() if report else None,
        "spec_path": job.spec_path, "log": job.log, "script": job.script, "submitted_at": job.submitted_at,
    }


# Slurm's job states in trainsup's words; other finished states (TIMEOUT, NODE_FAIL, ...) read as failed.
STATE_WORDS = {"PENDING": "queued", "REQUEUED": "queued", "CONFIGURING": "starting", "RUNNING": "running",
               "COMPLETING": "stopping", "CANCELLED": "cancelled", "REQUEUE_HOLD": "held", "SUSPENDED": "held"}


def _state(info: SlurmInfo | None, report: RunReport | None) -> str:
    """trainsup's word for the Slurm job's state: Slurm's, or the report's where Slurm forgot the job."""
    if info is None:
        return report.state if report else "unknown"
    if info.state == "COMPLETED":
        return report.state if report and report.state in ("succeeded", "failed") else "succeeded"
    if info.state in STATE_WORDS:
        return STATE_WORDS[info.state]
    return "failed" if info.finished else info.state.lower()


def rows(state: StateDir) -> list[dict[str, Any]]:
    return [_detail(job) for job in SlurmDir(state).jobs()]


def render_rows(found: list[dict[str, Any]], out: TextIO | None = None) -> None:
    from trainsup.commands.table import format_table

    out = out or sys.stdout
    if found:
        print("\nSlurm jobs:", file=out)
        print(format_table(("ID", "NAME", "STATE", "WHERE"),
                           [(r["id"], r["name"], r["state"], r["status"]) for r in found]), file=out)


def render_detail(found: dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    print(f"{found['name']} (Slurm job {found['slurm_id']}): {found['state']}", file=out)
    print(f"  {found['status']}", file=out)
    report = found["report"]
    if report and report.get("last_reason"):
        print(f"  last attempt ended: {report['last_reason']}", file=out)
    print(f"  job file: {found['spec_path']}", file=out)
    print(f"  log: {found['log']}  (`trainsup logs slurm:{found['slurm_id']}`)", file=out)


# --- logs, cancel, show -------------------------------------------------------


def print_log(state: StateDir, key: str, tail: int | None, follow: bool, as_json: bool,
              out: TextIO | None = None) -> str:
    """Slurm's output file: every allocation's `trainsup run` output; with follow, until the job is done.

    Returns the job's final state (with follow) or its current one.
    """
    import json

    out = out or sys.stdout
    job = lookup(state, key)
    path = Path(job.log)

    def emit(text: str) -> None:
        out.write(json.dumps({"job": f"slurm:{job.slurm_id}", "attempt": None, "line": text}) + "\n"
                  if as_json else text + "\n")

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    lines = data.decode(errors="replace").splitlines()
    for line in (deque(lines, maxlen=tail) if tail else lines):
        emit(line)
    out.flush()
    offset = len(data)
    current = _detail(job)["state"]
    while follow:
        finished = current in ("succeeded", "failed", "cancelled", "unknown")
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            data = b""
        if data:
            complete, _, _ = data.rpartition(b"\n")
            if complete or finished:
                chunk = data if finished else complete + b"\n"
                for line in chunk.decode(errors="replace").splitlines():
                    emit(line)
                out.flush()
                offset += len(chunk)
        if finished:
            break
        time.sleep(FOLLOW_POLL_S)
        current = _detail(job)["state"]
    return current


def cancel(state: StateDir, key: str) -> dict[str, Any]:
    """scancel the job: Slurm signals `trainsup run`, which cancels the job within its grace period.

    Raises:
        TrainsupError: the Slurm job has already ended (exit 1, nothing sent).
    """
    job = lookup(state, key)
    info = _info(job)
    if info is not None and info.finished:
        raise TrainsupError(f"Slurm job {job.slurm_id} ({job.name}) already ended: {info.state.lower()}; "
                            "nothing to cancel.")
    cluster.cancel(job.slurm_id)
    return {"id": f"slurm:{job.slurm_id}", "action": "cancel", "state": _state(info, read_report(Path(job.report))),
            "requested": True,
            "message": f"asked Slurm to cancel job {job.slurm_id} ({job.name}): trainsup run stops it with its "
                       "stop signal, and Slurm kills what is left after its KillWait"}


def show(state: StateDir, key: str) -> dict[str, Any]:
    found = detail(state, key)
    try:
        found["script_text"] = Path(found["script"]).read_text()
    except OSError:
        found["script_text"] = None
    return found


def render_show(found: dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    render_detail(found, out)
    if found["slurm"]:
        info = found["slurm"]
        print(f"  Slurm: {info['state']}" + (f" ({info['reason']})" if info["reason"] else "")
              + f", partition {info['partition']}, nodes {info['nodes'] or '-'}, restarts {info['restarts']}"
              + (f", comment: {info['comment']}" if info["comment"] else "") + f" (from {info['source']})", file=out)
    if found["report"]:
        report = found["report"]
        print(f"  trainsup run: {report['state']} on {report['node']}, allocation {report['allocation']}, "
              f"attempt {report['attempt']}" + (f", stop: {report['stop']}" if report["stop"] else "")
              + (f": {report['result']}" if report["result"] else "") + f" (state dir {report['state_dir']})",
              file=out)
    if found.get("script_text"):
        print(f"\nscript ({found['script']}):", file=out)
        print(found["script_text"].rstrip(), file=out)
