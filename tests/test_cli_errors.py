"""Bad input through the installed `trainsup` command: one sentence, the right exit, nothing queued."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from support import Cli, DaemonProcess, write_spec

GOOD = "name: ok\ncommand: echo hi\n"

# id → (job file text, or a function that makes the path; what the one line must name)
MALFORMED: dict[str, tuple[str | Callable[[Path], Path], list[str]]] = {
    "broken-yaml": ("name: a\ncommand: echo hi\nenv:\n  A: 1\n   B: 2\n", ["line 5", "not valid YAML"]),
    "unclosed-bracket": ("name: a\ncommand: [echo, hi\nrestart: {}\n", ["line 3", "not valid YAML"]),
    "tab-indent": ("name: a\n\tcommand: echo\n", ["line 2", "not valid YAML"]),
    "empty-file": ("", ["the job file is empty"]),
    "list-not-mapping": ("- name: a\n- command: echo\n", ["must be a mapping"]),
    "unknown-key": (GOOD + "gpu: 1\n", ["unknown field 'gpu'"]),
    "unknown-nested-key": (GOOD + "restart:\n  foo: 1\n", ["unknown field 'restart.foo'"]),
    "missing-name": ("command: echo hi\n", ["field 'name' is required"]),
    "missing-command": ("name: a\n", ["field 'command' is required"]),
    "name-with-slash": ("name: a/b\ncommand: echo\n", ["field 'name'"]),
    "name-dot-first": ("name: .hidden\ncommand: echo\n", ["field 'name'"]),
    "name-with-spaces": ("name: my job\ncommand: echo\n", ["field 'name'"]),
    "empty-command": ("name: a\ncommand: ''\n", ["field 'command'", "empty"]),
    "nested-list-command": ("name: a\ncommand: [[python, train.py]]\n", ["field 'command'", "string"]),
    "bad-duration": (GOOD + "grace_period: 5 parsecs\n", ["field 'grace_period'", "5 parsecs"]),
    "negative-duration": (GOOD + "restart:\n  initial: -5\n", ["field 'restart.initial'", "negative"]),
    "nan-duration": (GOOD + "grace_period: .nan\n", ["field 'grace_period'", "finite"]),
    "max-restarts-negative": (GOOD + "restart:\n  max_restarts: -1\n", ["field 'restart.max_restarts'"]),
    "max-below-initial": (GOOD + "restart:\n  initial: 1m\n  max: 10s\n", ["field 'restart'", "restart.max"]),
    "gpus-negative": (GOOD + "gpus: -1\n", ["field 'gpus'"]),
    "gpus-word": (GOOD + "gpus: two\n", ["field 'gpus'"]),
    "micro-not-dividing": (GOOD + "batch_size:\n  global: 100\n  micro: 32\n", ["field 'batch_size'", "does not divide"]),
    "env-nested-mapping": (GOOD + "env:\n  OPTS:\n    lr: 0.1\n", ["field 'env'", "OPTS"]),
    "workdir-missing": (GOOD + "workdir: no/such/dir\n", ["field 'workdir'", "not a directory"]),
    "bad-size": (GOOD + "min_free_memory: 20 gigs\n", ["field 'min_free_memory'", "20 gigs"]),
    "file-missing": (lambda tmp: tmp / "nope.yaml", ["no such file"]),
    "directory": (lambda tmp: (tmp / "a-dir.yaml").mkdir() or tmp / "a-dir.yaml", ["cannot read the job file"]),
    "not-utf8": (lambda tmp: _write_bytes(tmp / "job.yaml", b"name: \xff\xfe\n"), ["cannot read the job file"]),
}


# Careless or hostile job files that were queued, or crashed the CLI with exit 70 (issue 12).
HOSTILE: dict[str, tuple[str | Callable[[Path], Path], list[str]]] = {
    "nul-in-command": ('name: a\ncommand: "echo a\\0b"\n', ["field 'command'", "NUL byte"]),
    "nul-in-env": ('name: a\ncommand: "true"\nenv: {OPTS: "x\\0y"}\n', ["field 'env'", "OPTS", "NUL byte"]),
    "gpus-true": (GOOD + "gpus: true\n", ["field 'gpus'", "not true or false"]),
    "env-20000-deep": (GOOD + "env: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n", ["nested more than 32"]),
    "workdir-no-such-user": (GOOD + "workdir: ~nosuchuser/x\n", ["field 'workdir'", "~nosuchuser"]),
    "merge-key": ("base: &b\n  name: a\n<<: *b\ncommand: echo\n", ["line 3", "merge keys (<<)"]),
    "file-50mb": (lambda tmp: _write_bytes(tmp / "job.yaml", (GOOD + "#" + "x" * (50 << 20) + "\n").encode()),
                  ["larger than 1 MiB"]),
    "env-value-200kb": (GOOD + "env: {BLOB: " + "x" * 200_000 + "}\n", ["field 'env'", "BLOB", "131072 bytes"]),
    "checkpoint-dir-is-a-file": (lambda tmp: write_spec(tmp / "job.yaml", name="a", command="true",
                                                        checkpoint_dir="job.yaml"),
                                 ["field 'checkpoint_dir'", "exists and is not a folder"]),
    "checkpoint-dir-under-a-file": (GOOD + "checkpoint_dir: /etc/hostname/ckpt\n",
                                    ["field 'checkpoint_dir'", "/etc/hostname is not a folder"]),
    "checkpoint-dir-in-proc": (GOOD + "checkpoint_dir: /proc/ckpt\n", ["field 'checkpoint_dir'", "under /proc"]),
}


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make(tmp_path: Path, case: str) -> Path:
    source, _ = MALFORMED[case] if case in MALFORMED else HOSTILE[case]
    if callable(source):
        return source(tmp_path)
    path = tmp_path / f"{case}.yaml"
    path.write_text(source)
    return path


def inbox(cli: Cli) -> list[str]:
    folder = Path(cli.env["TRAINSUP_HOME"]) / "inbox"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_one_sentence(result, code: int) -> str:
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    line = result.stderr.rstrip("\n")
    assert "\n" not in line, result.stderr
    assert line.startswith("trainsup: "), line
    return line


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_job_file(cli: Cli, tmp_path: Path, case: str) -> None:
    path = make(tmp_path, case)
    line = assert_one_sentence(cli.run("submit", str(path), check=False), 2)
    assert str(path) in line
    for needle in MALFORMED[case][1]:
        assert needle in line
    assert inbox(cli) == []
    assert cli.json("status") == []


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_job_file_is_refused_before_anything_is_written(cli: Cli, tmp_path: Path, case: str) -> None:
    path = make(tmp_path, case)
    line = assert_one_sentence(cli.run("submit", str(path), check=False), 2)
    for needle in HOSTILE[case][1]:
        assert needle in line
    assert len(line) < 400
    assert not Path(cli.env["TRAINSUP_HOME"]).exists()


def test_a_good_job_survives_bad_ones(cli: Cli, tmp_path: Path) -> None:
    job_id = cli.submit(write_spec(tmp_path / "good.yaml", name="good", command="echo hi"))
    queued = inbox(cli)
    assert len(queued) == 1
    for case in MALFORMED:
        assert cli.run("submit", str(make(tmp_path, case)), check=False).returncode == 2, case
    assert inbox(cli) == queued
    assert [(job["id"], job["name"]) for job in cli.json("status")] == [(job_id, "good")]


def test_a_bad_name_override_queues_nothing(cli: Cli, tmp_path: Path) -> None:
    path = write_spec(tmp_path / "job.yaml", name="fine", command="echo hi")
    line = assert_one_sentence(cli.run("submit", str(path), "--name", "a/b", check=False), 2)
    assert "field 'name'" in line
    assert inbox(cli) == []


def test_relative_workdir_is_resolved_from_the_job_files_folder(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "project" / "run").mkdir(parents=True)
    path = write_spec(tmp_path / "project" / "job.yaml", name="rel", command="true", workdir="run")
    cli.submit(path)
    (request,) = [json.loads(p.read_text()) for p in (Path(cli.env["TRAINSUP_HOME"]) / "inbox").iterdir()]
    assert request["spec"]["workdir"] == str((tmp_path / "project" / "run").resolve())


# --- job lookups -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "logs", "cancel", "restart", "hold", "release", "show"])
def test_no_such_job(cli: Cli, command: str) -> None:
    line = assert_one_sentence(cli.run(command, "nosuchjob", check=False), 3)
    assert line == "trainsup: no job matches 'nosuchjob'; see `trainsup status` for ids and names."
    assert inbox(cli) == []


@pytest.mark.parametrize("command", ["status", "logs", "cancel", "show"])
def test_ambiguous_name_prefix(cli: Cli, tmp_path: Path, command: str) -> None:
    first = cli.submit(write_spec(tmp_path / "a.yaml", name="train-a", command="true"))
    second = cli.submit(write_spec(tmp_path / "b.yaml", name="train-b", command="true"))
    queued = inbox(cli)
    line = assert_one_sentence(cli.run(command, "train-", check=False), 3)
    assert "'train-' matches several jobs" in line
    assert f"train-a ({first})" in line and f"train-b ({second})" in line
    assert inbox(cli) == queued
    assert cli.job("train-a")["id"] == first


def test_paths_resolve_from_the_job_file_and_home(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "proj").mkdir(parents=True)
    cli.env["HOME"] = str(home)
    path = write_spec(tmp_path / "job.yaml", name="tilde", command="true", workdir="~/proj", checkpoint_dir="ckpt")
    cli.submit(path)
    (request,) = [json.loads(p.read_text()) for p in (Path(cli.env["TRAINSUP_HOME"]) / "inbox").iterdir()]
    assert request["spec"]["workdir"] == str((home / "proj").resolve())
    assert request["spec"]["checkpoint_dir"] == str((home / "proj" / "ckpt").resolve())


# --- secrets in the submitting shell (issue 12) --------------------------------------------


def state_files_bytes(state_root: Path) -> bytes:
    return b"".join(path.read_bytes() for path in state_root.rglob("*") if path.is_file())


def test_shell_secrets_are_not_stored_and_the_environment_is_never_printed(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path) -> None:
    """The whole shell environment was stored in plain text in trainsup.db, its WAL and launch.json."""
    cli.env.update({"AWS_SECRET_ACCESS_KEY": "canary-aws-secret", "HF_TOKEN": "canary-hf-token",
                    "WANDB_API_KEY": "canary-wandb-key", "PLAIN_INHERITED": "canary-plain",
                    "TOKENIZERS_PARALLELISM": "false"})
    (tmp_path / "out").mkdir()
    script = f"env > {tmp_path / 'out' / 'env.txt'}"
    default = cli.submit(write_spec(tmp_path / "default.yaml", name="default", command=script,
                                    env={"EXPLICIT_TOKEN": "canary-explicit"}))
    daemon.start()
    cli.wait_state(default, "succeeded")
    state_root = Path(cli.env["TRAINSUP_HOME"])
    assert (state_root / f"jobs/{default}/attempt-1.run/launch.json").exists()
    stored = state_files_bytes(state_root)
    assert b"canary-plain" in stored and b"canary-explicit" in stored
    for secret in (b"canary-aws-secret", b"canary-hf-token", b"canary-wandb-key"):
        assert secret not in stored
    keep_all = cli.submit(write_spec(tmp_path / "keep.yaml", name="keep", command="true", env_exclude=[]))
    cli.wait_state(keep_all, "succeeded")
    assert b"canary-hf-token" in (state_root / f"jobs/{keep_all}/attempt-1.run/launch.json").read_bytes()
    job_env = (tmp_path / "out" / "env.txt").read_text()
    assert "canary-plain" in job_env and "TOKENIZERS_PARALLELISM=false" in job_env
    assert "EXPLICIT_TOKEN=canary-explicit" in job_env and "canary-hf-token" not in job_env
    for args in (["status"], ["status", "--json"], ["status", default], ["status", default, "--json"],
                 ["show", default], ["show", default, "--json"], ["show", keep_all, "--json"]):
        output = cli.run(*args).stdout
        assert "canary-" not in output.replace("canary-explicit", ""), args
    shown = cli.run("show", default).stdout
    assert "EXPLICIT_TOKEN from the job file" in shown and "values not shown" in shown


@pytest.mark.timeout(60)
def test_hand_written_inbox_files_never_break_status_show_or_submit(cli: Cli, tmp_path: Path) -> None:
    """With the daemon down, junk in the inbox stays there; the CLI must still answer."""
    job = cli.submit(write_spec(tmp_path / "ok.yaml", name="ok", command="echo hi"))
    inbox = tmp_path / "state" / "inbox"
    (inbox / "0001-junk-list.json").write_text("[1, 2]")
    (inbox / "0002-junk-submit.json").write_text('{"kind": "submit"}')
    (inbox / "0003-junk-spec.json").write_text('{"kind": "submit", "job_id": "abc", "spec": 5}')
    os.mkfifo(inbox / "0004-junk-fifo.json")  # an open() that waits for a writer would hang status
    (inbox / "0005-junk-link.json").symlink_to("/dev/zero")
    status = cli.run("status")
    assert "ok" in status.stdout and status.stderr == ""
    assert [row["id"] for row in cli.json("status")] == [job]
    assert cli.json("show", job)["id"] == job
    cli.submit(write_spec(tmp_path / "two.yaml", name="two", command="echo hi"))
