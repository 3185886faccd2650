"""Seams for unit tests of the daemon's parts: a clock, a launcher and a machine without processes.

`World` wires a real SQLite store and a real state dir to a `FakeLauncher` and a
`FakeClock`, so intake, recovery and attempt endings run without starting anything.
The fake launcher writes the same files the real monitor would (`started.json`,
`ended.json`) when a test says the job started or ended.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trainsup.contracts import ENDED_FILE, EXIT_FILE, STARTED_FILE, EndedRecord, TrainerExit
from trainsup.durable import write_json_atomic
from trainsup.gpu.probe import NoGpuProbe
from trainsup.jobs import inbox
from trainsup.jobs.requests import Control, ControlRequest, Submission
from trainsup.jobs.spec import parse_spec
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Job, Store
from trainsup.paths import StateDir
from trainsup.supervisor.attempts import Attempts
from trainsup.supervisor.gpus import GpuBook
from trainsup.supervisor.intake import Intake
from trainsup.supervisor.launcher import LaunchPlan, MonitorHandle, write_launch_file
from trainsup.supervisor.standby import Standby
from trainsup.supervisor.standby_process import python_entry

T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = T0):
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - T0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class FakeLauncher:
    """Monitors that exist only as pids in a dict; the run dir files are real."""

    plans: list[LaunchPlan] = field(default_factory=list)
    alive: dict[int, bool] = field(default_factory=dict)
    stopped: list[int] = field(default_factory=list)
    orphans_killed: list[Path] = field(default_factory=list)
    findable: dict[str, tuple[int, float]] = field(default_factory=dict)
    fail_with: OSError | None = None
    next_pid: int = 40_000
    standbys: list[Standby] = field(default_factory=list)  # every standby started
    activated: list[Standby] = field(default_factory=list)  # those that became an attempt

    def start(self, plan: LaunchPlan) -> MonitorHandle:
        if self.fail_with is not None:
            raise self.fail_with
        write_launch_file(plan)
        self.plans.append(plan)
        pid = self.next_pid
        self.next_pid += 1
        self.alive[pid] = True
        return MonitorHandle(pid, float(pid))

    def attach(self, pid: int, started: float | None) -> MonitorHandle:
        return MonitorHandle(pid, started)

    def is_alive(self, pid: int | None, started: float | None) -> bool:
        return pid is not None and self.alive.get(pid, False)

    def find(self, run_dir: str) -> tuple[int, float] | None:
        return self.findable.get(run_dir)

    def stop(self, monitor: MonitorHandle) -> None:
        self.stopped.append(monitor.pid)

    def kill_orphaned_job(self, run_dir: Path) -> None:
        self.orphans_killed.append(run_dir)

    def start_standby(self, plan: LaunchPlan, preload: list[str] | None) -> Standby | None:
        if python_entry(plan.command) is None:
            return None
        pid = self.next_pid
        self.next_pid += 1
        self.alive[pid] = True
        standby = Standby(plan.job.id, plan.number, plan.run_dir, pid, float(pid), control_fd=None)
        self.standbys.append(standby)
        return standby

    def activate(self, standby: Standby, plan: LaunchPlan) -> MonitorHandle:
        if not self.alive.get(standby.pid):
            raise OSError("the standby is gone")
        write_launch_file(plan)
        self.plans.append(plan)
        self.activated.append(standby)
        return MonitorHandle(standby.pid, standby.started)


@dataclass
class World:
    """A state dir, a store, and the daemon's parts wired to fakes."""

    state: StateDir
    store: Store
    clock: FakeClock
    launcher: FakeLauncher
    attempts: Attempts
    intake: Intake
    boot_id: str = "boot-1"

    @classmethod
    def make(cls, root: Path, boot_id: str = "boot-1", store: Store | None = None) -> "World":
        state = StateDir(root / "state")
        state.ensure()
        store = store or Store.open(state.db)
        clock, launcher = FakeClock(), FakeLauncher()
        attempts = Attempts(store, state, boot_id, GpuBook(NoGpuProbe(), clock), launcher, clock, random.Random(0))
        return cls(state, store, clock, launcher, attempts, Intake(store, state, attempts), boot_id)

    def reborn(self, boot_id: str | None = None) -> "World":
        """The same state dir and database seen by a new daemon (after a crash or a reboot)."""
        world = World.make(self.state.root.parent, boot_id or self.boot_id, self.store)
        world.clock.now = self.clock.now
        world.launcher = self.launcher
        world.attempts.launcher = self.launcher
        return world

    # --- requests, as the CLI drops them -----------------------------------------------

    def submit(self, name: str = "job", **fields) -> str:
        spec_fields = {"name": name, "command": "true", "checkpoint_dir": str(self.state.root / "ckpt" / name),
                       "workdir": str(self.state.root), **fields}
        text = yaml.safe_dump(spec_fields)
        spec = parse_spec(text, "job.yaml")
        job_id = f"{len(self.store.jobs()):08x}"
        submission = Submission(job_id=job_id, spec=spec, spec_text=text, spec_path=str(self.state.root / "job.yaml"),
                                environment={"PATH": "/usr/bin:/bin"}, submitted_at=self.clock.time())
        inbox.drop(self.state.inbox, submission.model_dump(mode="json", by_alias=True))
        self.intake.ingest_all(self.clock.time())
        return job_id

    def control(self, job_id: str, action: Control) -> None:
        request = ControlRequest(job_id=job_id, action=action, requested_at=self.clock.time())
        inbox.drop(self.state.inbox, request.model_dump(mode="json"))
        self.intake.ingest_all(self.clock.time())

    # --- the daemon's steps ---------------------------------------------------------------

    def start(self, job_id: str) -> LaunchPlan:
        self.attempts.start(self.store.job(job_id), [], self.clock.time())
        return self.launcher.plans[-1]

    def poll(self) -> None:
        self.attempts.poll(self.clock.time())

    def run_once(self, job_id: str, uptime: float = 5.0, **ended) -> LaunchPlan:
        """One attempt of the job: started, seen running for `uptime` s, ended as `ended` says."""
        plan = self.start(job_id)
        self.job_started(plan)
        self.poll()
        self.clock.advance(uptime)
        self.job_ended(plan, **ended)
        self.poll()
        return plan

    def end_backoff(self, job_id: str) -> None:
        """The backoff is over (what the daemon's `_release_backoffs` does when it is due)."""
        if self.job(job_id).state is JobState.BACKOFF:
            self.store.set_state(job_id, JobState.BACKOFF, JobState.QUEUED, self.clock.time(), "backoff_over", "due")

    # --- what the monitor and the job would write -----------------------------------------

    def job_started(self, plan: LaunchPlan, job_pid: int = 50_000) -> None:
        write_json_atomic(plan.run_dir / STARTED_FILE, {"job_pid": job_pid, "pgid": job_pid,
                                                        "monitor_pid": 0, "started_at": self.clock.time()})

    def job_ended(self, plan: LaunchPlan, exit_code: int | None = None, signal: int | None = None,
                  log: str = "", trainer_exit: TrainerExit | None = None, monitor_exits: bool = True,
                  **record) -> None:
        if log:
            with open(plan.log_path, "a") as handle:
                handle.write(log)
        if trainer_exit is not None:
            write_json_atomic(plan.run_dir / EXIT_FILE, trainer_exit.to_json())
        ended = EndedRecord(exit_code=exit_code, signal=signal, ended_at=self.clock.time(), **record)
        write_json_atomic(plan.run_dir / ENDED_FILE, ended.to_json())
        if monitor_exits:
            self.launcher.alive[self.monitor_pid(plan)] = False

    def monitor_pid(self, plan: LaunchPlan) -> int:
        return self.store.attempts(plan.job.id)[plan.number - 1].monitor_pid

    # --- reading back ----------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        return self.store.job(job_id)

    def events(self, job_id: str) -> list[str]:
        return [event.kind for event in self.store.events(job_id)]
