"""`trainsup show JOB`: the job's spec and its event timeline.

The environment inherited from the submitting shell is never printed, not even with
--json: only how many variables it holds. The job file's own `env` is part of the spec.
"""

from __future__ import annotations

import json
import time
from typing import Any

from trainsup.commands.common import open_store, pending_submissions, resolve_job
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
            "events": [{"at": sub["submitted_at"], "kind": "submitted",
                        "message": "submitted; waiting for the daemon to take it"}],
        }
    job = store.job(ref.id)
    events = [{"at": e.at, "kind": e.kind, "message": e.message} for e in store.events(ref.id)]
    store.close()
    return {
        "id": job.id, "name": job.name, "state": job.state, "result": job.result,
        "spec": json.loads(job.spec_json), "spec_text": job.spec_text, "spec_path": job.spec_path,
        "checkpoint_dir": job.checkpoint_dir, "inherited_env_count": len(job.environment), "events": events,
    }


def render(timeline: dict[str, Any]) -> None:
    print(f"{timeline['name']} ({timeline['id']}): {timeline['state']}")
    if timeline.get("result"):
        print(f"result: {timeline['result']}")
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
