"""Shell completion: the script for `trainsup completion SHELL`, and job ids and names for JOB."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem, get_completion_class

from trainsup.paths import StateDir

COMPLETE_VAR = "_TRAINSUP_COMPLETE"


def script(app: click.Command, shell: str) -> str:
    """click's completion script for `shell`; it calls `trainsup` back with COMPLETE_VAR set."""
    return get_completion_class(shell)(app, {}, "trainsup", COMPLETE_VAR).source()


def job_candidates(state: StateDir, incomplete: str) -> list[CompletionItem]:
    """Ids and names starting with `incomplete`, newest first; nothing (never an error) if unreadable."""
    from trainsup.commands.common import open_store, pending_submissions

    try:
        refs = [(s["job_id"], s["spec"]["name"], "queued") for s in pending_submissions(state)]
        store = open_store(state)
        if store is not None:
            refs = [(row["id"], row["name"], row["state"]) for row in store.job_summaries()] + refs
            store.close()
    except Exception:  # noqa: BLE001 - a completion never prints a traceback into the shell
        return []
    items: dict[str, CompletionItem] = {}
    for job_id, name, job_state in reversed(refs):
        if job_id.startswith(incomplete):
            items.setdefault(job_id, CompletionItem(job_id, help=f"{name} ({job_state})"))
        if name.startswith(incomplete):
            items.setdefault(name, CompletionItem(name, help=f"{job_id} ({job_state})"))
    return list(items.values())
