"""A stdlib-only job for the service tests: counts steps, checkpoints each one as a
step-N dir, and reacts to SIGTERM the way the test asks.

    --on-term checkpoint   finish the current step, print "checkpointed at step N", exit 75
    --on-term ignore       SIGTERM is ignored (the supervisor must SIGKILL it after grace)
    --on-term exit         record the end and exit 1 at once
    --record DIR           write DIR/attempt-<n>-<pid>.json: {attempt, pid, start, end}
                           (end is filled in just before a clean exit, 75 included)
    --fail-attempt-1 CODE  attempt 1 exits CODE after its last step (attempt 2 succeeds)
    --print-env            print the environment (KEY=value lines) first
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import step_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--interval", type=float, default=0.1)
parser.add_argument("--on-term", choices=("checkpoint", "ignore", "exit"), default="checkpoint")
parser.add_argument("--record", default=None)
parser.add_argument("--fail-attempt-1", type=int, default=None)
parser.add_argument("--print-env", action="store_true")
args = parser.parse_args()

attempt = os.environ.get("TRAINSUP_ATTEMPT", "0")
record = None
if args.record:
    record = Path(args.record) / f"attempt-{attempt}-{os.getpid()}.json"
    facts = {"attempt": int(attempt), "pid": os.getpid(), "start": time.time(), "end": None}


def write_record(**update: object) -> None:
    if record is None:
        return
    facts.update(update)
    tmp = record.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        json.dump(facts, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, record)


def finish(code: int, **update: object) -> None:
    write_record(end=time.time(), exit_code=code, **update)
    sys.exit(code)


write_record()
stop = False


def on_term(signum: int, frame: object) -> None:
    global stop
    if args.on_term == "exit":
        finish(1, terminated=True)
    stop = True


if args.on_term == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_term)

if args.print_env:
    for key, value in sorted(os.environ.items()):
        print(f"{key}={value}".replace("\n", " "))

checkpoints = Path(os.environ.get("TRAINSUP_CHECKPOINT_DIR", "checkpoints"))
checkpoints.mkdir(parents=True, exist_ok=True)
done = step_checkpoint.newest_step(checkpoints)
print(f"attempt {attempt} starting at step {done} pid {os.getpid()}", flush=True)
for step in range(done + 1, args.steps + 1):
    time.sleep(args.interval)
    step_checkpoint.commit(checkpoints, step)
    print(f"step {step}", flush=True)
    if stop:
        print(f"checkpointed at step {step}", flush=True)
        finish(75)
if args.fail_attempt_1 is not None and attempt == "1":
    print(f"failing attempt 1 with exit {args.fail_attempt_1}", flush=True)
    finish(args.fail_attempt_1)
print("finished", flush=True)
finish(0)
