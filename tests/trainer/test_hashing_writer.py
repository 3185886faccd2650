"""The digest a save computes from the stream torch.save writes equals the digest of the bytes on disk.

torch.save writes a zip file through `write` alone, in order; a writer that seeks back or
hands over temporary buffers would break hashing the stream. These guard that assumption
for any change to how the hash is computed (e.g. off the writing thread).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from pathlib import Path

import blake3
import pytest
import torch

from trainsup.manifest import MANIFEST_NAME, HashingWriter, InvalidCheckpointError, digest_file, verify
from trainsup.trainer.checkpoints import CheckpointDir
from trainsup.trainer.saving import state_writer

SIZES = [0, 1, 4096, (1 << 20) - 1, 1 << 20, (16 << 20) + 5, 40 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_digest_of_torch_save_equals_the_bytes_written(size: int) -> None:
    state = {"big": torch.randint(0, 255, (size,), dtype=torch.uint8), "small": torch.arange(3), "text": "x" * 100}
    out = io.BytesIO()
    writer = HashingWriter(out)
    torch.save(state, writer)  # type: ignore[arg-type]
    digest = writer.digest()
    assert (digest.size, digest.sha256) == (len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest())


@pytest.mark.parametrize("size", [0, (16 << 20) + 5])
def test_blake3_of_torch_save_equals_the_bytes_written(size: int) -> None:
    out = io.BytesIO()
    writer = HashingWriter(out, "blake3")
    torch.save({"big": torch.randint(0, 255, (size,), dtype=torch.uint8)}, writer)  # type: ignore[arg-type]
    digest = writer.digest()
    assert (digest.size, digest.algorithm) == (len(out.getvalue()), "blake3")
    assert digest.hexdigest == blake3.blake3(out.getvalue()).hexdigest()


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
            assert listed == digest_file(checkpoint.path / name, "blake3"), (size, name)
        assert verify(checkpoint.path).step == step


def _saved(root: Path, step: int = 1, size: int = 1 << 20) -> Path:
    checkpoints = CheckpointDir(root)
    checkpoints.prepare()
    state = {"t": torch.randint(0, 255, (size,), dtype=torch.uint8)}
    meta = {"epoch": 0, "position": 0, "torch_version": torch.__version__, "created": time.time()}
    return checkpoints.save(step, {"state.pt": state_writer(state)}, meta).path


def test_a_new_manifest_names_blake3_and_an_old_sha256_one_still_verifies(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    raw = json.loads((path / MANIFEST_NAME).read_text())
    assert raw["format"] == 2 and set(raw["files"]["state.pt"]) == {"size", "blake3"}
    # What an earlier trainsup wrote: format 1, sha256.
    raw["format"] = 1
    raw["files"]["state.pt"] = {"size": raw["files"]["state.pt"]["size"],
                                "sha256": hashlib.sha256((path / "state.pt").read_bytes()).hexdigest()}
    (path / MANIFEST_NAME).write_text(json.dumps(raw))
    assert verify(path).files["state.pt"].algorithm == "sha256"
    data = bytearray((path / "state.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (path / "state.pt").write_bytes(bytes(data))
    with pytest.raises(InvalidCheckpointError, match="does not match its sha256"):
        verify(path)
    assert verify(path, hashes=False).step == 1


def test_a_blake3_manifest_without_the_package_is_refused_in_one_sentence(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = _saved(tmp_path)
    monkeypatch.setitem(sys.modules, "blake3", None)  # import blake3 raises ImportError
    assert verify(path, hashes=False).step == 1  # what the daemon does: sizes only
    with pytest.raises(InvalidCheckpointError, match="blake3 package is not installed"):
        verify(path)


@pytest.mark.parametrize("entry", [{"size": 1}, {"size": 1, "sha256": "a", "blake3": "b"}, {"size": 1, "md5": "a"}])
def test_a_file_entry_without_exactly_one_known_digest_does_not_parse(tmp_path: Path, entry: dict) -> None:
    path = _saved(tmp_path)
    raw = json.loads((path / MANIFEST_NAME).read_text())
    raw["files"]["state.pt"] = entry
    (path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(InvalidCheckpointError, match="does not parse"):
        verify(path, hashes=False)


def test_the_state_file_loads_and_the_crc32_option_is_put_back(tmp_path: Path) -> None:
    path = _saved(tmp_path, size=40 << 20)  # several early-writeback ranges
    loaded = torch.load(path / "state.pt", weights_only=True)
    assert loaded["t"].numel() == 40 << 20
    assert torch.serialization.get_crc32_options() is True

    with pytest.raises(Exception):  # torch cannot pickle a lambda
        state_writer({"x": lambda: 0})(io.BytesIO())  # type: ignore[arg-type]
    assert torch.serialization.get_crc32_options() is True


def test_a_big_record_whose_write_fails_is_still_hashed_to_the_end_before_write_returns() -> None:
    """The hash of a big record runs in another thread beside the write; the caller may reuse
    the buffer once `write` returns or raises, so neither may happen while the hash reads it."""

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    class SlowHash:
        def __init__(self) -> None:
            self.hashed = 0
            self.threads: list[str] = []

        def update(self, data: memoryview) -> None:
            import threading

            time.sleep(0.2)
            self.threads.append(threading.current_thread().name)
            self.hashed += len(data)

    writer = HashingWriter(Full(), "blake3")
    slow = writer._hash = SlowHash()  # noqa: SLF001
    with pytest.raises(OSError, match="No space left"):
        writer.write(memoryview(bytearray(4 << 20)))
    assert slow.hashed == 4 << 20
    assert slow.threads[0].startswith("trainsup-hash")
