"""`manifest.json`: what a committed checkpoint of the trainer contains, and how to check it.

Stdlib only: the trainer verifies every byte before it loads a checkpoint (`verify`);
the daemon and `trainsup status` only count a `step-…` dir whose manifest and file
sizes agree (`verify(hashes=False)`, a few `stat` calls, not a read of the data).

Each file's entry names its digest by its key: `{"size": n, "blake3": hex}` (what the
trainer writes when the `blake3` package is installed: ~4× faster than sha256 on one
core) or `{"size": n, "sha256": hex}` (format 1 manifests, and the integrations'). The
`blake3` module is imported only to compute a BLAKE3, never by the daemon.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO


FORMAT_VERSION = 2  # 2: a file's digest may be a blake3; 1 (sha256 only) is still read
READABLE_FORMATS = (1, 2)
ALGORITHMS = ("blake3", "sha256")
MANIFEST_NAME = "manifest.json"
_CHUNK = 4 << 20
_OVERLAP_BYTES = 1 << 20  # a write this big is hashed in another thread meanwhile
# A manifest lists a few files (a sharded HF checkpoint: hundreds); anything this big is not one.
MAX_MANIFEST_BYTES = 16 << 20


class InvalidCheckpointError(Exception):
    """A checkpoint directory that must not be loaded; the message says why."""


@dataclass(frozen=True)
class FileDigest:
    """A file's size and its digest under `algorithm` (one of `ALGORITHMS`), in hex."""

    size: int
    hexdigest: str
    algorithm: str = "sha256"

    @property
    def sha256(self) -> str:
        if self.algorithm != "sha256":
            raise ValueError(f"this digest is a {self.algorithm}, not a sha256")
        return self.hexdigest

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, self.algorithm: self.hexdigest}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> "FileDigest":
        found = [name for name in ALGORITHMS if name in entry]
        if len(found) != 1:
            raise ValueError("a file entry needs exactly one digest")
        return cls(int(entry["size"]), str(entry[found[0]]), found[0])


@dataclass(frozen=True)
class Manifest:
    step: int
    epoch: int
    position: int
    files: dict[str, FileDigest]
    torch_version: str
    created: float
    batch: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    started_from: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        payload = asdict(self)
        payload["files"] = {name: digest.to_json() for name, digest in self.files.items()}
        return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        try:
            raw = json.loads(data)
            if raw.get("format") not in READABLE_FORMATS:
                raise InvalidCheckpointError(f"manifest format {raw.get('format')!r} is not one of {READABLE_FORMATS}")
            raw["files"] = {name: FileDigest.from_json(d) for name, d in raw["files"].items()}
            return cls(**raw)
        except InvalidCheckpointError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidCheckpointError(f"manifest.json does not parse ({exc.__class__.__name__})") from None


class HashingWriter:
    """A write-only file wrapper that measures the size and digest of what passes."""

    def __init__(self, file: BinaryIO, algorithm: str = "sha256") -> None:
        self._file = file
        self.algorithm = algorithm
        self._hash = new_hash(algorithm)
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        if len(data) < _OVERLAP_BYTES:
            self._hash.update(data)
            written = self._file.write(data)
        else:
            written = self._write_while_hashing(data)
        self.size += len(data)
        return written

    def _write_while_hashing(self, data: bytes | memoryview) -> int:
        """Hash `data` in another thread while this one writes it: both release the GIL,
        so a big record costs the longer of the two instead of their sum."""
        from trainsup.threadpool import pool

        hashed = pool("hash", workers=2).submit(self._hash.update, data)
        try:
            return self._file.write(data)
        finally:
            hashed.result()  # `data` may be reused once this returns; the hash must be done with it

    def flush(self) -> None:
        self._file.flush()

    def digest(self) -> FileDigest:
        return FileDigest(self.size, self._hash.hexdigest(), self.algorithm)


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading, only if it is a regular file and not a symlink.

    A checkpoint dir another user can write may hold `manifest.json -> /dev/zero` or a
    FIFO; following either would exhaust memory or block the daemon and `status`.

    Raises:
        OSError: it cannot be opened, or is a symlink (ELOOP) or not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _reason(exc: OSError) -> str:
    return "a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))


def digest_file(path: Path, algorithm: str = "sha256") -> FileDigest:
    digest = new_hash(algorithm, threads=True)
    size = 0
    with _open_regular(path) as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(size, digest.hexdigest(), algorithm)


def read_manifest(directory: Path) -> Manifest:
    try:
        with _open_regular(directory / MANIFEST_NAME) as file:
            data = file.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise InvalidCheckpointError("manifest.json is missing") from None
    except OSError as exc:
        raise InvalidCheckpointError(f"manifest.json cannot be read ({_reason(exc)})") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidCheckpointError(f"manifest.json is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    return Manifest.from_bytes(data)


def verify(directory: Path, *, hashes: bool = True) -> Manifest:
    """The manifest of `directory` once every file it lists has its size and digest.

    With `hashes=False` only the sizes are compared: it catches a truncated or missing
    file at the cost of a `stat`, not a bit flip.

    Raises:
        InvalidCheckpointError: the first mismatch found, in a few words.
    """
    manifest = read_manifest(directory)
    if not manifest.files:
        raise InvalidCheckpointError("the manifest lists no files")
    for name, expected in manifest.files.items():
        path = directory / name
        if "/" in name or name.startswith("."):
            raise InvalidCheckpointError(f"the manifest names an unsafe file {name!r}")
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                raise InvalidCheckpointError(f"{name} is not a regular file")
            size = info.st_size
            if size != expected.size:
                raise InvalidCheckpointError(f"{name} has {size} bytes, the manifest says {expected.size}")
            if hashes and digest_file(path, expected.algorithm).hexdigest != expected.hexdigest:
                raise InvalidCheckpointError(f"{name} does not match its {expected.algorithm} in the manifest")
        except FileNotFoundError:
            raise InvalidCheckpointError(f"{name} is missing") from None
        except OSError as exc:
            raise InvalidCheckpointError(f"{name} cannot be read ({_reason(exc)})") from None
    return manifest


def preferred_algorithm() -> str:
    """The digest a new checkpoint gets: blake3 where its package is installed (a dependency
    of trainsup, absent only from an environment that left it out), else sha256."""
    try:
        import blake3  # noqa: F401
    except ImportError:
        return "sha256"
    return "blake3"


def new_hash(algorithm: str, *, threads: bool = False) -> Any:
    """A hash object for `algorithm`; `threads`: a BLAKE3 may use every core (for reading back).

    Raises:
        InvalidCheckpointError: an unknown algorithm, or blake3 without its package.
    """
    if algorithm == "sha256":
        # Imported here: loading OpenSSL costs `trainsup status`, which never hashes, ~5 ms.
        import hashlib

        return hashlib.sha256()
    if algorithm == "blake3":
        try:
            from blake3 import blake3
        except ImportError:
            raise InvalidCheckpointError("the manifest uses blake3 and the blake3 package is not installed") from None
        return blake3(max_threads=blake3.AUTO) if threads else blake3()
    raise InvalidCheckpointError(f"unknown digest algorithm {algorithm!r}")
