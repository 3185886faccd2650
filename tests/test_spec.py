"""JobSpec validation: defaults, coercions, rules, one-sentence errors. Pure, no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from trainsup.errors import SpecError
from trainsup.jobs.spec import BatchSize, HeartbeatPolicy, JobSpec, RestartPolicy, load_spec, parse_spec


def spec(**fields: object) -> JobSpec:
    return JobSpec.model_validate({"name": "job", "command": ["true"], **fields})


def error(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "job.yaml")
    return str(caught.value)


# --- defaults ----------------------------------------------------------------------


def test_defaults() -> None:
    job = spec()
    assert job.workdir is None
    assert job.env == {}
    assert job.checkpoint_dir is None
    assert job.grace_period == 30.0
    assert job.gpus == 0
    assert job.min_free_memory is None
    assert job.batch_size is None
    assert job.restart == RestartPolicy()
    assert job.heartbeat == HeartbeatPolicy()
    assert job.on_boot == "resume"


def test_restart_defaults() -> None:
    policy = RestartPolicy()
    assert (policy.max_restarts, policy.initial, policy.max, policy.factor) == (5, 1.0, 300.0, 2.0)
    assert (policy.jitter, policy.crash_loop, policy.min_uptime) == (0.1, 3, 30.0)


def test_human_forms_in_a_spec() -> None:
    job = parse_spec(
        "name: j\ncommand: x\ngrace_period: 1m\nmin_free_memory: 20GiB\n"
        "restart: {initial: 250ms, max: 1h30m, min_uptime: 2m}\n",
        "job.yaml",
    )
    assert job.grace_period == 60.0
    assert job.min_free_memory == 20 * 2**30
    assert (job.restart.initial, job.restart.max, job.restart.min_uptime) == (0.25, 5400.0, 120.0)


# --- command -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, argv",
    [
        ("python train.py --lr 3e-4", ["/bin/sh", "-c", "python train.py --lr 3e-4"]),
        ("exec torchrun x.py", ["/bin/sh", "-c", "exec torchrun x.py"]),
        (["python", "train.py"], ["python", "train.py"]),
        (["sleep", 5], ["sleep", "5"]),
        (["python", "-c", "print(1)", 0.5], ["python", "-c", "print(1)", "0.5"]),
    ],
)
def test_command(command: object, argv: list[str]) -> None:
    assert spec(command=command).command == argv


@pytest.mark.parametrize(
    "command", ["", "   ", [], [["echo", "hi"]], ["echo", None], ["echo", True], ["echo", {"a": 1}], 5, None]
)
def test_bad_command(command: object) -> None:
    with pytest.raises(ValidationError):
        spec(command=command)


# --- env -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [("x", "x"), (1, "1"), (0.5, "0.5"), (True, "true"), (False, "false"), ("", ""), ("a=b c", "a=b c")],
)
def test_env_values_become_text(value: object, text: str) -> None:
    assert spec(env={"VAR": value}).env == {"VAR": text}


def test_env_null_is_empty() -> None:
    assert spec(env=None).env == {}


def test_yaml_env_coercion() -> None:
    job = parse_spec("name: j\ncommand: x\nenv:\n  A: 1\n  B: yes\n  C: '007'\n  D: 1.50\n", "job.yaml")
    assert job.env == {"A": "1", "B": "true", "C": "007", "D": "1.5"}


@pytest.mark.parametrize(
    "env",
    [{"A": {"b": 1}}, {"A": [1]}, {"A": None}, {"1A": "x"}, {"A-B": "x"}, {"": "x"}, {"A B": "x"}, ["A=1"], "A=1"],
)
def test_bad_env(env: object) -> None:
    with pytest.raises(ValidationError):
        spec(env=env)


# --- name ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "train-a", "bert_base.v2", "_x", "0", "a" * 100, "a..b", "A-Z.9"])
def test_good_names(name: str) -> None:
    assert spec(name=name).name == name


@pytest.mark.parametrize(
    "name", ["", "-x", "a/b", "../x", ".hidden", ".", "..", "a b", "a\nb", "a" * 101, "naïve", "a:b", "a*", "~x"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(ValidationError):
        spec(name=name)


def test_name_override_replaces_the_files_name() -> None:
    assert parse_spec("name: a\ncommand: x\n", "job.yaml", name_override="b").name == "b"


def test_name_override_is_validated() -> None:
    with pytest.raises(SpecError, match="field 'name'"):
        parse_spec("name: a\ncommand: x\n", "job.yaml", name_override="a/b")


def test_name_override_supplies_a_missing_name() -> None:
    assert parse_spec("command: x\n", "job.yaml", name_override="b").name == "b"


# --- batch_size ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch, micro, min_micro",
    [
        ({"global": 256, "micro": 64}, 64, 1),
        ({"global": 256, "micro": 256}, 256, 1),
        ({"global": 96, "micro": 48, "min_micro": 12}, 48, 12),
        ({"global": 7, "micro": 1}, 1, 1),
        ({"global": 8, "micro": 8, "min_micro": 8}, 8, 8),
    ],
)
def test_batch_size(batch: dict, micro: int, min_micro: int) -> None:
    parsed = spec(batch_size=batch).batch_size
    assert (parsed.global_, parsed.micro, parsed.min_micro) == (batch["global"], micro, min_micro)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"global": 10, "micro": 3}, "does not divide"),
        ({"global": 8, "micro": 16}, "does not divide"),
        ({"global": 8, "micro": 4, "min_micro": 8}, "min_micro"),
        ({"global": 0, "micro": 1}, "greater than or equal to 1"),
        ({"global": 8, "micro": 0}, "greater than or equal to 1"),
        ({"global": 8, "micro": 4, "min_micro": 0}, "greater than or equal to 1"),
        ({"micro": 4}, "required"),
        ({"global": 8}, "required"),
        ({"global": 8, "micro": 4, "accum": 2}, "unknown field"),
    ],
)
def test_bad_batch_size(batch: dict, message: str) -> None:
    text = "name: j\ncommand: x\nbatch_size: " + repr(batch).replace("'", "") + "\n"
    assert message in error(text)


def test_batch_size_global_is_read_by_alias_and_dumped_by_alias() -> None:
    batch = BatchSize.model_validate({"global": 16, "micro": 4})
    assert batch.model_dump(by_alias=True) == {"global": 16, "micro": 4, "min_micro": 1, "factor": 0.5}


@pytest.mark.parametrize("factor", [0, 1, 1.5, -0.5])
def test_batch_backoff_factor_is_below_one(factor: float) -> None:
    assert "field 'batch_size.factor'" in error(f"name: j\ncommand: x\nbatch_size: {{global: 8, micro: 8, factor: {factor}}}\n")


# --- restart -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "restart, field",
    [
        ({"max_restarts": -1}, "restart.max_restarts"),
        ({"initial": "10s", "max": "5s"}, "restart"),
        ({"factor": 0.5}, "restart.factor"),
        ({"factor": ".inf"}, "restart.factor"),
        ({"jitter": 1.5}, "restart.jitter"),
        ({"jitter": -0.1}, "restart.jitter"),
        ({"crash_loop": -1}, "restart.crash_loop"),
        ({"min_uptime": "soon"}, "restart.min_uptime"),
        ({"foo": 1}, "restart.foo"),
    ],
)
def test_bad_restart(restart: dict, field: str) -> None:
    body = "".join(f"  {key}: {value}\n" for key, value in restart.items())
    assert f"'{field}'" in error(f"name: j\ncommand: x\nrestart:\n{body}")


def test_restart_max_equal_to_initial_is_fine() -> None:
    assert RestartPolicy(initial=5, max=5).max == 5


@pytest.mark.parametrize("value", [".nan", ".inf", "nan", "inf", "-.inf"])
def test_durations_must_be_finite(value: str) -> None:
    assert "field 'grace_period'" in error(f"name: j\ncommand: x\ngrace_period: {value}\n")


def test_restart_budgets_per_reason() -> None:
    job = parse_spec("name: j\ncommand: x\nrestart:\n  on:\n    cuda_oom: 10\n    hang: 0\n", "job.yaml")
    assert (job.restart.on.cuda_oom, job.restart.on.hang, job.restart.on.crash) == (10, 0, None)


@pytest.mark.parametrize("body, field", [("on: {crash: -1}", "restart.on.crash"), ("on: {preempted: 3}", "restart.on.preempted")])
def test_bad_restart_budgets(body: str, field: str) -> None:
    assert f"'{field}'" in error(f"name: j\ncommand: x\nrestart:\n  {body}\n")


# --- heartbeat, on_boot --------------------------------------------------------------


def test_heartbeat_defaults() -> None:
    beat = HeartbeatPolicy()
    assert (beat.timeout, beat.first_timeout, beat.checkpoint_timeout) == (None, 3600.0, 1800.0)
    assert (beat.safety_factor, beat.min_timeout, beat.log_silence) == (5.0, 60.0, None)


def test_heartbeat_human_forms() -> None:
    job = parse_spec("name: j\ncommand: x\nheartbeat: {timeout: 10m, first_timeout: 2h, log_silence: 30m}\n", "job.yaml")
    assert (job.heartbeat.timeout, job.heartbeat.first_timeout, job.heartbeat.log_silence) == (600.0, 7200.0, 1800.0)


@pytest.mark.parametrize(
    "body, field",
    [
        ("timeout: 0", "heartbeat.timeout"),
        ("first_timeout: 0s", "heartbeat.first_timeout"),
        ("checkpoint_timeout: 0", "heartbeat.checkpoint_timeout"),
        ("min_timeout: 0", "heartbeat.min_timeout"),
        ("safety_factor: 1", "heartbeat.safety_factor"),
        ("safety_factor: .inf", "heartbeat.safety_factor"),
        ("interval: 5s", "heartbeat.interval"),
    ],
)
def test_bad_heartbeat(body: str, field: str) -> None:
    """The daemon's HangPolicy refuses these; the spec must refuse them first."""
    assert f"'{field}'" in error(f"name: j\ncommand: x\nheartbeat: {{{body}}}\n")


def test_every_valid_heartbeat_makes_a_hang_policy() -> None:
    from trainsup.supervisor.hang_policy import HangPolicy

    job = parse_spec("name: j\ncommand: x\nheartbeat: {timeout: 1ms, first_timeout: 1ms, checkpoint_timeout: 1ms, min_timeout: 1ms, safety_factor: 1.01}\n", "job.yaml")
    HangPolicy.of(job.heartbeat)


@pytest.mark.parametrize("value", ["resume", "hold"])
def test_on_boot(value: str) -> None:
    assert spec(on_boot=value).on_boot == value


@pytest.mark.parametrize("value", ["restart", "Hold", "true"])
def test_bad_on_boot(value: str) -> None:
    assert "field 'on_boot'" in error(f"name: j\ncommand: x\non_boot: {value}\n")


# --- gpus, memory --------------------------------------------------------------------


@pytest.mark.parametrize("gpus, message", [(-1, "greater than or equal to 0"), ("two", "integer"), (1.5, "integer")])
def test_bad_gpus(gpus: object, message: str) -> None:
    assert message in error(f"name: j\ncommand: x\ngpus: {gpus}\n")


def test_gpus_as_a_numeric_string_is_accepted() -> None:
    assert spec(gpus="2").gpus == 2


@pytest.mark.parametrize("size", ["lots", "-1", "1.5", "20 PB"])
def test_bad_min_free_memory(size: str) -> None:
    assert "field 'min_free_memory'" in error(f"name: j\ncommand: x\nmin_free_memory: {size}\n")


# --- the spec as a whole -------------------------------------------------------------


def test_frozen() -> None:
    job = spec()
    with pytest.raises(ValidationError):
        job.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        job.restart.max_restarts = 9  # type: ignore[misc]


def test_model_copy_leaves_the_original_alone() -> None:
    job = spec(workdir="sub")
    moved = job.model_copy(update={"workdir": Path("/abs")})
    assert (job.workdir, moved.workdir) == (Path("sub"), Path("/abs"))


def test_round_trip_through_json() -> None:
    job = spec(batch_size={"global": 8, "micro": 4}, env={"A": 1}, min_free_memory="1k", grace_period="1m")
    again = JobSpec.model_validate(job.model_dump(mode="json", by_alias=True))
    assert again == job


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: j\n", "job.yaml: field 'command' is required."),
        ("command: x\n", "job.yaml: field 'name' is required."),
        ("name: j\ncommand: x\nfoo: 1\n", "job.yaml: unknown field 'foo'."),
        ("name: j\ncommand: x\nrestart: {foo: 1}\n", "job.yaml: unknown field 'restart.foo'."),
        ("name: j\ncommand: x\ngpus: -1\n", "job.yaml: field 'gpus': input should be greater than or equal to 0."),
        ("", "job.yaml: the job file is empty."),
        ("# only a comment\n", "job.yaml: the job file is empty."),
        ("- a\n- b\n", "job.yaml: a job file must be a mapping of fields such as name: and command:."),
        ("just text\n", "job.yaml: a job file must be a mapping of fields such as name: and command:."),
    ],
)
def test_error_sentences(text: str, expected: str) -> None:
    assert error(text) == expected


@pytest.mark.parametrize(
    "text, line",
    [("name: j\ncommand: [a\n  b: : c\n", 3), ("name: j\n\tcommand: x\n", 2), ("name: 'j\n", 2), ("a: b: c\n", 1)],
)
def test_yaml_errors_name_the_line(text: str, line: int) -> None:
    message = error(text)
    assert message.startswith(f"job.yaml line {line}: not valid YAML (")
    assert "\n" not in message


def test_load_spec_returns_the_text(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ncommand: x\n")
    job, text = load_spec(path)
    assert job.name == "j" and text == "name: j\ncommand: x\n"


def test_load_spec_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_load_spec_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the job file"):
        load_spec(tmp_path)


def test_load_spec_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError, match="cannot read the job file"):
        load_spec(path)


# --- hostile and careless input (issue 12) -------------------------------------------


def one_line(text: str) -> str:
    message = error(text)
    assert "\n" not in message and message.startswith("job.yaml"), message
    return message


@pytest.mark.parametrize(
    "text, field",
    [
        ('name: j\ncommand: "echo a\\0b"\n', "command"),
        ('name: j\ncommand: [echo, "a\\0b"]\n', "command"),
        ('name: j\ncommand: x\nenv: {OPTS: "a\\0b"}\n', "env"),
        ('name: j\ncommand: x\nworkdir: "a\\0b"\n', "workdir"),
        ('name: j\ncommand: x\ncheckpoint_dir: "a\\0b"\n', "checkpoint_dir"),
        ('name: j\ncommand: x\ncheckpoint_dir: c\nresume: {args: ["{checkpoint}\\0"], checkpoint: "*.pt"}\n',
         "resume.args.0"),
    ],
)
def test_a_nul_byte_is_refused_at_submit(text: str, field: str) -> None:
    """The monitor died on 'embedded null byte' and the job was lost three times."""
    assert one_line(text).startswith(f"job.yaml: field '{field}'")
    assert "NUL byte" in error(text)


def test_text_that_is_not_utf8_is_refused() -> None:
    """A lone surrogate from a YAML escape would make the daemon refuse the request later."""
    assert "UTF-8" in one_line('name: j\ncommand: x\nenv: {A: "\\udcff"}\n')
    assert "UTF-8" in one_line('name: j\ncommand: [x, "\\udcff"]\n')


@pytest.mark.parametrize(
    "body, field",
    [
        ("gpus: true", "gpus"),
        ("gpus: yes", "gpus"),
        ("restart: {max_restarts: true}", "restart.max_restarts"),
        ("restart: {crash_loop: false}", "restart.crash_loop"),
        ("restart: {on: {hang: true}}", "restart.on.hang"),
        ("restart: {jitter: true}", "restart.jitter"),
        ("restart: {factor: true}", "restart.factor"),
        ("heartbeat: {safety_factor: true}", "heartbeat.safety_factor"),
        ("batch_size: {global: true, micro: 1}", "batch_size.global"),
        ("batch_size: {global: 8, micro: 8, factor: true}", "batch_size.factor"),
        ("gpus: 4294967296", "gpus"),
    ],
)
def test_a_boolean_is_not_a_number(body: str, field: str) -> None:
    """`gpus: true` became one GPU."""
    assert one_line(f"name: j\ncommand: x\n{body}\n").startswith(f"job.yaml: field '{field}'")


def test_env_nested_20000_deep_is_one_sentence() -> None:
    deep = "{a: " * 20_000 + "1" + "}" * 20_000
    assert "nested more than 32 levels deep" in one_line(f"name: j\ncommand: x\nenv: {deep}\n")
    block = "".join("  " * depth + "a:\n" for depth in range(2_000))
    assert "nested more than 32 levels deep" in one_line(f"name: j\ncommand: x\nenv:\n{block}")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("base: &b\n  gpus: 1\n<<: *b\nname: j\ncommand: x\n", "merge keys (<<) are not supported"),
        ("name: j\ncommand: x\n? [a, b]\n: 1\n", "a key must be a plain word"),
        ("name: j\ncommand: x\n{a: 1}: 2\n", "a key must be a plain word"),
        ("name: j\ncommand: !!python/object/apply:os.system [true]\n", "the tag !!python/object/apply:os.system"),
        ("name: j\ncommand: !custom x\n", "the tag !custom is not allowed"),
        ("name: j\x00\ncommand: x\n", "#x0000 is not allowed"),
        ("name: j\ncommand: x\n\"a\\nb\": 1\n", "unknown field 'a\\nb'"),
    ],
)
def test_yaml_tricks_are_one_clear_sentence(text: str, needle: str) -> None:
    assert needle in one_line(text)


def test_anchors_and_aliases_still_work() -> None:
    job = parse_spec("name: j\ncommand: &c [python, t.py]\nresume: {args: [--r, '{checkpoint}'], checkpoint: x}\n"
                     "checkpoint_dir: c\nenv: {A: &v '1', B: *v}\n", "job.yaml")
    assert job.env == {"A": "1", "B": "1"}


def test_a_key_written_twice_is_refused_as_the_doc_says() -> None:
    """The doc said YAML keeps the last value without a warning; the code refuses it."""
    assert "the key 'gpus' appears twice" in one_line("name: j\ncommand: x\ngpus: 1\ngpus: 0\n")
    doc = (Path(__file__).parents[1] / "docs" / "job-spec.md").read_text()
    assert "keeps the last value without any warning" not in doc
    assert "refuses a key written twice" in doc


# --- size caps -------------------------------------------------------------------------


def test_a_50_mb_job_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    with open(path, "w") as handle:
        handle.write("name: j\ncommand: x\nenv:\n")
        for number in range(50 * 1024):
            handle.write(f"  V{number}: {'x' * 1000}\n")
    with pytest.raises(SpecError, match="larger than 1 MiB") as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: the job file is larger than 1 MiB, the most trainsup reads."


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"command": ["echo", "x" * 200_000]}, "longer than the 131072 bytes"),
        ({"command": "echo " + "x" * 200_000}, "longer than the 131072 bytes"),
        ({"command": ["echo"] * 5000}, "5000 arguments are more than the 4096"),
        ({"command": ["x" * 100_000] * 6}, "more than the 512 KiB a command may hold"),
        ({"env": {"BLOB": "x" * 200_000}}, "the value of BLOB is longer than the 131072 bytes"),
        ({"env": {f"V{n}": "x" * 100_000 for n in range(6)}}, "more than the 512 KiB env may hold"),
        ({"env": {f"V{n}": "" for n in range(5000)}}, "5000 variables are more than the 4096"),
        ({"workdir": "x" * 5000}, "at most 4095 bytes"),
        ({"env_exclude": ["*"] * 300}, "env_exclude"),
    ],
)
def test_sizes_past_what_execve_takes_are_refused(fields: dict, needle: str) -> None:
    """A 50 MB env value was queued, then failed to spawn with 'Argument list too long'."""
    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    assert needle in str(caught.value)


def test_the_largest_command_and_env_allowed_do_run(tmp_path: Path) -> None:
    """The caps leave room: the biggest accepted command and env, with trainsup's own variables,
    pass through execve."""
    import os
    import subprocess

    from trainsup.jobs.spec import MAX_STRING_BYTES

    arg = "a" * (MAX_STRING_BYTES - 10)
    job = spec(command=["/bin/sh", "-c", "exit 0", arg, arg, arg],
               env={f"V{n}": "v" * (MAX_STRING_BYTES - 10) for n in range(3)})
    env = {**os.environ, **job.env, "TRAINSUP_CHECKPOINT_DIR": "/" + "c" * 4000}
    assert subprocess.run(job.command, env=env).returncode == 0


# --- env_exclude -----------------------------------------------------------------------


def test_secret_looking_variables_are_dropped_by_default() -> None:
    from trainsup.jobs.spec import drop_excluded

    shell = {"AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": "i", "AWS_SESSION_TOKEN": "t", "hf_token": "h",
             "GITHUB_TOKEN": "g", "WANDB_API_KEY": "w", "DB_PASSWORD": "p", "SSH_PRIVATE_KEY": "k",
             "PATH": "/bin", "TOKENIZERS_PARALLELISM": "false", "AWS_REGION": "eu", "HOME": "/root",
             "GOOGLE_APPLICATION_CREDENTIALS": "/k.json"}
    kept = drop_excluded(shell, spec().env_exclude)
    assert kept == {"PATH": "/bin", "TOKENIZERS_PARALLELISM": "false", "AWS_REGION": "eu", "HOME": "/root",
                    "GOOGLE_APPLICATION_CREDENTIALS": "/k.json"}
    assert drop_excluded(shell, spec(env_exclude=[]).env_exclude) == shell
    assert set(drop_excluded(shell, spec(env_exclude=["aws_*"]).env_exclude)) == set(shell) - {
        "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AWS_REGION"}


@pytest.mark.parametrize("patterns", ["*TOKEN", [1], ["a\x00"]])
def test_bad_env_exclude(patterns: object) -> None:
    with pytest.raises(ValidationError):
        spec(env_exclude=patterns)


def test_a_spec_stored_before_these_checks_still_loads() -> None:
    """A job queued by an older trainsup (a NUL in its command, 5000 arguments) must not make
    the daemon fail to read its own database after an upgrade."""
    stored = spec().model_dump_json(by_alias=True).replace('"command":["true"]',
                                                            '"command":["echo","a\\u0000b"' + ',"x"' * 5000 + ']')
    with pytest.raises(ValidationError):
        JobSpec.model_validate_json(stored)
    assert JobSpec.from_stored(stored).command[1] == "a\x00b"
