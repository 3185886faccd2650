"""The attempt monitor: a tiny process that owns one attempt of a job.

Like podman's conmon. The daemon starts it in a new session; it takes the job's
checkpoint-dir lock, starts the job as its child in a process group of its own
(stdout+stderr straight into the attempt log), becomes a child subreaper so no
descendant escapes, and when the job ends it reaps every descendant and writes
`ended.json` atomically into the run dir. It outlives the daemon. Stdlib only.

    python -m trainsup.supervisor.monitor RUN_DIR

RUN_DIR/launch.json (`contracts.LaunchRecord`) holds the command, its cwd and env, the
log, the lock, the stop signal, the grace period and the cgroup. SIGTERM to the monitor =
stop the job: its `stop_signal` to the job's main process only (its children, e.g. DataLoader workers or torchrun's workers,
are its business), SIGKILL to the whole tree after the grace period.

A warm standby for the attempt that would follow the running one:

    python -m trainsup.supervisor.monitor --standby STANDBY_DIR RUN_DIR CONTROL_FD

starts the job's interpreter on `standby_process.py` with what STANDBY_DIR/standby.json
says (the job's interpreter and options, cwd, environment, what to preload) and waits.
A line `activate` on CONTROL_FD (a pipe from the daemon) means RUN_DIR/launch.json is
written: from then on it is that attempt's monitor, and the waiting process becomes the
job unless it says it is stale. End of file on CONTROL_FD (the daemon dropped the
standby, or died) ends it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from trainsup.contracts import (
    ENDED_FILE,
    LAUNCH_FILE,
    MONITOR_LOG,
    STANDBY_DIR_PREFIX,
    STANDBY_FILE,
    STANDBY_READY_FILE,
    STARTED_FILE,
    EndedRecord,
    LaunchRecord,
    open_lock_file,
    read_json,
    read_launch,
    try_lock,
)
from trainsup.durable import make_dirs, write_json_atomic

PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
LOCK_POLL_S = 0.1
LEFTOVER_GRACE_S = 3.0
DISK_FULL_RETRY_S = 1.0
STANDBY_LOG = "standby.log"  # what the standby process printed while it preloaded
STANDBY_READY_WAIT_S = 120.0  # a standby still importing is still ahead of a fresh start
STANDBY_REPLY_WAIT_S = 10.0
STANDBY_PROCESS = Path(__file__).with_name("standby_process.py")


class AttemptMonitor:
    def __init__(self, run_dir: Path, standby: bool = False):
        self.run_dir = run_dir
        self.launch: LaunchRecord | None = None if standby else read_launch(run_dir)  # a standby's: when activated
        self.warm: WarmProcess | None = None  # a standby's process, until it becomes the job
        self.standby_note: str | None = None  # for started.json: whether the standby became the job
        self.activated_at: float | None = None  # when the daemon made this standby the attempt
        self.cgroup: str | None = None  # the memory cgroup this monitor is in (a standby joins early)
        self.standby_dir: Path | None = None  # a standby's own dir, removed once the job runs
        self.stop_requested_at: float | None = None
        self.killed_after_grace = False
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_read = wake_read
        signal.set_wakeup_fd(wake_write)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # The daemon starts us with stop signals blocked so that one sent while we
        # start up is not lost; it is delivered now, to the handler.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.warm is not None:  # never handed over: the job did not start
                self.warm.kill()
            self._remove_standby_dir()

    def _remove_standby_dir(self) -> None:
        if self.standby_dir is not None:
            shutil.rmtree(self.standby_dir, ignore_errors=True)  # open files (its log) live on
            self.standby_dir = None

    def _run(self) -> int:
        _become_subreaper()
        if self.launch is None:
            self._record_end(exit_code=None, signum=None, spawn_error=f"no valid {LAUNCH_FILE} in {self.run_dir}")
            return 0
        if self.launch.cgroup != self.cgroup:
            self.join_cgroup(self.launch.cgroup, [self.warm.process.pid] if self.warm else [])
        try:
            lock_fd = self._acquire_lock()
        except OSError as exc:  # e.g. a `.lock` planted as a symlink: one sentence, no retry can fix it
            self._record_end(exit_code=None, signum=None, spawn_error=f"cannot lock the checkpoint dir: {exc}")
            return 0
        if lock_fd is None or self.stop_requested_at is not None:
            self._record_end(exit_code=None, signum=None, never_started=True)
            return 0
        try:
            job = self._spawn(lock_fd)
        except OSError as exc:
            self._record_end(exit_code=None, signum=None, spawn_error=f"cannot start {self.launch.command[0]!r}: {exc.strerror or exc}")
            return 0
        status = self._wait(job)
        self._reap_leftovers(job.pid)
        os.close(lock_fd)
        exit_code = os.waitstatus_to_exitcode(status)
        if exit_code < 0:
            self._record_end(exit_code=None, signum=-exit_code)
        else:
            self._record_end(exit_code=exit_code, signum=None)
        return 0

    def _acquire_lock(self) -> int | None:
        """Hold the checkpoint-dir lock so that two attempts of one job never overlap."""
        lock_path = Path(self.launch.lock_path)
        make_dirs(lock_path.parent, mode=0o755)  # the job's checkpoint dir: durable, never group/other-writable
        fd = open_lock_file(lock_path)
        while not try_lock(fd):
            if self.stop_requested_at is not None:
                os.close(fd)
                return None
            time.sleep(LOCK_POLL_S)
        return fd

    def _spawn(self, lock_fd: int) -> subprocess.Popen:
        log = os.open(self.launch.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            job = self._hand_over(log, lock_fd) if self.warm is not None else None
            job = job or subprocess.Popen(
                self.launch.command,
                cwd=self.launch.cwd,
                env=self.launch.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                process_group=0,
                # The job inherits the lock: it stays held while the job lives,
                # even if this monitor is killed.
                pass_fds=(lock_fd,),
                restore_signals=True,
            )
        finally:
            os.close(log)
        self._write_record(
            STARTED_FILE,
            {"job_pid": job.pid, "pgid": job.pid, "monitor_pid": os.getpid(), "started_at": time.time(),
             "job_created_at": _create_time(job.pid), "standby": self.standby_note,
             "activated_at": self.activated_at},
        )
        self._remove_standby_dir()  # now, not before the hand-over, which it would delay
        return job

    def join_cgroup(self, cgroup: str | None, pids: list[int]) -> None:
        """Enter the job's memory cgroup before starting the job, so the job starts inside it
        (with a standby process started before we joined, if any)."""
        if not cgroup:
            return
        try:
            for pid in [os.getpid(), *pids]:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as handle:
                    handle.write(str(pid))
        except OSError as exc:
            print(f"trainsup monitor: cannot join cgroup {cgroup}: {exc}", file=sys.stderr)
            return
        self.cgroup = cgroup

    # --- a warm standby -------------------------------------------------------

    def wait_for_activation(self, control_fd: int) -> bool:
        """As a standby: True once the daemon activates us, False if it drops us (or dies)."""
        while self.stop_requested_at is None:
            watched = [self.wake_read, control_fd] + ([self.warm.sock] if self.warm and self.warm.sock else [])
            readable, _, _ = select.select(watched, [], [], 1.0)
            self._sleep(0)
            if self.warm is not None:
                if self.warm.sock in readable:
                    self.warm.read_messages()
                self.warm.reap()
            if control_fd in readable:
                line = os.read(control_fd, 64)
                os.close(control_fd)
                self.activated_at = time.time()
                return line.startswith(b"activate")
        return False

    def activate(self) -> None:
        """Become the monitor of `run_dir`, whose launch file the daemon just wrote."""
        log = os.open(self.run_dir / MONITOR_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        self.launch = read_launch(self.run_dir)

    def _hand_over(self, log_fd: int, lock_fd: int) -> subprocess.Popen | None:
        """The standby becomes the job; None (and why, in `standby_note`) if it cannot."""
        warm, self.warm = self.warm, None
        why = warm.wait_ready(STANDBY_READY_WAIT_S, lambda: self.stop_requested_at is not None)
        if why is None:
            payload = {"command": self.launch.command, "cwd": self.launch.cwd, "env": self.launch.env}
            why = warm.activate(payload, [log_fd, lock_fd])
        if why is None:
            self.standby_note = "used"
            return warm.process
        self.standby_note = f"not used: {why}"
        warm.kill()
        return None

    def _wait(self, job: subprocess.Popen) -> int:
        """Wait for the job's main process; handle stop requests meanwhile."""
        sent_stop = False
        kill_deadline: float | None = None
        while True:
            status = self._reap_children(job.pid)
            if status is not None:
                job.returncode = 0  # reaped here; keep Popen from waiting again
                return status
            if self.stop_requested_at is not None and not sent_stop:
                sent_stop = True
                _signal_process(job.pid, signal.Signals[self.launch.stop_signal or "SIGTERM"])
                kill_deadline = self.stop_requested_at + self.launch.grace_period
            if kill_deadline is not None and time.monotonic() >= kill_deadline and not self.killed_after_grace:
                self.killed_after_grace = True
                _kill_tree(job.pid, signal.SIGKILL)
            timeout = 1.0 if kill_deadline is None else max(0.0, min(1.0, kill_deadline - time.monotonic()))
            self._sleep(timeout)

    def _sleep(self, timeout: float) -> None:
        select.select([self.wake_read], [], [], timeout)
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass

    @staticmethod
    def _reap_children(main_pid: int) -> int | None:
        """Reap every exited child; return the main process's wait status if it exited."""
        main_status = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return main_status
            if pid == 0:
                return main_status
            if pid == main_pid:
                main_status = status

    def _reap_leftovers(self, main_pid: int) -> None:
        """Descendants that outlive the main process are stopped, then killed."""
        _signal_group(main_pid, signal.SIGTERM)
        _kill_tree(main_pid, signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while _live_descendants() or _group_alive(main_pid):
            if time.monotonic() >= deadline:
                _signal_group(main_pid, signal.SIGKILL)
                _kill_tree(main_pid, signal.SIGKILL)
            self._reap_children(main_pid)
            self._sleep(0.05)
        self._reap_children(main_pid)

    def _record_end(
        self, exit_code: int | None, signum: int | None, spawn_error: str | None = None, never_started: bool = False
    ) -> None:
        record = EndedRecord(
            exit_code=exit_code, signal=signum, ended_at=time.time(), never_started=never_started,
            spawn_error=spawn_error, stop_requested=self.stop_requested_at is not None,
            killed_after_grace=self.killed_after_grace,
        )
        self._write_record(ENDED_FILE, record.to_json())

    def _write_record(self, name: str, payload: dict) -> None:
        """Write a record the daemon reads; on a full disk, wait for space rather than lose it.

        While this monitor lives the daemon waits for its record, so a job's end that
        comes while the disk is full is recorded once space is back, not taken as lost.
        """
        while True:
            try:
                write_json_atomic(self.run_dir / name, payload)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
            self._sleep(DISK_FULL_RETRY_S)


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init, the process group still covers most


class WarmProcess:
    """The standby process (`standby_process.py`) this monitor started and talks to."""

    def __init__(self, process: subprocess.Popen, sock: socket.socket, directory: Path):
        self.process = process
        self.directory = directory
        self.sock: socket.socket | None = sock
        self.ready = False
        self.failure: str | None = None
        self.buffer = b""

    @classmethod
    def start(cls, standby_dir: Path, plan: dict) -> "WarmProcess":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log = os.open(standby_dir / STANDBY_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = subprocess.Popen(
                [*plan["interpreter"], str(STANDBY_PROCESS), str(theirs.fileno()),
                 json.dumps(plan["preload"]), json.dumps(plan["command"])],
                cwd=plan["cwd"], env=plan["env"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                process_group=0, pass_fds=(theirs.fileno(),), restore_signals=True,
            )
        finally:
            os.close(log)
            theirs.close()
        return cls(process, ours, standby_dir)

    def read_messages(self) -> None:
        """Take what the standby said: `ready {…}` or `failed …`; end of stream: it is gone."""
        data = self.sock.recv(65536) if self.sock else b""
        if not data:
            self._lost("it exited while it waited")
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            text = line.decode(errors="replace")
            if text.startswith("ready"):
                self.ready = True
                self._note_ready(text[6:])  # first: whoever reads the log line finds ready.json
                print(f"trainsup monitor: standby ready: {text[6:]}", flush=True)
            else:
                self._lost(text.removeprefix("failed ").strip() or "it failed")

    def _note_ready(self, said: str) -> None:
        """`ready.json` for `trainsup status`: what is preloaded, since when."""
        try:
            details = json.loads(said)
        except ValueError:
            details = {}
        number = self.directory.name.removeprefix(STANDBY_DIR_PREFIX)
        try:
            write_json_atomic(self.directory / STANDBY_READY_FILE, {
                "pid": self.process.pid, "attempt": int(number) if number.isdigit() else None,
                "preloaded": details.get("preloaded", []), "problems": details.get("problems", []),
                "ready_at": time.time()})
        except OSError as exc:  # status only: never a reason to lose the standby
            print(f"trainsup monitor: cannot write {STANDBY_READY_FILE}: {exc}", flush=True)

    def reap(self) -> None:
        if self.failure is None and self.process.poll() is not None:
            self._lost(f"it exited with status {self.process.returncode} while it waited")

    def wait_ready(self, timeout: float, give_up: Callable[[], bool]) -> str | None:
        """None once ready; else why not (it failed, it took too long, a stop came)."""
        deadline = time.monotonic() + timeout
        while not self.ready and self.failure is None:
            if give_up():
                return "a stop was requested"
            left = deadline - time.monotonic()
            if left <= 0:
                return "it was still preloading"
            readable, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if readable:
                self.read_messages()
        return self.failure

    def activate(self, payload: dict, fds: list[int]) -> str | None:
        """Send the attempt's command and environment with its log and lock; None if it took them."""
        try:
            data = json.dumps(payload).encode()
            socket.send_fds(self.sock, [data[:65536]], fds)
            self.sock.sendall(data[65536:])
            self.sock.shutdown(socket.SHUT_WR)
            reply = self._reply(STANDBY_REPLY_WAIT_S)
        except OSError as exc:
            return f"it could not be reached ({exc.strerror or exc})"
        if reply == "go":
            self.sock.close()
            self.sock = None
            return None
        return reply.removeprefix("stale ") or "it did not answer"

    def _reply(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer and time.monotonic() < deadline:
            readable, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                break
            data = self.sock.recv(65536)
            if not data:
                break
            self.buffer += data
        return self.buffer.partition(b"\n")[0].decode(errors="replace").strip()

    def _lost(self, why: str) -> None:
        self.failure = self.failure or why
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def kill(self) -> None:
        _signal_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _create_time(pid: int) -> float | None:
    """When `pid` started, in seconds since the epoch, as `psutil.Process.create_time` says it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rpartition(b")")[2].split()
        with open("/proc/stat", "rb") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith(b"btime"))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _signal_process(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _kill_tree(main_pid: int, signum: int) -> None:
    """Signal the job's process group and every descendant of this monitor."""
    _signal_group(main_pid, signum)
    for pid in _live_descendants():
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _live_descendants() -> list[int]:
    """This monitor's live descendants. Without a child (reaped or not) there are none, and
    the scan of /proc, which costs milliseconds on a busy machine, is skipped."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return []
    return _descendants(os.getpid())


def _descendants(root: int) -> list[int]:
    """Live (non-zombie) descendants of `root`, from /proc."""
    children: dict[int, list[int]] = {}
    zombies: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        state, ppid = fields[0], int(fields[1])
        children.setdefault(ppid, []).append(int(entry))
        if state in (b"Z", b"X"):
            zombies.add(int(entry))
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid not in zombies:
            found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def run_standby(standby_dir: Path, run_dir: Path, control_fd: int) -> int:
    """Wait as a standby; run the attempt once activated. The standby dir goes either way."""
    _become_subreaper()
    monitor = AttemptMonitor(run_dir, standby=True)  # first: its process must not inherit blocked stop signals
    try:
        plan = read_json(standby_dir / STANDBY_FILE) or {}  # missing: WarmProcess.start raises KeyError
        monitor.join_cgroup(plan.get("cgroup"), [])  # now, not at activation: its process starts inside
        monitor.warm = WarmProcess.start(standby_dir, plan)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"trainsup monitor: no standby process: {exc}", flush=True)
        monitor.standby_note = "not used: it could not be started"
    if not monitor.wait_for_activation(control_fd):
        if monitor.warm is not None:
            monitor.warm.kill()
        shutil.rmtree(standby_dir, ignore_errors=True)
        return 0
    monitor.activate()
    monitor.standby_dir = standby_dir
    return monitor.run()


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--standby":
        return run_standby(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    if len(sys.argv) != 2:
        print("usage: python -m trainsup.supervisor.monitor RUN_DIR", file=sys.stderr)
        return 2
    return AttemptMonitor(Path(sys.argv[1])).run()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The daemon learns of the end when this process exits (its pidfd): skip the
    # interpreter's teardown, which only frees memory, so a restart starts sooner.
    os._exit(code)
