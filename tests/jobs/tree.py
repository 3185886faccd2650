"""A job that starts children and grandchildren (one in its own session) and waits."""

import os
import subprocess
import sys
import time
from pathlib import Path

pids_file = Path(sys.argv[1])
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
child = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time, os
a = subprocess.Popen({sleeper!r})
b = subprocess.Popen({sleeper!r}, start_new_session=True)
print(a.pid, b.pid, flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
grandchildren = child.stdout.readline().split()
# A process that ignores SIGTERM: only the grace-period SIGKILL stops it.
stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
pids = [os.getpid(), child.pid, stubborn.pid, *map(int, grandchildren)]
tmp = pids_file.with_suffix(".tmp")
tmp.write_text(" ".join(map(str, pids)))
tmp.rename(pids_file)
print("tree started", pids, flush=True)
time.sleep(600)
