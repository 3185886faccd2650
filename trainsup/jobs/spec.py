"""A job as the user writes it (`job.yaml`), validated by pydantic.

Everything here is checked before anything is written: the size caps keep a job file
out of the database unless it is small, and a command and environment that `execve`
could not take out of the queue.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Hashable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainsup.errors import SpecError
from trainsup.units import parse_duration, parse_size

MAX_JOB_FILE_BYTES = 1 << 20
# Linux refuses one argument or NAME=value string of 32 pages or more (MAX_ARG_STRLEN),
# and an argv plus environment over ARG_MAX, 2 MiB with the usual 8 MiB stack. The
# command, the job file's env and the inherited environment get 512 KiB each, so the
# three together, with trainsup's own variables and the resume arguments, stay under it.
MAX_STRING_BYTES = 128 * 1024 - 1
MAX_COMMAND_BYTES = 512 * 1024
MAX_COMMAND_ARGS = 4096
MAX_ENV_BYTES = 512 * 1024
MAX_ENV_VARS = 4096
MAX_PATH_BYTES = 4095
MAX_YAML_DEPTH = 32
MAX_COUNT = 2**31 - 1

# Inherited variables dropped unless the job file sets `env_exclude`; matched without
# regard to case. `*TOKEN`, not `*TOKEN*`: TOKENIZERS_PARALLELISM must pass.
DEFAULT_ENV_EXCLUDE = (
    "*SECRET*", "*PASSWORD*", "*PASSWD*", "*PASSPHRASE*", "*TOKEN", "*_KEY", "*_KEY_ID",
    "*APIKEY*", "*API_KEY*", "*ACCESS_KEY*", "*PRIVATE_KEY*",
)


def _refuse_bool(value: Any) -> Any:
    """YAML reads `true` where a number was meant; pydantic would take it as 1."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def text_problem(text: str) -> str | None:
    """Why `text` cannot reach `execve` or the database as it is, if it cannot."""
    if "\x00" in text:
        return "must not contain a NUL byte"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "must be valid UTF-8 text"
    return None


# Validation context for a spec read back from the database: it was checked when it was
# queued, perhaps by an older trainsup, and a check added since must not make it unreadable.
STORED = {"stored": True}


def _checking_input(info: ValidationInfo) -> bool:
    return not (info.context or {}).get("stored")


def _plain_text(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str) and _checking_input(info) and (problem := text_problem(value)):
        raise ValueError(problem)
    return value


def _path_text(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        _plain_text(value, info)
        if _checking_input(info) and _utf8_size(value) > MAX_PATH_BYTES:
            raise ValueError(f"a path must be at most {MAX_PATH_BYTES} bytes long")
    elif not isinstance(value, Path):
        raise ValueError("must be a path such as runs/exp1")
    return value


def _utf8_size(text: str) -> int:
    return len(text.encode(errors="surrogatepass"))


Duration = Annotated[float, BeforeValidator(parse_duration), Field(allow_inf_nan=False)]
Size = Annotated[int, BeforeValidator(parse_size), Field(le=2**63 - 1)]
Count = Annotated[int, BeforeValidator(_refuse_bool), Field(ge=0, le=MAX_COUNT)]
Number = Annotated[float, BeforeValidator(_refuse_bool)]
PathText = Annotated[Path, BeforeValidator(_path_text)]
Text = Annotated[str, BeforeValidator(_plain_text)]

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT")


def _signal_name(value: Any) -> Any:
    """`SIGINT`, `sigint` or `INT` → `SIGINT`."""
    if isinstance(value, str):
        name = value.strip().upper()
        return name if name.startswith("SIG") else f"SIG{name}"
    return value


StopSignal = Annotated[Literal[STOP_SIGNALS], BeforeValidator(_signal_name)]


def _epoch_seconds(value: Any) -> Any:
    """`not_before`: a date and time (local unless it says otherwise) or seconds since the epoch."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("must be a date and time such as 2026-12-01 02:00") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, datetime):
        return value.timestamp()
    return _refuse_bool(value)

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartBudgets(_Strict):
    """Restarts allowed per cause of death; unset causes share `max_restarts`."""

    crash: Count | None = None
    cuda_oom: Count | None = None
    host_oom: Count | None = None
    hang: Count | None = None
    lost: Count | None = None


class RestartPolicy(_Strict):
    """How a job that dies is started again."""

    max_restarts: Count = 5
    on: RestartBudgets = Field(default_factory=RestartBudgets)
    initial: Duration = 1.0
    max: Duration = 300.0
    factor: Number = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    jitter: Number = Field(default=0.1, ge=0.0, le=1.0)
    crash_loop: Count = 3
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

    global_: Count = Field(alias="global", ge=1)
    micro: Count = Field(ge=1)
    min_micro: Count = Field(default=1, ge=1)
    factor: Number = Field(default=0.5, gt=0.0, lt=1.0)

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
    safety_factor: Number = Field(default=5.0, gt=1.0, allow_inf_nan=False)
    min_timeout: Duration = Field(default=60.0, gt=0)
    log_silence: Duration | None = None  # opt-in hang detection for scripts without the library


class SweepPoint(_Strict):
    """The combination of a sweep this job runs. In a job file `sweep:` is the matrix;
    `trainsup submit` expands it into one job per combination (`trainsup.jobs.sweep`)."""

    name: Annotated[str, Field(pattern=f"^{NAME_PATTERN.pattern}$")]
    values: dict[str, str | int | float | bool] = Field(max_length=64)


class ResumeArgs(_Strict):
    """For scripts that take a checkpoint path (`--resume PATH`): arguments appended to
    `command` when a checkpoint exists, with `{checkpoint}` replaced by the newest file
    (or dir) matching `checkpoint`, a glob relative to `checkpoint_dir`."""

    args: list[Text] = Field(max_length=64)
    checkpoint: Text = Field(max_length=1024)

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


MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class StandbySpec(_Strict):
    """A warm standby (docs/standby.md): while an attempt runs, an interpreter with
    the job's environment has already imported `preload` and waits to become the next
    attempt, so a restart skips the imports. `standby: false` turns it off."""

    enabled: bool = True
    # None: the installed packages the script imports at its top level (torch, lightning, …)
    preload: list[Annotated[str, Field(pattern=f"^{MODULE_NAME.pattern}$", max_length=200)]] | None = \
        Field(default=None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _bool_is_enabled(cls, data: Any) -> Any:
        return {"enabled": data} if isinstance(data, bool) else data


class NotifySpec(_Strict):
    """Who is told when the job ends or restarts (docs/job-spec.md#notify). Never fatal."""

    command: list[Text] | None = Field(default=None, max_length=256)  # a string runs under /bin/sh -c
    desktop: bool = False  # notify-send, where present
    on: list[Literal["succeeded", "failed", "restart", "cancelled"]] = Field(
        default_factory=lambda: ["succeeded", "failed"], max_length=4)
    timeout: Duration = Field(default=30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_is_a_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and True in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        if isinstance(data, dict) and isinstance(data.get("command"), str):
            if not data["command"].strip():
                raise ValueError("notify.command must not be empty")
            data = {**data, "command": ["/bin/sh", "-c", data["command"]]}
        return data


SBATCH_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=[^\x00-\x1f]*)?|-[A-Za-z]( [^\x00-\x1f]*)?")


class SlurmSpec(_Strict):
    """Where and how long the job runs on a Slurm cluster (`trainsup submit --slurm`, docs/slurm.md)."""

    partition: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.,-]{1,200}$")] | None = None
    account: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,200}$")] | None = None
    qos: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,200}$")] | None = None
    time: Duration | None = Field(default=None, gt=0)  # the allocation's time limit; each requeue gets it again
    cpus_per_task: Count | None = Field(default=None, ge=1)
    mem: Annotated[str, Field(pattern=r"^[0-9]+[KMGT]?$")] | None = None  # Slurm's own form: 16G
    sbatch: list[Annotated[str, Field(max_length=1000)]] = Field(default_factory=list, max_length=64)
    """More `#SBATCH` options, each one as `--option=value` (or `-C a100`)."""

    @field_validator("sbatch")
    @classmethod
    def _options_only(cls, lines: list[str]) -> list[str]:
        for line in lines:
            if not SBATCH_OPTION.fullmatch(line):
                raise ValueError(f"{line!r} is not one sbatch option such as --constraint=a100")
        return lines


class JobSpec(_Strict):
    """The blueprint of a job. Paths are resolved when the job is submitted."""

    name: str
    sweep: SweepPoint | None = None  # set by the expansion of a `sweep:` matrix, never written by hand
    command: list[str]
    workdir: PathText | None = None
    env: dict[str, str] = Field(default_factory=dict)
    env_exclude: list[Text] = Field(default_factory=lambda: list(DEFAULT_ENV_EXCLUDE), max_length=256)
    checkpoint_dir: PathText | None = None
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    grace_period: Duration = 30.0
    stop_signal: StopSignal = "SIGTERM"  # sent to the job's main process when trainsup stops it
    gpus: Count = 0
    min_free_memory: Size | None = None
    memory_limit: Size | None = None  # host memory; enforced by a cgroup where we can make one
    # The queue (docs/queue.md): where the job waits, what it reserves, what goes first.
    group: Annotated[str, Field(pattern=f"^{NAME_PATTERN.pattern}$")] | None = None  # None: "default" for CPU jobs
    cpus: Number = Field(default=0.0, ge=0.0, allow_inf_nan=False)  # reserved, not enforced
    memory: Size | None = None  # host memory reserved, not enforced (memory_limit enforces)
    priority: Annotated[int, BeforeValidator(_refuse_bool), Field(ge=-MAX_COUNT, le=MAX_COUNT)] = 0
    after: list[Annotated[str, Field(pattern=f"^{NAME_PATTERN.pattern}$")]] = Field(default_factory=list, max_length=256)
    not_before: Annotated[float, BeforeValidator(_epoch_seconds), Field(allow_inf_nan=False)] | None = None
    batch_size: BatchSize | None = None
    heartbeat: HeartbeatPolicy = Field(default_factory=HeartbeatPolicy)
    on_boot: Literal["resume", "hold"] = "resume"
    resume: ResumeArgs | None = None
    standby: StandbySpec | None = None  # None: the user's default (`standby:` in the config file), else on
    notify: NotifySpec | None = None  # None: the user's default (notifier.user_default)
    slurm: SlurmSpec | None = None  # only `trainsup submit --slurm` reads it

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
            argv = ["/bin/sh", "-c", command]
        elif isinstance(command, list):
            if not command:
                raise ValueError("must not be empty")
            if not all(isinstance(arg, (str, int, float)) and not isinstance(arg, bool) for arg in command):
                raise ValueError("every argument must be a string")
            argv = [str(arg) for arg in command]
        else:
            raise ValueError("must be a list of arguments or a shell string")
        return argv

    @field_validator("command")
    @classmethod
    def _command_fits_execve(cls, argv: list[str], info: ValidationInfo) -> list[str]:
        if not _checking_input(info):
            return argv
        if len(argv) > MAX_COMMAND_ARGS:
            raise ValueError(f"{len(argv)} arguments are more than the {MAX_COMMAND_ARGS} a command may have")
        if problem := next(filter(None, map(text_problem, argv)), None):
            raise ValueError(problem)
        if any(_utf8_size(arg) > MAX_STRING_BYTES for arg in argv):
            raise ValueError(f"one argument is longer than the {MAX_STRING_BYTES + 1} bytes Linux allows")
        if (total := sum(_utf8_size(arg) + 1 for arg in argv)) > MAX_COMMAND_BYTES:
            raise ValueError(f"{total} bytes are more than the {MAX_COMMAND_BYTES // 1024} KiB a command may hold")
        return argv

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
                raise ValueError(f"{str(key)[:40]!r} is not a valid environment variable name")
            if not isinstance(value, (str, int, float, date)):
                raise ValueError(f"the value of {key} must be a string or a number")
            result[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return result

    @field_validator("env")
    @classmethod
    def _env_fits_execve(cls, env: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if not _checking_input(info):
            return env
        if len(env) > MAX_ENV_VARS:
            raise ValueError(f"{len(env)} variables are more than the {MAX_ENV_VARS} a job may set")
        for key, value in env.items():
            if problem := text_problem(value):
                raise ValueError(f"the value of {key} {problem}")
            if _utf8_size(f"{key}={value}") > MAX_STRING_BYTES:
                raise ValueError(f"the value of {key} is longer than the {MAX_STRING_BYTES + 1} bytes Linux allows")
        if (total := environment_size(env)) > MAX_ENV_BYTES:
            raise ValueError(f"{total} bytes are more than the {MAX_ENV_BYTES // 1024} KiB env may hold")
        return env

    @classmethod
    def from_stored(cls, spec_json: str) -> "JobSpec":
        """A spec read back from the database, without the checks on input added since it was queued."""
        return cls.model_validate_json(spec_json, context=STORED)


def environment_size(env: Mapping[str, str]) -> int:
    """Bytes `env` takes in an `execve` call: each NAME=value string, its NUL and its pointer."""
    return sum(_utf8_size(key) + _utf8_size(value) + 2 + 8 for key, value in env.items())


def excluded(name: str, patterns: Sequence[str]) -> bool:
    """Whether an inherited variable is dropped: a glob in `patterns` matches it, case aside."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in patterns)


def drop_excluded(env: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if not excluded(key, patterns)}


def load_spec(path: Path, name_override: str | None = None) -> tuple[JobSpec, str]:
    """Read and validate a job file; return the spec and the file's text.

    Raises:
        SpecError: one sentence naming the file, the field and the problem.
    """
    text = read_job_file(path)
    return parse_spec(text, str(path), name_override), text


def load_specs(path: Path, name_override: str | None = None) -> tuple[list[JobSpec], str]:
    """Every job a job file declares (one, or one per combination of its `sweep:`) and the file's text."""
    text = read_job_file(path)
    return parse_specs(text, str(path), name_override), text


def read_job_file(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_JOB_FILE_BYTES + 1)
        text = data.decode()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the job file ({exc.__class__.__name__}).") from None
    if len(data) > MAX_JOB_FILE_BYTES:
        limit = MAX_JOB_FILE_BYTES // 2**20
        raise SpecError(f"{path}: the job file is larger than {limit} MiB, the most trainsup reads.")
    return text


def parse_specs(text: str, source: str, name_override: str | None = None) -> list[JobSpec]:
    """The jobs of a job file's text: itself, or one per combination of its `sweep:` matrix."""
    from trainsup.jobs.sweep import describe, expand

    data = _parse_yaml(text, source)
    if name_override is not None:
        data["name"] = name_override
    if "sweep" not in data:
        return [parse_spec(text, source, name_override)]
    specs = []
    for values, job in expand(data, source):
        try:
            specs.append(JobSpec.model_validate(job))
        except ValidationError as exc:
            raise SpecError(f"{source} ({describe(values)}): {describe_validation_error(exc)}") from None
    return specs


def parse_spec(text: str, source: str, name_override: str | None = None) -> JobSpec:
    data = _parse_yaml(text, source)
    if name_override is not None:
        data["name"] = name_override
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {describe_validation_error(exc)}") from None


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses what a job file never needs: a key written twice in one
    mapping (YAML keeps the last), merge keys, keys that are lists or mappings, tags it does
    not know, and nesting deeper than `MAX_YAML_DEPTH`."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (<<) are not supported; write the fields out", key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain word, not a list or mapping", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key}' appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_unknown(self, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(
            None, None, f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed in a job file",
            node.start_mark)


_StrictLoader.add_constructor(None, _StrictLoader.construct_unknown)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{source}{where}: not valid YAML ({exc.problem or exc.context}).") from None
    except yaml.reader.ReaderError as exc:
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a byte"
        raise SpecError(f"{source}: not valid YAML ({character} is not allowed in a job file).") from None
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise SpecError(f"{source}: not valid YAML ({first_line}).") from None
    if data is None:
        raise SpecError(f"{source}: the job file is empty.")
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job file must be a mapping of fields such as name: and command:.")
    return data


def describe_validation_error(exc: ValidationError, tagged: bool = False) -> str:
    """The first problem of a pydantic error, as one sentence naming the field.

    `tagged`: the error is from a discriminated union, whose tag leads the field's path.
    """
    error = exc.errors()[0]
    loc = error["loc"][1:] if tagged and len(error["loc"]) > 1 else error["loc"]
    field = _printable(".".join(str(part) for part in loc), 100)
    if not field:  # a rule across fields
        message = _printable(error["msg"].removeprefix("Value error, "), 300)
        return f"{message[0].upper()}{message[1:]}."
    if error["type"] == "missing":
        return f"field '{field}' is required."
    if error["type"] == "extra_forbidden":
        return f"unknown field '{field}'."
    message = _printable(error["msg"].removeprefix("Value error, "), 300)
    return f"field '{field}': {message[0].lower()}{message[1:]}."


def _printable(text: str, limit: int) -> str:
    """`text` on one line: control characters escaped, cut at `limit` characters."""
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
