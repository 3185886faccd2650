"""The demo: a real training job under the daemon, SIGKILLed mid-run, resumed, finished.

Uses a private state dir (.demo/state) so it never touches your real queue.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / ".demo"
TRAINSUP = str(Path(sys.executable).parent / "trainsup")
JOB = ROOT / "jobs" / "quickstart" / "job.yaml"


def say(text: str) -> None:
    print(f"\n\033[1m▶ {text}\033[0m" if sys.stdout.isatty() else f"\n> {text}", flush=True)


def trainsup(*args: str, capture: bool = False) -> str:
    result = subprocess.run([TRAINSUP, *args], env=ENV, text=True, capture_output=capture, check=True)
    return result.stdout if capture else ""


def status(job: str) -> dict:
    return json.loads(trainsup("status", job, "--json", capture=True))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}; see {DEMO / 'daemon.log'}")


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    checkpoints = JOB.parent / "checkpoints"
    shutil.rmtree(checkpoints, ignore_errors=True)

    say(f"trainsup submit {JOB.relative_to(ROOT)}   (the daemon is not running yet: the job waits in the inbox)")
    job = json.loads(trainsup("submit", str(JOB), "--json", capture=True))["id"]
    trainsup("status")

    say("trainsup daemon   (in the background; logs in .demo/daemon.log)")
    log = open(DEMO / "daemon.log", "wb")
    daemon = subprocess.Popen([TRAINSUP, "daemon"], env=ENV, stdout=log, stderr=log)
    try:
        pid = wait_for(lambda: status(job).get("pid"), 60, "the job to start")
        wait_for(lambda: len(list(checkpoints.glob("step-*"))) >= 2, 120, "two checkpoints")
        trainsup("status")
        say(f"kill -9 {pid}   (the training process dies mid-run, as in an OOM kill or a crash)")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(status(job)["attempts"]) >= 2, 60, "the restart")
        say("the daemon restarted it from its newest checkpoint:")
        trainsup("status")
        final = wait_for(lambda: (s := status(job))["state"] in ("succeeded", "failed") and s, 300, "the job to end")
        say(f"trainsup logs {job} --attempt 2   (its first lines: where it resumed)")
        print("\n".join(trainsup("logs", job, "--attempt", "2", capture=True).splitlines()[:4]))
        say(f"trainsup logs {job} --tail 6")
        trainsup("logs", job, "--tail", "6")
        say(f"trainsup show {job}")
        trainsup("show", job)
        say(f"the job {final['state']} after {len(final['attempts'])} attempts")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        shutil.rmtree(checkpoints, ignore_errors=True)
    sys.exit(0 if final["state"] == "succeeded" else 1)


ENV = {**os.environ, "TRAINSUP_HOME": str(DEMO / "state"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

if __name__ == "__main__":
    main()
