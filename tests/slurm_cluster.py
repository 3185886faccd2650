"""A real single-node Slurm cluster in a test's own directory: munged, slurmctld, slurmd.

Everything lives under one folder (key, sockets, pid files, logs, state, spool), on free
ports, with a `slurm.conf` that `SLURM_CONF` points the client commands at. Needs root
(slurmd starts jobs as their users) and Debian's `slurmctld`, `slurmd`, `slurm-client`
and `munge` packages; `missing()` says what is absent, for a skip reason.

    cluster = SlurmCluster(tmp_dir).start()
    env = {**os.environ, **cluster.env}   # sbatch, squeue, scontrol ... now talk to it
    cluster.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# Slurm's states of a job that ended.
FINISHED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                             "BOOT_FAIL", "DEADLINE"})
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
SBIN = ("/usr/sbin", "/sbin")


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path=os.pathsep.join(SBIN))


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None when it can."""
    absent = [p for p in PROGRAMS if _which(p) is None]
    if absent:
        return (f"Slurm tests need {', '.join(absent)} (Debian: apt-get install slurmctld slurmd slurm-client"
                " munge; .ci/run installs them)")
    if os.geteuid() != 0:
        return "Slurm tests need root: slurmd starts each job as its user"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SlurmCluster:
    """One controller and one node named after this host, `cpus` slots, a default partition `debug`.

    `requeue_delay` (Slurm's cred_expire) is how long a requeued job waits before it is eligible again.
    """

    def __init__(self, root: Path, cpus: int = 4, requeue_delay: int = 10):
        self.root = root
        self.cpus = cpus
        self.requeue_delay = requeue_delay
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.sock"
        self.processes: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        for name in ("munge", "state", "spool", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # slurmd runs job scripts as their users; they read slurm.conf
        self._start_munge()
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(self._config(ctld_port, slurmd_port))
        self.conf.chmod(0o644)
        env = {**os.environ, **self.env}
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.root / "log" / f"{daemon}.out", "ab")
            self.processes.append(subprocess.Popen([_which(daemon), "-D", "-f", str(self.conf)], env=env,
                                                   stdout=log, stderr=log, start_new_session=True))
            log.close()
        self._wait_idle(timeout)
        return self

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        munge.chmod(0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        log = open(self.root / "log" / "munged.out", "ab")
        process = subprocess.Popen(
            [_which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
             f"--pid-file={munge / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
             f"--seed-file={munge / 'munged.seed'}"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.processes.append(process)
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start: {self._tail('munged.out')}{self._tail('munged.log')}")
            time.sleep(0.05)
        # The socket's folder must let job users reach it (slurmstepd talks to munged as them).
        munge.chmod(0o755)

    def _config(self, ctld_port: int, slurmd_port: int) -> str:
        root = self.root
        return "\n".join([
            "ClusterName=trainsup-test",
            f"SlurmctldHost={self.host}(127.0.0.1)",  # no name lookup needed
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire is also how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.requeue_delay}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "SlurmdParameters=config_overrides",  # CPUs as configured, even beyond the host's cores
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=2",  # a requeued job starts once eligible, not up to 60 s later
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobRequeue=1",
            "MinJobAge=600",
            "KillWait=30",
            "OverTimeLimit=0",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "MessageTimeout=20",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        env = {**os.environ, **self.env}
        state = ""
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a Slurm daemon exited at start: {self.logs()}")
            result = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%T"], env=env, capture_output=True,
                                    text=True, timeout=30)
            state = result.stdout.strip() or result.stderr.strip()
            if result.returncode == 0 and state.rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node did not come up ({state}): {self.logs()}")

    def _tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "log" / name).read_text(errors="replace").splitlines()[-lines:]) + "\n"
        except OSError:
            return ""

    def logs(self) -> str:
        return "".join(f"--- {name}\n{self._tail(name)}" for name in (
            "munged.out", "munged.log", "slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log"))

    def stop(self) -> None:
        """Cancel what still runs, then stop the daemons (slurmd, slurmctld, munged)."""
        env = {**os.environ, **self.env}
        subprocess.run([_which("scancel"), "--user=root"], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 45  # KillWait (30 s) and the jobs' own stop paths: slurmstepd
        while time.monotonic() < deadline:  # outlives slurmd, so wait for the jobs to be gone first
            queue = subprocess.run([_which("squeue"), "-h", "-o", "%i"], env=env, capture_output=True, text=True,
                                   timeout=30)
            if queue.returncode != 0 or not queue.stdout.strip():
                break
            time.sleep(0.5)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(5)
        self.processes = []
