"""The `trainsup` command. Imports neither torch nor the daemon loop (except `daemon`).

Built on click rather than typer: typer builds pydantic adapters for every option,
which triples the start-up time of `trainsup status`. Each command's work lives in
`trainsup.commands.<name>`, imported only when that command runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from trainsup import __version__
from trainsup.errors import DatabaseVersionError, TrainsupError
from trainsup.paths import StateDir

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def _complete_job(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    from trainsup.commands.completion import job_candidates

    return job_candidates(_state(), incomplete)


job_argument = click.argument("job", metavar="JOB", shell_complete=_complete_job)


def _state() -> StateDir:
    return StateDir.from_env()


def _guard(action: Callable[[], Any]) -> Any:
    """Turn every user-facing error into one sentence on stderr and a non-zero exit."""
    try:
        return action()
    except BrokenPipeError:
        _exit_on_broken_pipe()
    except TrainsupError as exc:
        click.echo(f"trainsup: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        click.echo(f"trainsup: {exc.strerror or exc} ({exc.filename or 'system call'}).", err=True)
        sys.exit(1)


def _exit_on_broken_pipe() -> None:
    """The reader went away (`trainsup logs JOB | head`): stop quietly, as a SIGPIPE would.

    stdout is pointed at /dev/null first, so that the interpreter's last flush at exit
    does not fail again and print a traceback.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(128 + 13)  # what a shell reports for a process ended by SIGPIPE


def _print_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="trainsup", message="%(prog)s %(version)s")
def app() -> None:
    """Keep long PyTorch training runs alive: submit, watch, resume.

    JOB is a job id, id prefix, name or unique name prefix.
    """


@app.command()
def daemon() -> None:
    """Run the supervisor in the foreground (what systemd runs)."""
    from trainsup import logconfig
    from trainsup.supervisor.daemon import Daemon

    logconfig.configure()
    sys.exit(_guard(lambda: Daemon(_state()).run()))


@app.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--name", help="Override the job's name.")
@click.option("--state", "state_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Its own state dir (default: node-local, under $TMPDIR/trainsup-run-<uid>/).")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False),
              help="Keep a JSON report of its state in this file (what `submit --slurm` reads).")
@click.option("--fresh", is_flag=True, help="Start over: set existing checkpoints aside instead of resuming.")
@click.option("--again", is_flag=True, help="Run it even if it already succeeded in this state dir.")
def run(spec: Path, name: str | None, state_dir: Path | None, report: Path | None, fresh: bool,
        again: bool) -> None:
    """Supervise the job in SPEC in the foreground, without a daemon, until it ends.

    The daemon's restarts, OOM backoff and hang detection for one job, its log on stdout.
    Exits 0 when the job succeeded, 1 when it failed or was cancelled, 75 when a signal
    stopped it after a checkpoint (SIGINT, SIGTERM, SIGUSR1; inside Slurm it requeues the
    Slurm job first). Running it again with the same job file resumes it (docs/slurm.md).
    """
    from trainsup.commands import run as run_command

    sys.exit(_guard(lambda: run_command.run(spec, name, state_dir, report, again, fresh)))


@app.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--name", help="Override the job's name.")
@click.option("--follow", "-f", is_flag=True, help="Stream the log until the job ends; exit with its outcome.")
@click.option("--fresh", is_flag=True, help="Start over: set existing checkpoints aside instead of resuming.")
@click.option("--again", is_flag=True, help="Queue it even if the same job already succeeded or is queued.")
@click.option("--delay", metavar="DURATION", help="Start no sooner than this from now (30s, 5m, 2h).")
@click.option("--slurm", is_flag=True, help="Submit it to Slurm with sbatch instead (docs/slurm.md).")
@click.option("--dry-run", is_flag=True, help="With --slurm: print the sbatch script; submit nothing.")
@json_option
def submit(spec: Path, name: str | None, follow: bool, fresh: bool, again: bool, delay: str | None,
           slurm: bool, dry_run: bool, as_json: bool) -> None:
    """Queue the job in SPEC durably; it runs when the daemon is up.

    The same job file submitted again while its job is queued, running or succeeded
    is skipped (so resubmitting a sweep reruns only what did not succeed), unless
    --again or --fresh. With --slurm it goes to a Slurm cluster instead, where
    `trainsup run` supervises it inside each allocation and requeues it at its time limit.
    """
    from trainsup.commands import common, logs, submit as submit_command
    from trainsup.units import parse_duration

    state = _state()
    if slurm or dry_run:
        _submit_slurm(state, spec, name, slurm, dry_run, follow, fresh, delay, as_json)
        return
    try:
        delay_s = parse_duration(delay) if delay is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--delay'") from None
    if (sweep := _guard(lambda: submit_command.sweep_of(spec, name))) is not None:
        if follow:
            raise click.UsageError("--follow takes one job; a sweep queues one job per combination")
        _submit_sweep(state, spec, sweep, fresh, again, delay_s, as_json)
        return
    if not (again or fresh):
        existing = _guard(lambda: submit_command.existing_run(state, spec, name))
        if existing is not None:
            job_id, job_state = existing
            if as_json:
                _print_json({"id": job_id, "skipped": True, "state": job_state})
            else:
                click.echo(f"skipped: this job is already {job_state} as {job_id} (--again runs it once more)")
            return
    submission = _guard(lambda: submit_command.submit(spec, name, fresh, state, delay_s))
    running = common.daemon_running(state)
    if as_json:
        _print_json({"id": submission.job_id, "name": submission.spec.name, "daemon_running": running})
    else:
        click.echo(f"queued {submission.spec.name} as job {submission.job_id}")
        if not running:
            click.echo("the daemon is not running: the job starts when it comes up (`trainsup daemon`).", err=True)
    if follow:
        final = _guard(lambda: logs.follow(state, submission.job_id))
        click.echo(f"trainsup: job {submission.job_id} {final}", err=True)
        sys.exit(logs.exit_code_for(final))


def _submit_slurm(state: StateDir, spec: Path, name: str | None, slurm: bool, dry_run: bool, follow: bool,
                  fresh: bool, delay: str | None, as_json: bool) -> None:
    from trainsup.commands import slurm as slurm_command

    if not slurm:
        raise click.UsageError("--dry-run goes with --slurm")
    if fresh or delay is not None:
        raise click.UsageError("--fresh and --delay do not go with --slurm (sbatch --begin delays a Slurm job)")
    if dry_run:
        job_spec, text = _guard(lambda: slurm_command.render_script(spec, name, state))
        _print_json({"name": job_spec.name, "script": text}) if as_json else click.echo(text, nl=False)
        return
    job = _guard(lambda: slurm_command.submit(spec, name, state))
    if as_json:
        _print_json({"id": f"slurm:{job.slurm_id}", "slurm_id": job.slurm_id, "name": job.name, "log": job.log})
    else:
        click.echo(f"submitted {job.name} to Slurm as job {job.slurm_id} (`trainsup status slurm:{job.slurm_id}`;"
                   f" log {job.log})")
    if follow:
        final = _guard(lambda: slurm_command.print_log(state, f"slurm:{job.slurm_id}", None, True, False))
        click.echo(f"trainsup: Slurm job {job.slurm_id} {final}", err=True)
        sys.exit(0 if final == "succeeded" else 1)


def _slurm_jobs_exist(state: StateDir) -> bool:
    """Whether `submit --slurm` ever ran here: without, `status` imports nothing of Slurm (nor pydantic)."""
    return (state.root / "slurm").is_dir()


def _slurm_job(key: str | None) -> Any:
    """The Slurm job JOB names, or None for a local one (commands.slurm.claim)."""
    if key is None or not (key.startswith("slurm:") or _slurm_jobs_exist(_state())):
        return None
    from trainsup.commands import slurm as slurm_command

    return _guard(lambda: slurm_command.claim(_state(), key))


def _submit_sweep(state: StateDir, spec: Path, sweep: tuple, fresh: bool, again: bool, delay: float | None,
                  as_json: bool) -> None:
    """Queue a sweep's combinations that have not succeeded and are not queued or running."""
    from trainsup.commands import common, submit as submit_command

    specs, text = sweep
    jobs = _guard(lambda: submit_command.submit_sweep(spec, specs, text, fresh, again, state, delay))
    if as_json:
        _print_json([job.to_json() for job in jobs])
        return
    for job in jobs:
        click.echo(f"queued {job.name} as job {job.id}" if job.queued
                   else f"skipped {job.name}: already {job.state} as {job.id}")
    queued = sum(job.queued for job in jobs)
    sweep_name = specs[0].sweep.name
    click.echo(f"sweep {sweep_name}: {queued} queued, {len(jobs) - queued} skipped"
               f" (`trainsup status --sweep {sweep_name}`{'' if queued == len(jobs) else '; --again queues all'})")
    if queued and not common.daemon_running(state):
        click.echo("the daemon is not running: the jobs start when it comes up (`trainsup daemon`).", err=True)


@app.command()
@click.argument("job", required=False, metavar="[JOB]", shell_complete=_complete_job)
@click.option("--watch", "-w", is_flag=True, help="Refresh in place like watch(1) until Ctrl+C.")
@click.option("--interval", "-n", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--sweep", metavar="NAME", help="One line per combination of the sweep NAME, and totals.")
@json_option
def status(job: str | None, watch: bool, interval: float, sweep: str | None, as_json: bool) -> None:
    """State, attempt, runtime, last exit reason, pid and progress of every job, or of JOB."""
    from trainsup import diskspace
    from trainsup.commands import status as status_command
    from trainsup.commands.table import use_colour

    state = _state()
    if sweep is not None:
        if job is not None or watch:
            raise click.UsageError("--sweep takes no JOB and no --watch")
        summary = _guard(lambda: status_command.sweep_summary(state, sweep))
        _print_json(summary) if as_json else status_command.render_sweep(summary)
        return
    if watch:
        if as_json:
            raise click.UsageError("--watch and --json do not go together")
        _guard(lambda: status_command.watch(state, job, interval, use_colour(sys.stdout)))
        return
    if (full := diskspace.notice(state)) is not None:
        click.echo(f"trainsup: {full}", err=True)
    if (slurm_job := _slurm_job(job)) is not None:
        from trainsup.commands import slurm as slurm_command

        found = _guard(lambda: slurm_command.detail(state, f"slurm:{slurm_job.slurm_id}"))
        _print_json(found) if as_json else slurm_command.render_detail(found)
    elif job is None:
        rows = _guard(lambda: status_command.job_rows(state))
        slurm_rows = []
        if _slurm_jobs_exist(state):
            from trainsup.commands import slurm as slurm_command

            slurm_rows = _guard(lambda: slurm_command.rows(state))
        if as_json:
            _print_json(rows + slurm_rows)
        else:
            status_command.render_table(rows, use_colour(sys.stdout))
            if slurm_rows:
                slurm_command.render_rows(slurm_rows)
    else:
        detail = _guard(lambda: status_command.job_detail(state, job))
        _print_json(detail) if as_json else status_command.render_detail(detail)


@app.command()
@job_argument
@click.option("--follow", "-f", is_flag=True, help="Keep streaming across restarts until the job ends.")
@click.option("--attempt", type=click.IntRange(min=1), help="Only this attempt.")
@click.option("--tail", "-n", type=click.IntRange(min=1), help="Only the last N lines.")
@click.option("--json", "as_json", is_flag=True,
              help='JSON lines: {"job": ID, "attempt": N, "line": TEXT} per log line, no separators.')
def logs(job: str, follow: bool, attempt: int | None, tail: int | None, as_json: bool) -> None:
    """stdout+stderr of every attempt, in order, one separator line per attempt.

    A job that has not started yet says why on stderr (exit 0); an --attempt the job
    does not have exits 1.
    """
    from trainsup.commands import logs as logs_command

    state = _state()
    if (slurm_job := _slurm_job(job)) is not None:
        from trainsup.commands import slurm as slurm_command

        if attempt is not None:
            raise click.UsageError("--attempt is for local jobs; a Slurm job's log is one file")
        final = _guard(lambda: slurm_command.print_log(state, f"slurm:{slurm_job.slurm_id}", tail, follow, as_json))
        if follow:
            sys.exit(0 if final == "succeeded" else 1)
        return
    if follow:
        final = _guard(lambda: logs_command.follow(state, job, tail, as_json=as_json))
        sys.exit(logs_command.exit_code_for(final))
    note = _guard(lambda: logs_command.print_logs(state, job, attempt, tail, as_json))
    if note:
        click.echo(f"trainsup: {note}", err=True)


def _control(job: str, action: str, as_json: bool, force: bool = False) -> None:
    """Say what the request will do; exit 1 (one sentence, nothing written) when it would do nothing."""
    from trainsup.commands import common, control

    state = _state()
    answer = _guard(lambda: control.request(state, job, action, force))
    if as_json:
        _print_json(answer.to_json())
    else:
        click.echo(answer.message)
    if answer.requested and not common.daemon_running(state):
        click.echo("the daemon is not running: the request applies when it comes up.", err=True)


@app.command()
@job_argument
@click.option("--force", is_flag=True, help="SIGKILL the job's processes now instead of waiting out its grace period.")
@json_option
def cancel(job: str, force: bool, as_json: bool) -> None:
    """Stop a job for good: its stop signal now, SIGKILL after its grace period (--force: SIGKILL now).

    Asked again while the job stops, it says how long is left before the SIGKILL.
    Exits 1 without asking the daemon when the job already succeeded or failed.
    A Slurm job is cancelled with scancel.
    """
    if (slurm_job := _slurm_job(job)) is not None:
        from trainsup.commands import slurm as slurm_command

        if force:
            raise click.UsageError("--force is for local jobs; Slurm kills what is left after its KillWait")
        answer = _guard(lambda: slurm_command.cancel(_state(), f"slurm:{slurm_job.slurm_id}"))
        _print_json(answer) if as_json else click.echo(answer["message"])
        return
    _control(job, "cancel", as_json, force)


@app.command()
@job_argument
@json_option
def restart(job: str, as_json: bool) -> None:
    """Queue a succeeded, failed or cancelled job again (it resumes from its checkpoint).

    Exits 1 without asking the daemon when the job has not finished.
    """
    _control(job, "restart", as_json)


@app.command()
@job_argument
@json_option
def hold(job: str, as_json: bool) -> None:
    """Keep a queued job, or one in backoff, from starting until `release`.

    Exits 1 without asking the daemon when the job runs or has finished.
    """
    _control(job, "hold", as_json)


@app.command()
@job_argument
@json_option
def release(job: str, as_json: bool) -> None:
    """Let a held job start again. Exits 1 when the job is not waiting to start."""
    _control(job, "release", as_json)


def _removed(outcome: Any, as_json: bool) -> None:
    """Print what `clean`/`remove` removed or would remove, and the bytes."""
    import time

    from trainsup.cleanup import format_bytes
    from trainsup.commands.table import format_table

    if as_json:
        _print_json(outcome.to_json())
        return
    if outcome.removals:
        click.echo(format_table(("ID", "NAME", "STATE", "FINISHED", "SIZE"), [
            (r.id, r.name, r.state, time.strftime("%Y-%m-%d %H:%M", time.localtime(r.finished_at)),
             format_bytes(r.bytes)) for r in outcome.removals]))
    for removal in outcome.removals:
        if removal.kept:
            click.echo(f"{removal.id}: {removal.kept}")
    size = f"{format_bytes(outcome.bytes)} ({outcome.bytes} bytes)"
    count = f"{len(outcome.removals)} finished job{'s' * (len(outcome.removals) != 1)}"
    if outcome.dry_run or not outcome.removals:
        click.echo(f"would remove {count}, freeing {size}" if outcome.removals else "no finished job to remove")
    elif not outcome.daemon_running:
        click.echo(f"asked the daemon to remove {count} ({size}); the daemon is not running: "
                   "it removes them when it comes up.")
    else:
        done = len(outcome.removals) - len(outcome.not_removed)
        click.echo(f"removed {done} of {count}, freed {format_bytes(outcome.freed)} ({outcome.freed} bytes)")
        if outcome.not_removed:
            click.echo(f"trainsup: not removed: {', '.join(outcome.not_removed)} (restarted meanwhile, or "
                       "the daemon has not got to them yet; see `trainsup show`).", err=True)
            sys.exit(1)


@app.command()
@click.option("--older-than", "older_than", metavar="DURATION", help="Finished more than this long ago (7d, 12h).")
@click.option("--all", "everything", is_flag=True, help="Every finished job.")
@click.option("--checkpoints", is_flag=True, help="Also delete the checkpoint dirs the job files named.")
@click.option("--dry-run", is_flag=True, help="List what would go and how many bytes; change nothing.")
@json_option
def clean(older_than: str | None, everything: bool, checkpoints: bool, dry_run: bool, as_json: bool) -> None:
    """Remove finished jobs: their rows, logs, run dirs and default checkpoint dirs.

    A checkpoint dir the job file named stays unless --checkpoints. The daemon does the
    removing; without a running daemon it happens when it comes up.
    """
    import time

    from trainsup.commands import clean as clean_command
    from trainsup.units import parse_duration

    if everything == (older_than is not None):
        raise click.UsageError("give --older-than DURATION or --all")
    try:
        age = parse_duration(older_than) if older_than is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--older-than'") from None
    _removed(_guard(lambda: clean_command.clean(_state(), age, checkpoints, dry_run, time.time())), as_json)


@app.command()
@job_argument
@click.option("--checkpoints", is_flag=True, help="Also delete the checkpoint dir the job file named.")
@click.option("--dry-run", is_flag=True, help="Show what would go and how many bytes; change nothing.")
@json_option
def remove(job: str, checkpoints: bool, dry_run: bool, as_json: bool) -> None:
    """Remove a finished job with its logs, run dirs and default checkpoint dir (exit 1 if it is not finished)."""
    from trainsup.commands import clean as clean_command

    _removed(_guard(lambda: clean_command.remove(_state(), job, checkpoints, dry_run)), as_json)


@app.command()
@job_argument
@click.option("--env", "record", is_flag=True,
              help="What ran: git commit and dirty tree, python, packages, GPUs, host (never variable values).")
@click.option("--attempt", type=click.IntRange(min=1), help="With --env: this attempt (default: the newest).")
@json_option
def show(job: str, record: bool, attempt: int | None, as_json: bool) -> None:
    """The job's spec and its timeline of events; with --env, the record of what ran."""
    from trainsup.commands import show as show_command

    if (slurm_job := _slurm_job(job)) is not None:
        from trainsup.commands import slurm as slurm_command

        if record:
            raise click.UsageError("--env is for local jobs; `trainsup show --env` inside the allocation's state dir")
        found = _guard(lambda: slurm_command.show(_state(), f"slurm:{slurm_job.slurm_id}"))
        _print_json(found) if as_json else slurm_command.render_show(found)
        return
    if record:
        found = _guard(lambda: show_command.job_record(_state(), job, attempt))
        _print_json(found) if as_json else show_command.render_record(found)
        return
    timeline = _guard(lambda: show_command.job_timeline(_state(), job))
    _print_json(timeline) if as_json else show_command.render(timeline)


@app.command()
@click.argument("first", metavar="JOB1", shell_complete=_complete_job)
@click.argument("second", metavar="JOB2", shell_complete=_complete_job)
@json_option
def diff(first: str, second: str, as_json: bool) -> None:
    """What changed between the runs of JOB1 and JOB2 (newest attempts; JOB:N for attempt N)."""
    from trainsup.commands import diff as diff_command

    found = _guard(lambda: diff_command.job_diff(_state(), first, second))
    _print_json(found) if as_json else diff_command.render(found)


@app.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script for SHELL, e.g. eval "$(trainsup completion bash)" in ~/.bashrc."""
    from trainsup.commands.completion import script

    click.echo(_guard(lambda: script(app, shell)))


@app.group(invoke_without_command=True)
@json_option
@click.pass_context
def group(ctx: click.Context, as_json: bool) -> None:
    """Groups of jobs: how many of each may run at once, how many run and wait (docs/queue.md)."""
    if ctx.invoked_subcommand is not None:
        return
    from trainsup.commands import group as group_command

    rows = _guard(lambda: group_command.group_rows(_state()))
    _print_json(rows) if as_json else group_command.render(rows)


@group.command("set")
@click.argument("name")
@click.argument("limit", type=click.IntRange(min=1, max=2**31 - 1))
@json_option
def group_set(name: str, limit: int, as_json: bool) -> None:
    """Let LIMIT jobs of group NAME run at once; the daemon applies it within a second."""
    from trainsup.commands import group as group_command

    _guard(lambda: group_command.set_limit(_state(), name, limit))
    if as_json:
        _print_json({"group": name, "limit": limit})
    else:
        click.echo(f"group {name}: up to {limit} at once")


@app.group()
def service() -> None:
    """Install trainsup as a systemd service."""


@service.command("install")
@click.option("--user/--system", "user_scope", default=True, help="A user unit (default) or the system template.")
@click.option("--as", "run_as", help="System scope: the user the daemon runs as.")
@click.option("--dry-run", is_flag=True, help="Print the unit and the systemctl commands only.")
@json_option
def service_install(user_scope: bool, run_as: str | None, dry_run: bool, as_json: bool) -> None:
    """Write the systemd unit for this installation, reload systemd, enable and start it."""
    from trainsup import service as service_module

    result = _guard(lambda: service_module.install("user" if user_scope else "system", run_as, dry_run=dry_run))
    if as_json:
        _print_json({"unit": result.unit_name, "path": str(result.unit_path), "commands": result.commands,
                     "warnings": result.warnings, "dry_run": result.dry_run})
        return
    if dry_run:
        click.echo(f"# {result.unit_path}\n{result.content}")
        for command in result.commands:
            click.echo("systemctl " + " ".join(command))
    else:
        click.echo(f"installed and started {result.unit_name} ({result.unit_path})")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)


@app.command()
@json_option
def doctor(as_json: bool) -> None:
    """Check the state dir, the daemon, NVML, the service, lingering and free disk."""
    from trainsup import doctor as doctor_module
    from trainsup.commands.common import open_store

    state = _state()
    try:
        store, database = open_store(state), None
    except DatabaseVersionError as exc:  # doctor reports it as a failed check instead of stopping
        store, database = None, doctor_module.Check("database", False, str(exc))
    checkpoint_dirs = sorted({Path(j.checkpoint_dir) for j in store.jobs() if not j.state.is_terminal}) if store else []
    checks = doctor_module.run_checks(state, checkpoint_dirs) + ([database] if database else [])
    if as_json:
        _print_json([{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks])
    else:
        for check in checks:
            mark = {True: "ok  ", False: "FAIL", None: "n/a "}[check.ok]
            click.echo(f"{mark}  {check.name:<14} {check.detail}")
    sys.exit(1 if any(c.ok is False for c in checks) else 0)


def main() -> None:
    try:
        code = app.main(prog_name="trainsup", standalone_mode=False)
    except BrokenPipeError:
        _exit_on_broken_pipe()
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.UsageError as exc:
        command = f" {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else ""
        print(f"trainsup: {exc.format_message().rstrip('.')} (see `trainsup{command} --help`).", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as exc:
        print(f"trainsup: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("TRAINSUP_DEBUG") or sys.argv[1:2] == ["daemon"]:
            raise
        print(f"trainsup: internal error: {exc.__class__.__name__}: {exc} (TRAINSUP_DEBUG=1 shows the traceback).",
              file=sys.stderr)
        sys.exit(70)
    sys.exit(code if isinstance(code, int) else 0)
