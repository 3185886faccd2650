"""DirectFile: past 16 MiB a file goes out with O_DIRECT in whole aligned chunks, the tail without it,
and every byte lands where a plain write would put it; a refused O_DIRECT falls back to
plain writes; a full disk is an OSError with the buffers given back."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import threading
from pathlib import Path

import pytest

from support import small_tmpfs
from trainsup.trainer import directfile
from trainsup.trainer.directfile import CHUNK, DirectFile
from trainsup.trainer.fsops import FileOps


def _pieces(data: bytes, rng: random.Random) -> list[memoryview]:
    """`data` cut at random points, some pieces bigger than a chunk."""
    view, out, at = memoryview(data), [], 0
    while at < len(data):
        size = rng.choice([1, 63, 4096, 100_000, CHUNK - 5, CHUNK + 7, 3 * CHUNK])
        out.append(view[at:at + size])
        at += size
    return out


def _is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.mark.parametrize("size", [0, 1, 4095, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345])
def test_every_byte_lands_in_order(tmp_path: Path, size: int) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    path = tmp_path / "f"
    FileOps().write_file(path, lambda file: [file.write(piece) for piece in _pieces(data, rng)])
    assert path.read_bytes() == data


def test_o_direct_only_past_16_mib_and_never_for_the_tail(tmp_path: Path) -> None:
    file = DirectFile(os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    try:
        file.write(b"x" * (2 * CHUNK - 1))
        assert not _is_direct(file.fileno()), "a file under DIRECT_FROM never uses O_DIRECT"
        file.write(b"y" * 2)
        if not _is_direct(file.fileno()):
            pytest.skip(f"the file system of {tmp_path} has no O_DIRECT")
        file.finish()
        assert not _is_direct(file.fileno()), "the tail went out without O_DIRECT"
    finally:
        file.close()
    assert (tmp_path / "f").read_bytes() == b"x" * (2 * CHUNK - 1) + b"yy"


def test_a_refused_o_direct_write_falls_back_to_plain_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some file systems accept the flag and then refuse the write (EINVAL): the chunk is
    written again without it, at the same offset, and so is the rest."""
    real_pwrite = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if _is_direct(fd):
            refused.append(offset)
            if len(refused) == 1:
                real_pwrite(fd, data[:4096], offset)  # as if part of it went out first
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directfile.os, "pwrite", pwrite)
    data = random.Random(1).randbytes(3 * CHUNK + 99)
    FileOps().write_file(tmp_path / "f", lambda file: file.write(data))
    assert (tmp_path / "f").read_bytes() == data
    assert len(refused) <= 1, "after a refusal, no more O_DIRECT for that file"


def test_files_written_at_once_in_threads_each_get_their_bytes(tmp_path: Path) -> None:
    datas = [random.Random(n).randbytes(2 * CHUNK + n) for n in range(4)]
    threads = [threading.Thread(target=FileOps().write_file, args=(tmp_path / f"f{n}", lambda f, d=d: f.write(d)))
               for n, d in enumerate(datas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [(tmp_path / f"f{n}").read_bytes() for n in range(4)] == datas


def test_a_full_disk_is_an_oserror_and_the_buffers_are_given_back(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "20m") as disk:  # full past DIRECT_FROM: in the aligned buffers' part
        spare = len(directfile._spare)
        with pytest.raises(OSError) as raised:
            FileOps().write_file(disk / "big", lambda file: file.write(b"z" * (4 * CHUNK)))
        assert raised.value.errno == errno.ENOSPC
        assert len(directfile._spare) == max(spare, 2), "the two buffers are kept for the next file"
        (disk / "big").unlink()  # what a failed save's caller does with its temp
        FileOps().write_file(disk / "small", lambda file: file.write(b"fits"))
        assert (disk / "small").read_bytes() == b"fits"


def test_without_direct_every_byte_goes_out_as_it_comes(tmp_path: Path) -> None:
    """The snapshots' tmpfs: O_DIRECT there would only add a copy."""
    file = DirectFile(os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL), direct=False)
    try:
        file.write(b"x" * (3 * CHUNK))
        assert not _is_direct(file.fileno())
        assert (tmp_path / "f").stat().st_size == 3 * CHUNK, "nothing held back in a buffer"
        file.finish()
    finally:
        file.close()
