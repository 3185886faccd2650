"""`trainsup group [set NAME LIMIT]`: each group's limit, running and queued jobs; change a limit."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from trainsup.commands.common import open_store, pending_submissions
from trainsup.commands.table import format_table
from trainsup.errors import TrainsupError
from trainsup.jobs import groups
from trainsup.paths import StateDir

RUNNING_STATES = ("starting", "running", "stopping")


def group_rows(state: StateDir) -> list[dict[str, Any]]:
    """`default`, every group with a limit set, and every group a running or queued job is in."""
    limits = groups.read_limits(groups.limits_path(state.root))
    running: Counter[str] = Counter()
    queued: Counter[str] = Counter()
    pending = pending_submissions(state)  # before the store: see commands.common._all_refs
    known = set()
    store = open_store(state)
    if store is not None:
        for job in store.jobs():
            known.add(job.id)
            counter = running if job.state in RUNNING_STATES else queued if job.state == "queued" else None
            if counter is not None and (name := _group(json.loads(job.spec_json))) is not None:
                counter[name] += 1
        store.close()
    for sub in pending:
        if sub["job_id"] not in known and (name := _group(sub["spec"])) is not None:
            queued[name] += 1
    names = sorted({groups.DEFAULT_GROUP, *limits, *running, *queued})
    cpus = os.cpu_count()
    return [{"name": name, "limit": limits.get(name) or groups.default_limit(name, cpus),
             "limit_set": name in limits, "running": running[name], "queued": queued[name]} for name in names]


def _group(spec: dict) -> str | None:
    group = spec.get("group")
    gpus = spec.get("gpus") or 0
    return groups.group_of(group if isinstance(group, str) else None, gpus if isinstance(gpus, int) else 0)


def set_limit(state: StateDir, name: str, limit: int) -> None:
    if not groups.GROUP_NAME.fullmatch(name):
        raise TrainsupError(f"'{name[:100]}' is not a group name: use 1-100 letters, digits, '.', '_' or '-',"
                            " not starting with '.' or '-'.")
    state.ensure()
    groups.set_limit(groups.limits_path(state.root), name, limit)


def render(rows: list[dict[str, Any]]) -> None:
    print(format_table(("GROUP", "LIMIT", "RUNNING", "QUEUED"), [
        (row["name"], f"{row['limit']}" + ("" if row["limit_set"] else " (default)"), str(row["running"]),
         str(row["queued"]))
        for row in rows
    ]))
