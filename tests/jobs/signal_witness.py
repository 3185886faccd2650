"""A job that writes down which signals reach it and its child, for the `stop_signal` test.

`signal_witness.py DIR`: the main process and one child each write `<who> got <SIGNAL>`
into DIR/<who> for SIGINT, SIGTERM, SIGUSR1 and SIGHUP. DIR/ready appears once both
handle them. The main process answers the first signal the way a trainer answers a
stop: it waits 0.5 s (so a signal meant for the whole group would reach the child too),
then ends the child itself and exits 75.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
out = Path(sys.argv[1])
who = sys.argv[2] if len(sys.argv) > 2 else "main"
got: list[str] = []


def note(signum, _frame) -> None:
    got.append(signal.Signals(signum).name)
    with open(out / who, "a") as handle:
        handle.write(f"{who} got {signal.Signals(signum).name}\n")


for watched in WATCHED:
    signal.signal(watched, note)
if who == "child":
    print("child ready", flush=True)
    while True:
        time.sleep(0.05)

child = subprocess.Popen([sys.executable, __file__, str(out), "child"], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "child ready"
(out / "ready").write_text(f"{os.getpid()} {child.pid}")
print("ready", flush=True)
while not got:
    time.sleep(0.05)
time.sleep(0.5)
child.kill()
child.wait()
sys.exit(75)
