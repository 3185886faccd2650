"""A job as the user writes it (`job.yaml`), validated by pydantic."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trainsup.errors import SpecError
from trainsup.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration), Field(allow_inf_nan=False)]
Size = Annotated[int, BeforeValidator(parse_size)]

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT")


def _signal_name(value: Any) -> Any:
    """`SIGINT`, `sigint` or `INT` → `SIGINT`."""
    if isinstance(value, str):
        name = value.strip().upper()
        return name if name.startswith("SIG") else f"SIG{name}"
    return value


StopSignal = Annotated[Literal[STOP_SIGNALS], BeforeValidator(_signal_name)]

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartBudgets(_Strict):
    """Restarts allowed per cause of death; unset causes share `max_restarts`."""

    crash: int | None = Field(default=None, ge=0)
    cuda_oom: int | None = Field(default=None, ge=0)
    host_oom: int | None = Field(default=None, ge=0)
    hang: int | None = Field(default=None, ge=0)
    lost: int | None = Field(default=None, ge=0)


class RestartPolicy(_Strict):
    """How a job that dies is started again."""

    max_restarts: int = Field(default=5, ge=0)
    on: RestartBudgets = Field(default_factory=RestartBudgets)
    initial: Duration = 1.0
    max: Duration = 300.0
    factor: float = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)
    crash_loop: int = Field(default=3, ge=0)
    min_uptime: Duration = 30.0

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_is_a_key(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean True.
        if isinstance(data, dict) and True in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> "RestartPolicy":
        if self.max < self.initial:
            raise ValueError("restart.max must not be shorter than restart.initial")
        return self


class BatchSize(_Strict):
    """The effective batch is fixed; the micro-batch may shrink after a CUDA OOM."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    global_: int = Field(alias="global", ge=1)
    micro: int = Field(ge=1)
    min_micro: int = Field(default=1, ge=1)
    factor: float = Field(default=0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _micro_divides_global(self) -> "BatchSize":
        if self.global_ % self.micro:
            raise ValueError(f"batch_size.micro {self.micro} does not divide batch_size.global {self.global_}")
        if self.min_micro > self.micro:
            raise ValueError("batch_size.min_micro must not exceed batch_size.micro")
        return self


class HeartbeatPolicy(_Strict):
    """When a job that sends heartbeats (trainsup.trainer does) counts as hung.

    Defaults follow NVIDIA's fault-tolerance launcher: a long first timeout, then
    `safety_factor` × the longest gap seen, unless `timeout` fixes one.
    """

    timeout: Duration | None = Field(default=None, gt=0)
    first_timeout: Duration = Field(default=3600.0, gt=0)
    checkpoint_timeout: Duration = Field(default=1800.0, gt=0)
    safety_factor: float = Field(default=5.0, gt=1.0, allow_inf_nan=False)
    min_timeout: Duration = Field(default=60.0, gt=0)
    log_silence: Duration | None = None  # opt-in hang detection for scripts without the library


class ResumeArgs(_Strict):
    """For scripts that take a checkpoint path (`--resume PATH`): arguments appended to
    `command` when a checkpoint exists, with `{checkpoint}` replaced by the newest file
    (or dir) matching `checkpoint`, a glob relative to `checkpoint_dir`."""

    args: list[str]
    checkpoint: str

    @field_validator("args")
    @classmethod
    def _names_the_checkpoint(cls, args: list[str]) -> list[str]:
        if not any("{checkpoint}" in arg for arg in args):
            raise ValueError("must contain {checkpoint}, e.g. [--resume, '{checkpoint}']")
        return args

    @field_validator("checkpoint")
    @classmethod
    def _relative_pattern(cls, pattern: str) -> str:
        if not pattern.strip() or pattern.startswith(("/", "~")) or ".." in Path(pattern).parts:
            raise ValueError("must be a glob inside checkpoint_dir, e.g. '*.pth' or '**/last.ckpt'")
        return pattern


class JobSpec(_Strict):
    """The blueprint of a job. Paths are resolved when the job is submitted."""

    name: str
    command: list[str]
    workdir: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)
    checkpoint_dir: Path | None = None
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    grace_period: Duration = 30.0
    stop_signal: StopSignal = "SIGTERM"  # sent to the job's main process when trainsup stops it
    gpus: int = Field(default=0, ge=0)
    min_free_memory: Size | None = None
    memory_limit: Size | None = None  # host memory; enforced by a cgroup where we can make one
    batch_size: BatchSize | None = None
    heartbeat: HeartbeatPolicy = Field(default_factory=HeartbeatPolicy)
    on_boot: Literal["resume", "hold"] = "resume"
    resume: ResumeArgs | None = None

    @model_validator(mode="after")
    def _resume_needs_the_checkpoint_dir(self) -> "JobSpec":
        if self.resume is not None and self.checkpoint_dir is None:
            raise ValueError("resume needs checkpoint_dir: the folder your script saves its checkpoints in")
        return self

    @field_validator("name")
    @classmethod
    def _name_is_a_safe_path(cls, name: str) -> str:
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                "use 1-100 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
            )
        return name

    @field_validator("command", mode="before")
    @classmethod
    def _string_runs_in_shell(cls, command: Any) -> Any:
        if isinstance(command, str):
            if not command.strip():
                raise ValueError("must not be empty")
            return ["/bin/sh", "-c", command]
        if isinstance(command, list):
            if not command:
                raise ValueError("must not be empty")
            if not all(isinstance(arg, (str, int, float)) and not isinstance(arg, bool) for arg in command):
                raise ValueError("every argument must be a string")
            return [str(arg) for arg in command]
        raise ValueError("must be a list of arguments or a shell string")

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_are_text(cls, env: Any) -> Any:
        if env is None:
            return {}
        if not isinstance(env, dict):
            raise ValueError("must be a mapping of NAME: value")
        result = {}
        for key, value in env.items():
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"'{key}' is not a valid environment variable name")
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError(f"the value of {key} must be a string or a number")
            result[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return result


def load_spec(path: Path, name_override: str | None = None) -> tuple[JobSpec, str]:
    """Read and validate a job file; return the spec and the file's text.

    Raises:
        SpecError: one sentence naming the file, the field and the problem.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file.") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the job file ({exc.__class__.__name__}).") from None
    return parse_spec(text, str(path), name_override), text


def parse_spec(text: str, source: str, name_override: str | None = None) -> JobSpec:
    data = _parse_yaml(text, source)
    if name_override is not None:
        data["name"] = name_override
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {describe_validation_error(exc)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key}' appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{source}{where}: not valid YAML ({exc.problem or exc.context}).") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML ({exc}).") from None
    if data is None:
        raise SpecError(f"{source}: the job file is empty.")
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job file must be a mapping of fields such as name: and command:.")
    return data


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem of a pydantic error, as one sentence naming the field."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"])
    if not field:  # a rule across fields
        message = error["msg"].removeprefix("Value error, ")
        return f"{message[0].upper()}{message[1:]}."
    if error["type"] == "missing":
        return f"field '{field}' is required."
    if error["type"] == "extra_forbidden":
        return f"unknown field '{field}'."
    message = error["msg"].removeprefix("Value error, ")
    return f"field '{field}': {message[0].lower()}{message[1:]}."
