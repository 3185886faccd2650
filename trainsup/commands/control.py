"""`trainsup cancel|restart|hold|release JOB`: a control request through the inbox."""

from __future__ import annotations

import time

from trainsup.commands.common import open_store, resolve_job
from trainsup.jobs import inbox
from trainsup.paths import StateDir


def request(state: StateDir, key: str, action: str) -> str:
    """Drop a control request for the job `key` names; return the job's id."""
    ref = resolve_job(state, open_store(state), key)
    state.ensure()
    inbox.drop(state.inbox, {
        "kind": "control", "job_id": ref.id, "action": action, "requested_at": time.time(),
    })
    return ref.id
