"""The adapters' resume in a checkpoint dir another user can write, as that user would attack it.

User B (`nobody`) owns a world-writable output dir, or plants a link in A's sticky one; A's
Lightning, HF Trainer or accelerate job must neither load B's checkpoint nor follow B's link.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from trainsup.integrations import accelerate as ts_accelerate
from trainsup.integrations import hf as ts_hf
from trainsup.integrations import lightning as ts_lightning
from trainsup.manifest import MANIFEST_NAME, Manifest, digest_file
from trainsup.trainer import UnsafeCheckpointDirError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as a second user needs root")

RESUMES: dict[str, Callable[[Path, dict[str, str]], Any]] = {
    "lightning": lambda root, env: ts_lightning.resume_checkpoint(root, write_record=False),
    "hf": lambda root, env: ts_hf.resume_checkpoint(root, environ=env),
    "accelerate": lambda root, env: ts_accelerate.newest_verified(root, environ=env),
}


@needs_root
@pytest.mark.parametrize("stack", sorted(RESUMES))
def test_an_output_dir_another_user_owns_and_all_can_write_is_refused_in_one_sentence(
        stack: str, base: Path, bob: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = base / f"bobs-{stack}"
    bob.run(lambda: (shared.mkdir(), shared.chmod(0o777)))
    monkeypatch.delenv("TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR", raising=False)
    with pytest.raises(UnsafeCheckpointDirError) as refused:
        RESUMES[stack](shared, {})
    assert f"owned by uid {bob.uid}" in str(refused.value) and "0777" in str(refused.value)
    assert "TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR=1" in str(refused.value)
    monkeypatch.setenv("TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR", "1")
    assert RESUMES[stack](shared, {"TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR": "1"}) is None, "opted in: an empty dir"


@needs_root
def test_a_verifying_checkpoint_another_user_plants_in_a_sticky_dir_is_passed_over_and_left_in_place(
        base: Path, bob: Any, tmp_path: Path) -> None:
    own = base / "alices-hf"
    own.mkdir()
    own.chmod(0o1777)  # sticky, like /tmp: B may add entries, not touch A's
    run_dir = tmp_path / "run"
    env = {"TRAINSUP_RUN_DIR": str(run_dir), "TRAINSUP_ATTEMPT": "1"}

    def plant() -> None:  # a checkpoint-999 whose manifest verifies, so only its owner gives it away
        planted = own / "checkpoint-999"
        planted.mkdir()
        (planted / "model.safetensors").write_bytes(b"bob's weights")
        manifest = Manifest(step=999, epoch=0, position=0, torch_version="none", created=0.0,
                            files={"model.safetensors": digest_file(planted / "model.safetensors")})
        (planted / MANIFEST_NAME).write_bytes(manifest.to_bytes())

    bob.run(plant)
    assert ts_hf.resume_checkpoint(own, environ=env) is None, "A starts fresh rather than from B's weights"
    skipped = json.loads((run_dir / "resume.json").read_text())["skipped"]
    assert skipped == [{"checkpoint": "checkpoint-999",
                        "why": f"checkpoint-999 is owned by uid {bob.uid} ({bob.name}), not by this user"}]
    assert (own / "checkpoint-999" / MANIFEST_NAME).is_file(), "B's entry is not moved by A"
