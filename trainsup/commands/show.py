"""`trainsup show JOB`: the job's spec and its event timeline.

The environment inherited from the submitting shell is never printed, not even with
--json: only how many variables it holds. The job file's own `env` is part of the spec.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from trainsup.commands.common import open_store, pending_submissions, resolve_job
from trainsup.errors import TrainsupError
from trainsup.jobs.states import TERMINAL_STATES
from trainsup.layouts import newest_checkpoint
from trainsup.paths import StateDir


def job_timeline(state: StateDir, key: str) -> dict[str, Any]:
    store = open_store(state)
    ref = resolve_job(state, store, key)
    if ref.pending:
        sub = next(s for s in pending_submissions(state) if s["job_id"] == ref.id)
        return {
            "id": ref.id, "name": ref.name, "state": "queued", "spec": sub["spec"],
            "spec_text": sub["spec_text"], "spec_path": sub["spec_path"],
            "inherited_env_count": len(sub.get("environment") or {}),
            "next_attempt": _next_attempt(sub["spec"].get("checkpoint_dir"), sub["spec"]),
            "events": [{"at": sub["submitted_at"], "kind": "submitted",
                        "message": "submitted; waiting for the daemon to take it"}],
        }
    job = store.job(ref.id)
    events = [{"at": e.at, "kind": e.kind, "message": e.message} for e in store.events(ref.id)]
    store.close()
    spec = json.loads(job.spec_json)
    return {
        "id": job.id, "name": job.name, "state": job.state, "result": job.result,
        "spec": spec, "spec_text": job.spec_text, "spec_path": job.spec_path,
        "checkpoint_dir": job.checkpoint_dir, "inherited_env_count": len(job.environment),
        "next_attempt": None if job.state in TERMINAL_STATES else _next_attempt(job.checkpoint_dir, spec),
        "events": events,
    }


def _next_attempt(checkpoint_dir: str | None, spec: dict[str, Any]) -> dict[str, Any] | None:
    """What an attempt started now would find, in the words of the "attempt N starting" event."""
    if not checkpoint_dir or not Path(checkpoint_dir).is_absolute():
        return None  # submit makes it absolute; a relative one would be read from the wrong dir
    resume = spec.get("resume") or {}
    found = newest_checkpoint(Path(checkpoint_dir), resume.get("checkpoint"))
    if found is None:
        return {"checkpoint": None, "layout": None, "written_at": None,
                "message": "no checkpoint yet: starting fresh"}
    return {"checkpoint": found.name, "layout": found.layout, "written_at": found.written_at,
            "message": found.describe(time.time())}


def render(timeline: dict[str, Any]) -> None:
    print(f"{timeline['name']} ({timeline['id']}): {timeline['state']}")
    if timeline.get("result"):
        print(f"result: {timeline['result']}")
    if timeline.get("next_attempt"):
        print(f"next attempt will find: {timeline['next_attempt']['message']}")
    spec = timeline["spec"]
    print(f"spec: {timeline['spec_path']}")
    print(f"  command: {spec['command']}")
    print(f"  workdir: {spec['workdir']}")
    print(f"  checkpoint_dir: {spec['checkpoint_dir']}")
    names = ", ".join(spec.get("env") or {}) or "none"
    print(f"  env: {names} from the job file; {timeline['inherited_env_count']} variables inherited"
          " from the submitting shell (values not shown)")
    print("timeline:")
    for event in timeline["events"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["at"]))
        print(f"  {stamp}  {event['kind']:<18} {event['message']}")


def job_record(state: StateDir, key: str, attempt: int | None = None) -> dict[str, Any]:
    """What ran: the record of attempt `attempt` (default: the newest that has one).

    Raises:
        TrainsupError: the job has not run yet, or no attempt has a record yet.
    """
    from trainsup import record

    store = open_store(state)
    ref = resolve_job(state, store, key)
    attempts = store.attempts(ref.id) if store is not None and not ref.pending else []
    if store is not None:
        store.close()
    chosen = [a for a in attempts if attempt is None or a.number == attempt]
    for a in reversed(chosen):
        if (found := record.load(Path(a.run_dir))) is not None:
            return {"id": ref.id, "name": ref.name, "attempt": a.number, "record": found}
    which = f"attempt {attempt}" if attempt else "any attempt"
    raise TrainsupError(f"no run record for {which} of {ref.name} ({ref.id}) yet: it is written once an attempt runs.")


def render_record(found: dict[str, Any]) -> None:
    """Print a record; never the environment (the record holds no variable values)."""
    rec = found["record"]
    print(f"{found['name']} ({found['id']}) attempt {found['attempt']}")
    print(f"  host: {rec.get('host')}  boot id: {rec.get('boot_id')}")
    print(f"  workdir: {rec.get('workdir')}")
    git = rec.get("git")
    if git:
        print(f"  git: {git.get('commit') or 'no commit'} on {git.get('branch') or 'detached HEAD'} ({git.get('root')})")
        dirty = git.get("dirty")
        print("  tree: clean" if dirty == "clean" else f"  tree: dirty ({git.get('changed_files')} changed; {dirty})")
    else:
        print("  git: not a git work tree")
    python = rec.get("python") or {}
    print(f"  python: {python.get('executable')} {python.get('version') or ''} (found by {python.get('found_by')})")
    if python.get("error"):
        print(f"  python error: {python['error']}")
    runtime = rec.get("runtime") or {}
    if runtime:
        print("  runtime: " + ", ".join(f"{k} {v}" for k, v in sorted(runtime.items()) if v is not None))
    print(f"  gpus: {', '.join(rec.get('gpus') or []) or 'none'}")
    packages = python.get("packages") or {}
    print(f"  packages ({len(packages)}):")
    for name, version in packages.items():
        print(f"    {name}=={version}")
