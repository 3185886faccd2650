"""A record of what ran: git commit and dirty tree, python and packages, GPUs, host —
gathered by the real daemon once an attempt runs; `show --env` and `diff` read it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import wait_for, write_spec
from trainsup import record

SECRET = "hunter2-not-for-the-record"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _repo(path: Path) -> Path:
    path.mkdir()
    _git(path, "init", "-q")
    _git(path, "config", "user.email", "t@example.com")
    _git(path, "config", "user.name", "t")
    (path / "train.py").write_text("print('training')\n")
    _git(path, "add", "train.py")
    _git(path, "commit", "-qm", "first")
    return path


def test_git_state_tells_clean_from_dirty_and_untracked(tmp_path):
    repo = _repo(tmp_path / "repo")
    clean = record.git_state(str(repo))
    assert clean["dirty"] == "clean" and clean["commit"] == _git(repo, "rev-parse", "HEAD").strip()
    (repo / "train.py").write_text("print('changed')\n")
    edited = record.git_state(str(repo))
    assert edited["dirty"].startswith("sha256:") and edited["changed_files"] == 1
    (repo / "notes.txt").write_text("new\n")
    assert record.git_state(str(repo))["dirty"] not in (edited["dirty"], "clean")
    assert record.git_state(str(tmp_path)) is None  # not a work tree


def test_python_is_resolved_from_the_command_then_path(tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    env = {"PATH": f"{venv_bin}:/usr/bin:/bin"}
    assert record.resolve_python([sys.executable, "train.py"], env, None) == (sys.executable, "command")
    assert record.resolve_python(["/bin/sh", "-c", "exec X=1 python train.py"], env, None)[1] == "command"
    assert record.resolve_python(["torchrun", "train.py"], env, None) == (f"{venv_bin}/python", "PATH")
    assert record.resolve_python(["train.sh"], {"PATH": str(tmp_path)}, None) == (sys.executable, "daemon")


def test_compare_names_what_changed():
    old = {"git": {"commit": "a", "dirty": "clean"}, "python": {"version": "3.11.7", "packages": {"x": "1", "y": "1"}},
           "gpus": ["GPU-1"]}
    new = {"git": {"commit": "b", "dirty": "sha256:f"}, "python": {"version": "3.11.7", "packages": {"x": "2", "z": "1"}},
           "gpus": ["GPU-1"]}
    changes = record.compare(old, new)
    assert changes["git.commit"] == ["a", "b"] and changes["git.dirty"] == ["clean", "sha256:f"]
    assert changes["packages"] == {"added": {"z": "1"}, "removed": {"y": "1"}, "changed": {"x": ["1", "2"]}}
    assert "gpus" not in changes and "python.version" not in changes
    assert record.compare(old, old) == {}


def test_the_daemon_records_a_dirty_tree_and_diff_shows_a_new_commit(tmp_path, cli, daemon):
    repo = _repo(tmp_path / "repo")
    (repo / "train.py").write_text("print('uncommitted')\n")
    spec = write_spec(repo / "job.yaml", name="rec", command=[sys.executable, "train.py"], env={"TOKENISH": SECRET})
    daemon.start()
    first = cli.submit(spec)
    cli.wait_state(first, "succeeded")
    found = wait_for(lambda: (r := cli.run("show", first, "--env", "--json", check=False)).returncode == 0 and r,
                     30, 0.2, "the run record")
    rec = json.loads(found.stdout)["record"]
    assert rec["git"]["dirty"].startswith("sha256:") and rec["git"]["changed_files"] == 2  # train.py, job.yaml
    assert rec["python"]["executable"] == sys.executable and rec["python"]["found_by"] == "command"
    assert rec["python"]["version"] == sys.version.split()[0] and "click" in rec["python"]["packages"]
    assert rec["host"] and rec["boot_id"] and rec["gpus"] == []
    text = cli.run("show", first, "--env").stdout
    assert "tree: dirty" in text and f"click=={rec['python']['packages']['click']}" in text
    assert SECRET not in text and SECRET not in found.stdout

    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "second")
    second = cli.submit(spec, "--again")
    cli.wait_state(second, "succeeded")
    wait_for(lambda: cli.run("show", second, "--env", check=False).returncode == 0, 30, 0.2, "the second record")
    diff = cli.json("diff", first, second)
    assert diff["changes"]["git.commit"] == [rec["git"]["commit"], _git(repo, "rev-parse", "HEAD").strip()]
    assert diff["changes"]["git.dirty"] == [rec["git"]["dirty"], "clean"]
    assert "packages" not in diff["changes"]
    text = cli.run("diff", first, f"{second}:1").stdout
    assert "git.commit:" in text and "git.dirty:" in text


def test_record_and_cli_modules_do_not_import_torch():
    code = ("import sys\nimport trainsup.record, trainsup.commands.diff, trainsup.commands.completion, "
            "trainsup.supervisor.notifier, trainsup.supervisor.attempts\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
