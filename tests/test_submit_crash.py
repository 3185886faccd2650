"""A `trainsup submit` killed at a random instant leaves a whole request or none."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

from support import TRAINSUP, Cli, DaemonProcess, write_spec


def test_submits_killed_at_random_points_never_leave_a_partial_request(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    spec = write_spec(tmp_path / "job.yaml", name="tiny", command="true")
    rng = random.Random(7)
    completed, killed = 0, 0
    for _ in range(15):
        process = subprocess.Popen([TRAINSUP, "submit", str(spec), "--again", "--json"], env=cli.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=30)
        if process.returncode == 0 and out:
            completed += 1
        else:
            killed += 1
    inbox = Path(cli.env["TRAINSUP_HOME"]) / "inbox"
    requests = [p for p in inbox.glob("*.json")] if inbox.exists() else []
    for path in requests:
        assert json.loads(path.read_text())["kind"] == "submit", "every visible request is whole"
    assert len(requests) >= completed, "every submit that printed an id is durable"
    daemon.start()
    rows = cli.json("status")
    assert len(rows) == len(requests)
    assert not any((Path(cli.env["TRAINSUP_HOME"]) / "inbox-rejected").iterdir()), "nothing half-written was ingested"
    assert completed + killed == 15
