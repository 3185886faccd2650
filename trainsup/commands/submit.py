"""`trainsup submit job.yaml`: validate, resolve, and drop durably into the inbox."""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from trainsup.contracts import clean_child_env
from trainsup.errors import AmbiguousJobError, JobNotFoundError, SpecError
from trainsup.jobs import inbox
from trainsup.jobs.requests import Submission, environment_problem
from trainsup.jobs.spec import JobSpec, describe_validation_error, drop_excluded, load_spec, load_specs, text_problem
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
    submission = prepare(spec, text, spec_path, fresh, state, delay)
    state.ensure()
    inbox.drop(state.inbox, submission.model_dump(mode="json", by_alias=True))
    return submission


def prepare(spec: JobSpec, text: str, spec_path: Path, fresh: bool, state: StateDir,
            delay: float | None = None) -> Submission:
    """The submission of one job, checked as the daemon will check it; nothing written yet."""
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
    return submission


def sweep_of(spec_path: Path, name: str | None) -> tuple[list[JobSpec], str] | None:
    """The jobs of a job file that declares a `sweep:`, one per combination; None for a plain job file."""
    specs, text = load_specs(spec_path, name)
    return (specs, text) if specs[0].sweep is not None else None


@dataclass(frozen=True)
class SweepJob:
    """One combination of a submitted sweep: queued now, or skipped (`state` says why)."""

    id: str
    name: str
    values: dict
    queued: bool
    state: str

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "values": self.values, "queued": self.queued,
                "skipped": not self.queued, "state": self.state}


def submit_sweep(spec_path: Path, specs: list[JobSpec], text: str, fresh: bool, again: bool, state: StateDir,
                 delay: float | None = None) -> list[SweepJob]:
    """Queue each combination that has not succeeded and is not queued or running (all with `again`/`fresh`).

    A combination is known by its job name and the job file's path, so editing the file
    (a smaller batch after a failure) reruns only what did not succeed. Every combination
    is checked before the first is queued: a file with one mistake queues nothing.
    """
    done = {} if (again or fresh) else _sweep_jobs_done(state, [spec.name for spec in specs], spec_path)
    results: list[SweepJob | Submission] = []
    for spec in specs:
        if spec.name in done:
            job_id, job_state = done[spec.name]
            results.append(SweepJob(job_id, spec.name, spec.sweep.values, False, job_state))
        else:
            results.append(prepare(spec, text, spec_path, fresh, state, delay))
    state.ensure()
    jobs = []
    for result in results:
        if isinstance(result, Submission):
            inbox.drop(state.inbox, result.model_dump(mode="json", by_alias=True))
            result = SweepJob(result.job_id, result.spec.name, result.spec.sweep.values, True, "queued")
        jobs.append(result)
    return jobs


def _sweep_jobs_done(state: StateDir, names: list[str], spec_path: Path) -> dict[str, tuple[str, str]]:
    """name → (id, state) of the newest job of each name from this file that succeeded or is live."""
    from trainsup.commands.common import open_store, pending_submissions

    path = str(spec_path.resolve())
    pending = pending_submissions(state)  # before the store: a job leaves the inbox after it is stored
    store = open_store(state)
    done: dict[str, tuple[str, str]] = {}
    if store is not None:
        try:
            for name in names:
                for job in reversed(store.jobs_named(name)):
                    if job.spec_path == path and job.state not in ("failed", "cancelled"):
                        done[name] = (job.id, str(job.state))
                        break
        finally:
            store.close()
    wanted = set(names)
    for sub in pending:
        if sub["spec"]["name"] in wanted and sub["spec_path"] == path:
            done.setdefault(sub["spec"]["name"], (sub["job_id"], "queued"))
    return done
