"""The `trainsup` command. Imports neither torch nor the daemon loop (except `daemon`)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from trainsup.errors import TrainsupError
from trainsup.paths import StateDir

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Keep long PyTorch training runs alive: submit, watch, resume.",
)
service_app = typer.Typer(no_args_is_help=True, help="Install trainsup as a systemd service.")
app.add_typer(service_app, name="service")

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
JobArgument = typer.Argument(..., help="Job id, id prefix, name or unique name prefix.")


def _state() -> StateDir:
    return StateDir.from_env()


def _guard(action: Callable[[], Any]) -> Any:
    """Turn every user-facing error into one sentence on stderr and a non-zero exit."""
    try:
        return action()
    except TrainsupError as exc:
        typer.echo(f"trainsup: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except OSError as exc:
        typer.echo(f"trainsup: {exc.strerror or exc} ({exc.filename or 'system call'}).", err=True)
        raise typer.Exit(1) from None


def _existing_run(submit_command, state: StateDir, spec: Path, name: Optional[str]):
    from trainsup.jobs.spec import load_spec

    parsed, text = load_spec(spec, name)
    return submit_command.already_done(state, parsed, text, spec)


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


@app.command()
def daemon() -> None:
    """Run the supervisor in the foreground (what systemd runs)."""
    from trainsup import logconfig
    from trainsup.supervisor.daemon import Daemon

    logconfig.configure()
    raise typer.Exit(_guard(lambda: Daemon(_state()).run()))


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="The job file (YAML)."),
    name: Optional[str] = typer.Option(None, "--name", help="Override the job's name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the log until the job ends; exit with its outcome."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over: set existing checkpoints aside instead of resuming."),
    again: bool = typer.Option(False, "--again", help="Queue it even if the same job already succeeded or is queued."),
    as_json: bool = JsonOption,
) -> None:
    """Queue a job durably; it runs when the daemon is up.

    The same job file submitted again while its job is queued, running or succeeded is
    skipped (so resubmitting a sweep reruns only what failed), unless --again or --fresh.
    """
    from trainsup.commands import common, logs, submit as submit_command

    state = _state()
    if not (again or fresh):
        existing = _guard(lambda: _existing_run(submit_command, state, spec, name))
        if existing is not None:
            job_id, job_state = existing
            if as_json:
                _print_json({"id": job_id, "skipped": True, "state": job_state})
            else:
                typer.echo(f"skipped: this job is already {job_state} as {job_id} (--again runs it once more)")
            return
    submission = _guard(lambda: submit_command.submit(spec, name, fresh, state))
    running = common.daemon_running(state)
    if as_json:
        _print_json({"id": submission.job_id, "name": submission.spec.name, "daemon_running": running})
    else:
        typer.echo(f"queued {submission.spec.name} as job {submission.job_id}")
        if not running:
            typer.echo("the daemon is not running: the job starts when it comes up (`trainsup daemon`).", err=True)
    if follow:
        final = _guard(lambda: logs.follow(state, submission.job_id))
        typer.echo(f"trainsup: job {submission.job_id} {final}", err=True)
        raise typer.Exit(logs.exit_code_for(final))


@app.command()
def status(job: Optional[str] = typer.Argument(None, help="Show one job and its attempts."), as_json: bool = JsonOption) -> None:
    """State, attempt, runtime, last exit reason and pid of every job."""
    from trainsup.commands import status as status_command

    state = _state()
    if job is None:
        rows = _guard(lambda: status_command.job_rows(state))
        _print_json(rows) if as_json else status_command.render_table(rows)
    else:
        detail = _guard(lambda: status_command.job_detail(state, job))
        _print_json(detail) if as_json else status_command.render_detail(detail)


@app.command()
def logs(
    job: str = JobArgument,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming across restarts until the job ends."),
    attempt: Optional[int] = typer.Option(None, "--attempt", help="Only this attempt."),
    tail: Optional[int] = typer.Option(None, "--tail", "-n", min=1, help="Only the last N lines."),
) -> None:
    """stdout+stderr of every attempt, in order, one separator line per attempt."""
    from trainsup.commands import logs as logs_command

    state = _state()
    if follow:
        final = _guard(lambda: logs_command.follow(state, job, tail))
        raise typer.Exit(logs_command.exit_code_for(final))
    _guard(lambda: logs_command.print_logs(state, job, attempt, tail))


def _control(job: str, action: str, as_json: bool, done: str) -> None:
    from trainsup.commands import common, control

    state = _state()
    job_id = _guard(lambda: control.request(state, job, action))
    if as_json:
        _print_json({"id": job_id, "requested": action})
    else:
        typer.echo(f"{done} job {job_id}")
        if not common.daemon_running(state):
            typer.echo("the daemon is not running: the request applies when it comes up.", err=True)


@app.command()
def cancel(job: str = JobArgument, as_json: bool = JsonOption) -> None:
    """Stop a job for good: SIGTERM its processes, SIGKILL after its grace period."""
    _control(job, "cancel", as_json, "cancel requested for")


@app.command()
def restart(job: str = JobArgument, as_json: bool = JsonOption) -> None:
    """Queue a finished, failed or cancelled job again (it resumes from its checkpoint)."""
    _control(job, "restart", as_json, "restart requested for")


@app.command()
def hold(job: str = JobArgument, as_json: bool = JsonOption) -> None:
    """Keep a waiting job from starting until `release`."""
    _control(job, "hold", as_json, "hold requested for")


@app.command()
def release(job: str = JobArgument, as_json: bool = JsonOption) -> None:
    """Let a held job start again."""
    _control(job, "release", as_json, "release requested for")


@app.command()
def show(job: str = JobArgument, as_json: bool = JsonOption) -> None:
    """The job's spec and its timeline of events."""
    from trainsup.commands import show as show_command

    timeline = _guard(lambda: show_command.job_timeline(_state(), job))
    _print_json(timeline) if as_json else show_command.render(timeline)


@service_app.command("install")
def service_install(
    user_scope: bool = typer.Option(True, "--user/--system", help="A user unit (default) or the system template."),
    run_as: Optional[str] = typer.Option(None, "--as", help="System scope: the user the daemon runs as."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the unit and the systemctl commands only."),
    as_json: bool = JsonOption,
) -> None:
    """Write the systemd unit for this installation, reload systemd, enable and start it."""
    from trainsup import service

    result = _guard(lambda: service.install("user" if user_scope else "system", run_as, dry_run=dry_run))
    if as_json:
        _print_json({"unit": result.unit_name, "path": str(result.unit_path), "commands": result.commands,
                     "warnings": result.warnings, "dry_run": result.dry_run})
        return
    if dry_run:
        typer.echo(f"# {result.unit_path}\n{result.content}")
        for command in result.commands:
            typer.echo("systemctl " + " ".join(command))
    else:
        typer.echo(f"installed and started {result.unit_name} ({result.unit_path})")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)


@app.command()
def doctor(as_json: bool = JsonOption) -> None:
    """Check the state dir, the daemon, NVML, the service, lingering and free disk."""
    from trainsup import doctor as doctor_module
    from trainsup.commands.common import open_store

    state = _state()
    store = open_store(state)
    checkpoint_dirs = sorted({Path(j.checkpoint_dir) for j in store.jobs() if not j.state.is_terminal}) if store else []
    checks = doctor_module.run_checks(state, checkpoint_dirs)
    if as_json:
        _print_json([{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks])
    else:
        for check in checks:
            mark = {True: "ok  ", False: "FAIL", None: "n/a "}[check.ok]
            typer.echo(f"{mark}  {check.name:<14} {check.detail}")
    raise typer.Exit(1 if any(c.ok is False for c in checks) else 0)


def main() -> None:
    try:
        app()
    except TrainsupError as exc:  # pragma: no cover - _guard catches these first
        print(f"trainsup: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("TRAINSUP_DEBUG") or sys.argv[1:2] == ["daemon"]:
            raise
        print(f"trainsup: internal error: {exc.__class__.__name__}: {exc} (TRAINSUP_DEBUG=1 shows the traceback).", file=sys.stderr)
        sys.exit(70)
