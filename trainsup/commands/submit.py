"""`trainsup submit job.yaml`: validate, resolve, and drop durably into the inbox."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from trainsup.contracts import clean_child_env
from trainsup.errors import SpecError
from trainsup.jobs import inbox
from trainsup.jobs.requests import Submission
from trainsup.jobs.spec import JobSpec, load_spec
from trainsup.paths import StateDir


def new_job_id() -> str:
    return secrets.token_hex(4)


def resolve(spec: JobSpec, spec_path: Path, state: StateDir, job_id: str) -> JobSpec:
    """Absolute workdir and checkpoint dir; relative paths start at the job file's folder."""
    base = spec_path.resolve().parent
    workdir = (base / spec.workdir.expanduser()).resolve() if spec.workdir else base
    if not workdir.is_dir():
        raise SpecError(f"{spec_path}: field 'workdir': {workdir} is not a directory.")
    if spec.checkpoint_dir is not None:
        checkpoint_dir = (workdir / spec.checkpoint_dir.expanduser()).resolve()
    else:
        checkpoint_dir = state.default_checkpoint_dir(job_id)
    return spec.model_copy(update={"workdir": workdir, "checkpoint_dir": checkpoint_dir})


def already_done(state: StateDir, spec: JobSpec, text: str, spec_path: Path) -> tuple[str, str] | None:
    """(id, state) of a job from the same file that succeeded or is still live, if any.

    Resubmitting a sweep must not rerun the jobs that already finished.
    """
    from trainsup.commands.common import open_store, pending_submissions

    store = open_store(state)
    same = lambda s_name, s_text, s_path: (s_name, s_text, s_path) == (spec.name, text, str(spec_path.resolve()))
    if store is not None:
        for job in reversed(store.jobs_named(spec.name)):
            if same(job.name, job.spec_text, job.spec_path) and job.state not in ("failed", "cancelled"):
                return job.id, str(job.state)
    for sub in pending_submissions(state):
        if same(sub["spec"]["name"], sub["spec_text"], sub["spec_path"]):
            return sub["job_id"], "queued"
    return None


def existing_run(state: StateDir, spec_path: Path, name: str | None) -> tuple[str, str] | None:
    spec, text = load_spec(spec_path, name)
    return already_done(state, spec, text, spec_path)


def submit(spec_path: Path, name: str | None, fresh: bool, state: StateDir) -> Submission:
    spec, text = load_spec(spec_path, name)
    job_id = new_job_id()
    submission = Submission(
        job_id=job_id,
        spec=resolve(spec, spec_path, state, job_id),
        spec_text=text,
        spec_path=str(spec_path.resolve()),
        environment=clean_child_env(os.environ),
        submitted_at=time.time(),
        fresh=fresh,
    )
    state.ensure()
    inbox.drop(state.inbox, submission.model_dump(mode="json", by_alias=True))
    return submission
