"""The sha256 a save computes from the stream torch.save writes equals the sha256 of the bytes on disk.

torch.save writes a zip file through `write` alone, in order; a writer that seeks back or
hands over temporary buffers would break hashing the stream. These guard that assumption
for any change to how the hash is computed (e.g. off the writing thread).
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import pytest
import torch

from trainsup.manifest import HashingWriter, digest_file, verify
from trainsup.trainer.checkpoints import CheckpointDir

SIZES = [0, 1, 4096, (1 << 20) - 1, 1 << 20, (16 << 20) + 5, 40 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_digest_of_torch_save_equals_the_bytes_written(size: int) -> None:
    state = {"big": torch.randint(0, 255, (size,), dtype=torch.uint8), "small": torch.arange(3), "text": "x" * 100}
    out = io.BytesIO()
    writer = HashingWriter(out)
    torch.save(state, writer)  # type: ignore[arg-type]
    digest = writer.digest()
    assert (digest.size, digest.sha256) == (len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest())


def test_the_manifest_lists_the_sha256_of_each_file_on_disk(tmp_path: Path) -> None:
    checkpoints = CheckpointDir(tmp_path / "ckpt")
    checkpoints.prepare()
    for step, size in enumerate(SIZES, start=1):
        tensor = torch.randint(0, 255, (size,), dtype=torch.uint8)
        files = {"state.pt": lambda f, t=tensor: torch.save({"t": t}, f),
                 "raw.bin": lambda f, t=tensor: f.write(t.numpy())}
        meta = {"epoch": 0, "position": 0, "torch_version": torch.__version__, "created": time.time()}
        checkpoint = checkpoints.save(step, files, meta)
        for name, listed in checkpoint.manifest.files.items():
            assert listed == digest_file(checkpoint.path / name), (size, name)
        assert verify(checkpoint.path).step == step
