"""Holds simulated GPU memory for a while and records when it ran."""

import os
import sys
import time
from pathlib import Path

from trainsup.gpu.simulated import sim_allocate

record = Path(sys.argv[1])
hold_s = float(sys.argv[2])
gpu = os.environ["CUDA_VISIBLE_DEVICES"]
start = time.time()
sim_allocate(os.environ["TRAINSUP_SIMULATED_GPUS"], os.getpid(), gpu, 2 * 2**30)
time.sleep(hold_s)
record.write_text(f"{start} {time.time()} {gpu}")
