"""A stand-in for the trainer's checkpoint layout, for the stdlib-only test jobs.

`commit(checkpoints, step)` makes `step-NNNNNNNNN/` with one small file and a
`manifest.json` listing it, committed by rename, as `trainsup.trainer` does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from trainsup.contracts import parse_step_dir, step_dir_name
from trainsup.manifest import Manifest, digest_file


def commit(checkpoints: Path, step: int) -> None:
    final = checkpoints / step_dir_name(step)
    if final.exists():
        return
    tmp = checkpoints / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    tmp.mkdir()
    (tmp / "state").write_text(f"step {step}\n")
    manifest = Manifest(step=step, epoch=0, position=0, files={"state": digest_file(tmp / "state")},
                        torch_version="none", created=time.time())
    (tmp / "manifest.json").write_bytes(manifest.to_bytes())
    os.rename(tmp, final)


def newest_step(checkpoints: Path) -> int:
    return max((step for p in checkpoints.glob("step-*") if (step := parse_step_dir(p.name)) is not None), default=0)
