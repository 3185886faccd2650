"""What travels through the inbox: a submission or a control request."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from trainsup.jobs.spec import JobSpec


class Submission(BaseModel):
    """A job spec resolved at submit time: absolute paths, the submitting shell's env."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["submit"] = "submit"
    job_id: str
    spec: JobSpec
    spec_text: str
    spec_path: str
    environment: dict[str, str]
    submitted_at: float
    fresh: bool = False


class Control(StrEnum):
    CANCEL = "cancel"
    RESTART = "restart"
    HOLD = "hold"
    RELEASE = "release"


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["control"] = "control"
    job_id: str
    action: Control
    requested_at: float
    force: bool = Field(default=False, strict=True)  # cancel --force: SIGKILL now, not after the grace period


Request = Annotated[Union[Submission, ControlRequest], Field(discriminator="kind")]
REQUEST_ADAPTER: TypeAdapter[Submission | ControlRequest] = TypeAdapter(Request)
