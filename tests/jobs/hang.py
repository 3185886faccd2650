"""Heartbeats for a moment, then (on attempt 1 only) hangs without exiting."""

import faulthandler
import os
import signal
import time
from pathlib import Path

from trainsup.contracts import Heartbeat, write_heartbeat

faulthandler.register(signal.SIGUSR2, all_threads=True, chain=False)
directory = Path(os.environ["TRAINSUP_HEARTBEAT"])
attempt = int(os.environ["TRAINSUP_ATTEMPT"])


def beat(step: int) -> None:
    write_heartbeat(directory, Heartbeat(rank=0, time=time.time(), step=step, epoch=0, phase="train", pid=os.getpid()))


def stuck_in_data_loader() -> None:
    while True:
        time.sleep(1)


for step in range(10):
    beat(step)
    time.sleep(0.05)
print(f"attempt {attempt}: heartbeats sent", flush=True)
if attempt == 1:
    stuck_in_data_loader()
print("finished", flush=True)
