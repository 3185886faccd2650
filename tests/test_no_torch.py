"""The CLI and the daemon never import torch or a framework (status must feel instant; the daemon needs no GPU stack)."""

from __future__ import annotations

import subprocess
import sys

DAEMON_SIDE = [
    "trainsup.cli", "trainsup.supervisor.daemon", "trainsup.supervisor.monitor", "trainsup.commands.status",
    "trainsup.commands.logs", "trainsup.commands.show", "trainsup.commands.submit", "trainsup.doctor",
    "trainsup.service", "trainsup.gpu.probe", "trainsup.gpu.nvml", "trainsup.gpu.simulated",
    "trainsup.layouts", "trainsup.manifest", "trainsup.contracts", "trainsup.batch",
]
FRAMEWORKS = ("torch", "lightning", "pytorch_lightning", "transformers", "accelerate", "numpy")


def test_daemon_side_modules_do_not_import_torch_or_a_framework():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in DAEMON_SIDE)
            + f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_status_does_not_import_torch_or_pydantic(tmp_path):
    code = (
        "import sys\n"
        "sys.argv = ['trainsup', 'status', '--json']\n"
        "from trainsup import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'pydantic') if m in sys.modules), file=sys.stderr)"
    )
    env = {"TRAINSUP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr
