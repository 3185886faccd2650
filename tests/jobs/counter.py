"""A job without torch: counts to --steps, committing each step as a checkpoint in the trainer's layout."""

import argparse
import os
import sys
import time
from pathlib import Path

import step_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--interval", type=float, default=0.1)
parser.add_argument("--exit-code-at", type=int, default=None, help="exit 75 once at this step")
args = parser.parse_args()

checkpoints = Path(os.environ.get("TRAINSUP_CHECKPOINT_DIR", "checkpoints"))
checkpoints.mkdir(parents=True, exist_ok=True)
done = step_checkpoint.newest_step(checkpoints)
print(f"attempt {os.environ.get('TRAINSUP_ATTEMPT')} starting at step {done} pid {os.getpid()}", flush=True)
for step in range(done + 1, args.steps + 1):
    time.sleep(args.interval)
    step_checkpoint.commit(checkpoints, step)
    print(f"step {step}", flush=True)
    if args.exit_code_at == step and os.environ.get("TRAINSUP_ATTEMPT") == "1":
        print("preempting", flush=True)
        sys.exit(75)
print("finished", flush=True)
