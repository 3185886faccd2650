"""The Slurm commands trainsup uses, each answering a typed value or one sentence (SlurmError).

Information comes from `scontrol show job` while the controller still knows the job
(MinJobAge after it ends), else from `sacct` where accounting is on; when neither knows
it, callers fall back to trainsup's own report (records.RunReport).
"""

from __future__ import annotations

import re
import shutil
import subprocess

from pydantic import BaseModel, ConfigDict

from trainsup.errors import SlurmError

TIMEOUT_S = 30.0
TIME_LIMIT_SLACK_S = 5.0
# Slurm's states in which a job will not run again by itself.
FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE",
                      "BOOT_FAIL", "PREEMPTED", "SPECIAL_EXIT", "REVOKED"})
_FIELD = re.compile(r" (?=[A-Za-z][A-Za-z0-9:/_]*=)")


class SlurmInfo(BaseModel):
    """What Slurm says of one job."""

    model_config = ConfigDict(frozen=True)

    slurm_id: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    reason: str | None
    partition: str | None
    nodes: str | None
    restarts: int | None  # requeues; None where the source does not say (sacct)
    exit_code: str | None
    comment: str | None
    source: str  # scontrol or sacct
    time_limit_s: float | None = None  # None: unlimited or not said
    run_time_s: float | None = None

    @property
    def at_time_limit(self) -> bool:
        """The allocation ran out its time limit (Slurm's SIGTERM is then the time limit's)."""
        return self.time_limit_s is not None and self.run_time_s is not None and \
            self.run_time_s >= self.time_limit_s - TIME_LIMIT_SLACK_S

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def _run(argv: list[str], what: str, stdin: str | None = None,
         timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    program = shutil.which(argv[0])
    if program is None:
        raise SlurmError(f"{argv[0]} is not installed or not on PATH: {what} needs the Slurm client commands.")
    try:
        return subprocess.run([program, *argv[1:]], input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {timeout:.0f}s ({what}).") from None


def _obeyed(argv: list[str], what: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`_run`, and one sentence with the command's own last line of complaint if it refused."""
    result = _run(argv, what, stdin=stdin)
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}").splitlines()[-1]
        raise SlurmError(f"{' '.join(argv[:2]) if argv[0] == 'scontrol' else argv[0]} refused: {message.rstrip('.')}.")
    return result


def sbatch(script: str) -> str:
    """Submit `script` (read from stdin, so its #SBATCH lines apply); return the Slurm job id."""
    result = _obeyed(["sbatch", "--parsable"], "submitting to Slurm", stdin=script)
    slurm_id = result.stdout.strip().split(";")[0]
    if not slurm_id.isdigit():
        raise SlurmError(f"sbatch answered {result.stdout.strip()!r} instead of a job id.")
    return slurm_id


def cancel(slurm_id: str) -> None:
    _obeyed(["scancel", slurm_id], "cancelling a Slurm job")


def requeue(slurm_id: str) -> None:
    _obeyed(["scontrol", "requeue", slurm_id], "requeueing a Slurm job")


def set_comment(slurm_id: str, comment: str) -> None:
    """Leave `comment` on the job (shown by scontrol and by sacct with AccountingStoreFlags=job_comment)."""
    text = re.sub(r"[^\x20-\x7e]", " ", comment).replace('"', "'")[:250]
    _obeyed(["scontrol", "update", f"JobId={slurm_id}", f"Comment={text}"], "commenting a Slurm job")


def info(slurm_id: str, timeout: float = TIMEOUT_S) -> SlurmInfo | None:
    """What Slurm knows of the job: scontrol while the controller has it, else sacct; None when neither does.

    Raises:
        SlurmError: a command did not answer within `timeout` seconds.
    """
    if shutil.which("scontrol") is not None:
        result = _run(["scontrol", "show", "job", "-o", slurm_id], "asking Slurm about a job", timeout=timeout)
        if result.returncode == 0 and result.stdout.strip():
            return parse_scontrol(slurm_id, result.stdout.strip().splitlines()[0])
    if shutil.which("sacct") is not None:
        result = _run(["sacct", "-j", slurm_id, "-X", "-n", "-P", "-o",
                       "JobID,State,Reason,Partition,NodeList,ExitCode,Comment"], "asking Slurm's accounting",
                      timeout=timeout)
        if result.returncode == 0 and result.stdout.strip():
            return parse_sacct(slurm_id, result.stdout.strip().splitlines()[0])
    return None


def parse_scontrol(slurm_id: str, line: str) -> SlurmInfo:
    """One line of `scontrol show job -o`: `Key=value` pairs; values may hold spaces."""
    fields = dict(part.split("=", 1) for part in _FIELD.split(" " + line.strip()) if "=" in part)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    restarts = fields.get("Restarts", "")
    return SlurmInfo(
        slurm_id=slurm_id, state=fields.get("JobState", "UNKNOWN"), reason=_value(fields.get("Reason")),
        partition=_value(fields.get("Partition")), nodes=_value(fields.get("NodeList")),
        restarts=int(restarts) if restarts.isdigit() else None, exit_code=_value(fields.get("ExitCode")),
        comment=_value(fields.get("Comment")), source="scontrol",
        time_limit_s=parse_duration(fields.get("TimeLimit")), run_time_s=parse_duration(fields.get("RunTime")))


def parse_duration(text: str | None) -> float | None:
    """Slurm's `[D-]HH:MM:SS`, `MM:SS` or `M` in seconds; None for UNLIMITED or anything else."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(?:(\d+):)?(\d+)", text or "")
    if match is None:
        return None
    days, first, second, last = (int(part) if part else None for part in match.groups())
    if first is None:  # M
        return (days or 0) * 86400 + last * 60.0
    if second is None:  # MM:SS, or D-HH:MM with days
        return (days or 0) * 86400 + (first * 3600 + last * 60.0 if days is not None else first * 60 + last)
    return (days or 0) * 86400 + first * 3600 + second * 60 + last


def parse_sacct(slurm_id: str, line: str) -> SlurmInfo:
    parts = (line.split("|") + [""] * 7)[:7]
    _, state, reason, partition, nodes, exit_code, comment = parts
    return SlurmInfo(slurm_id=slurm_id, state=state.split()[0] if state else "UNKNOWN", reason=_value(reason),
                     partition=_value(partition), nodes=_value(nodes), restarts=None, exit_code=_value(exit_code),
                     comment=_value(comment), source="sacct")


def _value(text: str | None) -> str | None:
    return None if text in (None, "", "(null)", "None", "None assigned") else text
