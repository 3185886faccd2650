"""Shell habits: completion scripts and job completion, colour only on a terminal
(NO_COLOR, --json and pipes stay plain), `status -w` refreshing until Ctrl+C (exit 0)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess

import pytest

from support import TRAINSUP, wait_for, write_spec
from trainsup.commands.table import format_table, state_colour

ESC = "\x1b["


def _on_terminal(env: dict[str, str], *args: str) -> str:
    """stdout of `trainsup ARGS` run on a pseudo-terminal."""
    master, slave = pty.openpty()
    process = subprocess.Popen([TRAINSUP, *args], env=env, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        try:
            chunk = os.read(master, 65536) if ready else b""
        except OSError:  # EIO: the other side closed
            chunk = b""
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(30) == 0
    return output.decode()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(cli, shell):
    source = cli.run("completion", shell).stdout
    assert "_TRAINSUP_COMPLETE" in source and "trainsup" in source


def test_job_arguments_complete_ids_and_names(tmp_path, cli):
    job = cli.submit(write_spec(tmp_path / "job.yaml", name="alpha-run", command="true"))  # in the inbox: no daemon
    env = {**cli.env, "_TRAINSUP_COMPLETE": "bash_complete", "COMP_CWORD": "2"}
    by_name = subprocess.run([TRAINSUP], env={**env, "COMP_WORDS": "trainsup logs alp"}, capture_output=True, text=True)
    assert by_name.returncode == 0 and by_name.stdout.split() == ["plain,alpha-run"]
    by_id = subprocess.run([TRAINSUP], env={**env, "COMP_WORDS": f"trainsup diff {job[:3]}"}, capture_output=True,
                           text=True)
    assert f"plain,{job}" in by_id.stdout.split()
    unknown = subprocess.run([TRAINSUP], env={**env, "COMP_WORDS": "trainsup show zzz"}, capture_output=True, text=True)
    assert unknown.returncode == 0 and unknown.stdout.strip() == ""


def test_colour_on_a_terminal_only_and_never_with_no_color(tmp_path, cli):
    cli.submit(write_spec(tmp_path / "job.yaml", name="coloured", command="true"))
    coloured = _on_terminal(cli.env, "status")
    assert f"{ESC}34mqueued" in coloured and f"{ESC}1mID" in coloured
    assert ESC not in _on_terminal({**cli.env, "NO_COLOR": "1"}, "status")
    assert ESC not in _on_terminal(cli.env, "status", "--json")
    assert ESC not in cli.run("status").stdout  # a pipe


def test_format_table_paints_after_aligning():
    plain = format_table(("A", "STATE"), [("x", "failed"), ("yy", "running")])
    painted = format_table(("A", "STATE"), [("x", "failed"), ("yy", "running")],
                           lambda column, cell: state_colour(cell) if column == 1 else None)
    assert painted.replace(f"{ESC}31m", "").replace(f"{ESC}36m", "").replace(f"{ESC}1m", "").replace(
        f"{ESC}0m", "") == plain
    assert state_colour("backoff (4m30s)") == "33" and state_colour("queued: waiting for 1 GPU") == "34"


def test_status_watch_refreshes_until_ctrl_c(tmp_path, cli):
    cli.submit(write_spec(tmp_path / "job.yaml", name="watched", command="true"))
    process = subprocess.Popen([TRAINSUP, "status", "-w", "-n", "0.2"], env=cli.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    seen: list[str] = []

    def two_frames() -> bool:
        seen.append(os.read(process.stdout.fileno(), 65536).decode())
        return "".join(seen).count("Every 0.2s: trainsup status") >= 2

    wait_for(two_frames, 30, what="two frames")
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
    assert "watched" in "".join(seen)
    assert cli.run("status", "-w", "--json", check=False).returncode == 2
