"""A job for the warm-standby tests: it says how it was started, then waits.

Prints one JSON line: the attempt, pid, argv, `__name__`, sys.path[0], whether its
preloaded module `standby_lib` was already imported before the script ran (it is, in a
standby), that module's VERSION, and the time. SIGTERM → prints "stopping" and exits 75.
Attempt `--exit-on` exits with `--exit-code` at once.
"""

import argparse
import json
import os
import signal
import sys
import time

was_preloaded = "standby_lib" in sys.modules
import standby_lib  # noqa: E402  (after the check above, on purpose)

parser = argparse.ArgumentParser()
parser.add_argument("--exit-on", type=int, default=0)
parser.add_argument("--exit-code", type=int, default=3)
parser.add_argument("--seconds", type=float, default=120.0)
args = parser.parse_args()

attempt = int(os.environ.get("TRAINSUP_ATTEMPT", "0"))
print(json.dumps({
    "attempt": attempt, "pid": os.getpid(), "argv": sys.argv, "name": __name__, "path0": sys.path[0],
    "preloaded": was_preloaded, "version": standby_lib.VERSION, "time": time.time(),
    "run_dir": os.environ.get("TRAINSUP_RUN_DIR"), "secret": os.environ.get("STANDBY_TEST_VALUE"),
}), flush=True)


def stop(signum, frame):
    print("stopping", flush=True)
    sys.exit(75)


signal.signal(signal.SIGTERM, stop)
if attempt == args.exit_on:
    sys.exit(args.exit_code)
time.sleep(args.seconds)
