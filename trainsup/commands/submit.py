"""`trainsup submit job.yaml`: validate, resolve, and drop durably into the inbox."""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from trainsup.contracts import clean_child_env
from trainsup.errors import AmbiguousJobError, JobNotFoundError, SpecError
from trainsup.jobs import inbox
from trainsup.jobs.requests import Submission, environment_problem
from trainsup.jobs.spec import JobSpec, describe_validation_error, drop_excluded, load_spec, text_problem
from trainsup.paths import StateDir

# Folders that hold no files a job could write: refused as checkpoint_dir.
PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "pstore", "bpf", "configfs", "efivarfs", "fusectl", "mqueue", "binfmt_misc", "nsfs", "autofs",
})


def new_job_id() -> str:
    return secrets.token_hex(4)


def resolve(spec: JobSpec, spec_path: Path, state: StateDir, job_id: str) -> JobSpec:
    """Absolute workdir and checkpoint dir; relative paths start at the job file's folder.

    Raises:
        SpecError: a path that cannot work, found now rather than by a failed spawn later.
    """
    base = spec_path.resolve().parent
    workdir = _absolute(spec_path, "workdir", base, spec.workdir) if spec.workdir else base
    if not _is_dir(workdir):
        raise SpecError(f"{spec_path}: field 'workdir': {workdir} is not a directory.")
    if spec.checkpoint_dir is not None:
        checkpoint_dir = _absolute(spec_path, "checkpoint_dir", workdir, spec.checkpoint_dir)
        if problem := checkpoint_dir_problem(checkpoint_dir, state):
            raise SpecError(f"{spec_path}: field 'checkpoint_dir': {problem}.")
    else:
        checkpoint_dir = state.default_checkpoint_dir(job_id)
    for field, path in (("workdir", workdir), ("checkpoint_dir", checkpoint_dir)):
        if problem := text_problem(str(path)):
            raise SpecError(f"{spec_path}: field '{field}': the path {problem}.")
    return spec.model_copy(update={"workdir": workdir, "checkpoint_dir": checkpoint_dir})


def _absolute(spec_path: Path, field: str, base: Path, path: Path) -> Path:
    try:
        return (base / path.expanduser()).resolve()
    except RuntimeError:  # `~name` for a user this machine does not know
        raise SpecError(f"{spec_path}: field '{field}': there is no home folder for {path.parts[0]}.") from None
    except OSError as exc:
        raise SpecError(f"{spec_path}: field '{field}': {path}: {exc.strerror or exc}.") from None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def checkpoint_dir_problem(path: Path, state: StateDir) -> str | None:
    """Why the absolute `path` cannot be an attempt's checkpoint dir, as far as one can tell now."""
    if path == Path("/"):
        return "the root folder / cannot be a checkpoint folder"
    for root in PSEUDO_ROOTS:
        if path == root or root in path.parents:
            return f"{path} is under {root}, which holds no files of yours; choose a folder on a disk"
    if (fstype := _filesystem_type(path)) in PSEUDO_FILESYSTEMS:
        return f"{path} is on a {fstype} file system, which holds no files of yours; choose a folder on a disk"
    state_root = state.root.resolve()
    if path == state_root or path in state_root.parents or (
            state_root in path.parents and state_root / "jobs" not in path.parents):
        return f"{path} overlaps trainsup's state folder {state_root}; choose another folder"
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if existing == path:
        if not _is_dir(path):
            return f"{path} exists and is not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
    elif not _is_dir(existing):
        return f"{existing} is not a folder, so {path} cannot be made"
    elif not os.access(existing, os.W_OK | os.X_OK):
        return f"{path} cannot be made: {existing} is not writable"
    return None


def _filesystem_type(path: Path) -> str | None:
    """The type of the file system `path` is on, from the deepest mount above it."""
    try:
        with open("/proc/self/mountinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    best, fstype = -1, None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        mount = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[4]))
        depth = len(mount.parts)
        if (mount == path or mount in path.parents) and depth >= best:
            best, fstype = depth, rest.split()[0]
    return fstype


def inherited_environment(spec: JobSpec, spec_path: Path) -> dict[str, str]:
    """The submitting shell's environment as it will be stored: without the daemon's own
    variables, without what `env_exclude` matches, and small enough for `execve`.

    Raises:
        SpecError: the rest is too large to pass on.
    """
    env = drop_excluded(clean_child_env(os.environ), spec.env_exclude)
    for key in [key for key, value in env.items() if text_problem(key) or text_problem(value)]:
        del env[key]
        print(f"trainsup: warning: {key!r} is not passed to the job: it is not UTF-8 text.", file=sys.stderr)
    if problem := environment_problem(env):
        raise SpecError(f"{spec_path}: this shell's environment cannot be passed on ({problem}); "
                        "unset variables or list them in env_exclude.")
    return env


def already_done(state: StateDir, spec: JobSpec, text: str, spec_path: Path) -> tuple[str, str] | None:
    """(id, state) of a job from the same file that succeeded or is still live, if any.

    Resubmitting a sweep must not rerun the jobs that already finished.
    """
    from trainsup.commands.common import open_store, pending_submissions

    store = open_store(state)
    wanted = (spec.name, text, str(spec_path.resolve()))
    if store is not None:
        for job in reversed(store.jobs_named(spec.name)):
            if (job.name, job.spec_text, job.spec_path) == wanted and job.state not in ("failed", "cancelled"):
                return job.id, str(job.state)
    for sub in pending_submissions(state):
        try:
            if (sub["spec"]["name"], sub["spec_text"], sub["spec_path"]) == wanted:
                return sub["job_id"], "queued"
        except (KeyError, TypeError):
            continue  # a damaged request: the daemon sets it aside
    return None


def existing_run(state: StateDir, spec_path: Path, name: str | None) -> tuple[str, str] | None:
    spec, text = load_spec(spec_path, name)
    return already_done(state, spec, text, spec_path)


def scheduled(spec: JobSpec, spec_path: Path, state: StateDir, delay: float | None, now: float) -> JobSpec:
    """`--delay` as `not_before`, and each job in `after` as its id, found now (newest of a name)."""
    update: dict[str, object] = {} if delay is None else {"not_before": now + delay}
    if spec.after:
        from trainsup.commands.common import open_store, resolve_job

        store = open_store(state)
        try:
            update["after"] = [resolve_job(state, store, key).id for key in spec.after]
        except (JobNotFoundError, AmbiguousJobError) as exc:
            raise SpecError(f"{spec_path}: field 'after': {str(exc)[0].lower()}{str(exc)[1:]}") from None
        finally:
            if store is not None:
                store.close()
    return spec.model_copy(update=update) if update else spec


def submit(spec_path: Path, name: str | None, fresh: bool, state: StateDir, delay: float | None = None) -> Submission:
    spec, text = load_spec(spec_path, name)
    spec = scheduled(spec, spec_path, state, delay, time.time())
    job_id = new_job_id()
    absolute_path = str(spec_path.resolve())
    if text_problem(absolute_path):
        raise SpecError(f"{spec_path}: the job file's path is not UTF-8 text; rename it.")
    try:
        submission = Submission(
            job_id=job_id,
            spec=resolve(spec, spec_path, state, job_id),
            spec_text=text,
            spec_path=absolute_path,
            environment=inherited_environment(spec, spec_path),
            submitted_at=time.time(),
            fresh=fresh,
        )
    except ValidationError as exc:  # what the daemon would refuse is refused here first
        raise SpecError(f"{spec_path}: {describe_validation_error(exc)}") from None
    state.ensure()
    inbox.drop(state.inbox, submission.model_dump(mode="json", by_alias=True))
    return submission
