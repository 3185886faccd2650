"""`trainsup show JOB`: the job's spec and its event timeline."""

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
            "events": [{"at": sub["submitted_at"], "kind": "submitted",
                        "message": "submitted; waiting for the daemon to take it"}],
        }
    job = store.job(ref.id)
    events = [{"at": e.at, "kind": e.kind, "message": e.message} for e in store.events(ref.id)]
    store.close()
    return {
        "id": job.id, "name": job.name, "state": job.state, "result": job.result,
        "spec": json.loads(job.spec_json), "spec_text": job.spec_text, "spec_path": job.spec_path,
        "checkpoint_dir": job.checkpoint_dir, "events": events,
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
    print("timeline:")
    for event in timeline["events"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["at"]))
        print(f"  {stamp}  {event['kind']:<18} {event['message']}")
