"""What travels through the inbox: a submission or a control request.

The daemon reads the inbox as untrusted input: a hand-written or damaged file must not
name a job dir outside the state dir, reach the database with a spec the CLI would have
refused, or store variables `env_exclude` drops. Each field is checked here as strictly
as `trainsup submit` checks a job file.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator, model_validator

from trainsup.jobs.spec import (
    MAX_ENV_BYTES,
    MAX_ENV_VARS,
    MAX_JOB_FILE_BYTES,
    MAX_PATH_BYTES,
    MAX_STRING_BYTES,
    JobSpec,
    drop_excluded,
    environment_size,
    text_problem,
)

JOB_ID_PATTERN = r"^[0-9a-f]{8}$"  # what `trainsup submit` makes: secrets.token_hex(4)

JobId = Annotated[str, Field(strict=True, pattern=JOB_ID_PATTERN)]
Timestamp = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


def environment_problem(env: dict[str, str]) -> str | None:
    """Why an inherited environment cannot be stored and passed to `execve`, if it cannot."""
    if len(env) > MAX_ENV_VARS:
        return f"{len(env)} variables are more than the {MAX_ENV_VARS} a job may inherit"
    for key, value in env.items():
        if not key or "=" in key or text_problem(key) or text_problem(value):
            return f"the variable {key[:40]!r} is not a NAME=value pair of UTF-8 text without NUL bytes"
        if len(f"{key}={value}".encode(errors="surrogatepass")) > MAX_STRING_BYTES:
            return f"the value of {key[:40]} is longer than the {MAX_STRING_BYTES + 1} bytes Linux allows"
    if (total := environment_size(env)) > MAX_ENV_BYTES:
        return f"{total} bytes are more than the {MAX_ENV_BYTES // 1024} KiB a job may inherit"
    return None


def _normal_absolute(path: str) -> bool:
    return path.startswith("/") and os.path.normpath(path) == path


class Submission(BaseModel):
    """A job spec resolved at submit time: absolute paths, the submitting shell's env
    without the variables `spec.env_exclude` matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["submit"] = "submit"
    job_id: JobId
    spec: JobSpec
    spec_text: str = Field(strict=True, max_length=MAX_JOB_FILE_BYTES)
    spec_path: str = Field(strict=True, max_length=MAX_PATH_BYTES)
    environment: dict[str, str]
    submitted_at: Timestamp
    fresh: bool = Field(default=False, strict=True)

    @field_validator("spec_path")
    @classmethod
    def _absolute_path(cls, path: str) -> str:
        if "\x00" in path or not path.startswith("/"):
            raise ValueError("must be an absolute path")
        return path

    @field_validator("environment")
    @classmethod
    def _storable_environment(cls, env: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        spec = info.data.get("spec")
        if spec is not None:
            env = drop_excluded(env, spec.env_exclude)
        if problem := environment_problem(env):
            raise ValueError(problem)
        return env

    @model_validator(mode="after")
    def _resolved_paths(self) -> "Submission":
        workdir, checkpoint_dir = self.spec.workdir, self.spec.checkpoint_dir
        if workdir is None or not _normal_absolute(str(workdir)):
            raise ValueError("spec.workdir must be an absolute path without '..'")
        if checkpoint_dir is None or not _normal_absolute(str(checkpoint_dir)) or str(checkpoint_dir) == "/":
            raise ValueError("spec.checkpoint_dir must be an absolute path without '..', other than /")
        if len(self.spec_text.encode(errors="surrogatepass")) > MAX_JOB_FILE_BYTES:
            raise ValueError(f"spec_text is larger than {MAX_JOB_FILE_BYTES // 2**20} MiB")
        return self


class Control(StrEnum):
    CANCEL = "cancel"
    RESTART = "restart"
    HOLD = "hold"
    RELEASE = "release"
    REMOVE = "remove"  # a finished job: its rows, its job dir, and with `checkpoints` its named checkpoint dir


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["control"] = "control"
    job_id: JobId
    action: Control
    requested_at: Timestamp
    force: bool = Field(default=False, strict=True)  # cancel --force: SIGKILL now, not after the grace period
    checkpoints: bool = Field(default=False, strict=True)  # remove --checkpoints: the spec's checkpoint dir too


Request = Annotated[Union[Submission, ControlRequest], Field(discriminator="kind")]
REQUEST_ADAPTER: TypeAdapter[Submission | ControlRequest] = TypeAdapter(Request)
