"""A single-file checkpoint sealed by a sidecar manifest: `torch.save` made power-safe and verifiable.

`save_checkpoint_file(obj, P)` writes `P` and `P.manifest.json` (the digests `P` may
have); `verify_checkpoint(P)` says whether the bytes of `P` match one of them. Used by
`trainsup.integrations.lightning` for every `*.ckpt`; it needs no framework.

Why a crash at any instant leaves the old or the new checkpoint loadable.
A manifest lists the digests (size, sha256, global step, epoch) its checkpoint may
have; a checkpoint is *sealed* when its bytes match one of them. A save of `P` runs:

1. `torch.save` into `.P.tmp-<id>` (same directory), hashing; fsync it.
2. Write the new manifest into `.P.manifest.json.tmp-<id>`: the new digest *and* the
   digest of the `P` on disk now (when `P` exists and is sealed); fsync it.
3. Rename it over `P.manifest.json`; fsync the directory.
4. Rename `.P.tmp-<id>` over `P`; fsync the directory.
5. Rewrite the manifest with the new digest only (same temp/fsync/rename/fsync).

A crash in 1-2 leaves `P` and its manifest untouched (plus temp files, removed by
the next `resume_checkpoint`). After 3 the manifest accepts both the old and the new
bytes, and the directory fsync in 3 makes it durable *before* the rename of 4 is
issued, so whichever of old or new `P` the directory holds after a power cut, its
manifest accepts it: both renames are atomic and ordered. After 4 `P` is the new
file, already fsync'd in 1. Step 5 only trims the manifest; a crash in it leaves a
manifest that still accepts `P`. For a new name (`epoch=0-step=20.ckpt`) there is no
old `P`: a crash between 3 and 4 leaves a manifest without its checkpoint, which is
ignored and removed, and every older checkpoint is untouched. A checkpoint whose
save was torn some other way (written without the plugin, truncated, a bit flipped)
matches no digest and is never loaded.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from trainsup.integrations.runtime import log
from trainsup.manifest import FileDigest, HashingWriter, InvalidCheckpointError, digest_file

if TYPE_CHECKING:  # pragma: no cover
    from trainsup.trainer.fsops import FileOps

MANIFEST_SUFFIX = ".manifest.json"
FORMAT = 1


class UnverifiedCheckpointError(InvalidCheckpointError):
    """A `*.ckpt` that must not be loaded: no manifest, or bytes the manifest does not list."""


# --- the manifest -----------------------------------------------------------------------


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar manifest of checkpoint `path`: `<name>.manifest.json` beside it."""
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def _entry(digest: FileDigest, step: int | None, epoch: int | None) -> dict[str, Any]:
    return {"size": digest.size, "sha256": digest.sha256, "step": step, "epoch": epoch, "created": time.time()}


def _manifest_bytes(name: str, entries: list[dict[str, Any]]) -> bytes:
    import torch

    payload = {"format": FORMAT, "file": name, "accepts": entries, "torch_version": torch.__version__}
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The digests the manifest of `path` accepts.

    Raises:
        UnverifiedCheckpointError: no manifest, or one that does not parse.
    """
    sidecar = manifest_path(path)
    try:
        raw = json.loads(sidecar.read_bytes())
    except FileNotFoundError:
        raise UnverifiedCheckpointError(f"{path.name} has no manifest {sidecar.name}: it was not written "
                                        f"by PowerSafeCheckpointIO, or its save did not finish") from None
    except (OSError, ValueError) as exc:
        raise UnverifiedCheckpointError(f"{sidecar.name} cannot be read ({exc.__class__.__name__})") from None
    try:
        if raw.get("format") != FORMAT:
            raise UnverifiedCheckpointError(f"{sidecar.name} has format {raw.get('format')!r}, not {FORMAT}")
        entries = [dict(e) for e in raw["accepts"]]
        for e in entries:
            int(e["size"]), str(e["sha256"])
        return entries
    except UnverifiedCheckpointError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError):
        raise UnverifiedCheckpointError(f"{sidecar.name} does not parse") from None


def verify_checkpoint(path: str | os.PathLike[str], *, hashes: bool = True) -> dict[str, Any]:
    """The manifest entry (size, sha256, step, epoch) that the bytes of `path` match.

    With `hashes=False` only the size is compared (a `stat`, not a read).

    Raises:
        UnverifiedCheckpointError: missing, no manifest, or its bytes match no entry.
    """
    path = Path(path)
    entries = read_entries(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UnverifiedCheckpointError(f"{path.name} is missing") from None
    sized = [e for e in entries if int(e["size"]) == size]
    if not sized:
        expected = " or ".join(str(e["size"]) for e in entries)
        raise UnverifiedCheckpointError(f"{path.name} has {size} bytes, its manifest says {expected}")
    if not hashes:
        return sized[0]
    try:
        actual = digest_file(path).sha256
    except OSError as exc:
        raise UnverifiedCheckpointError(f"{path.name} cannot be read ({exc.strerror})") from None
    for entry in sized:
        if entry["sha256"] == actual:
            return entry
    raise UnverifiedCheckpointError(f"{path.name} does not match its sha256 in {manifest_path(path).name}")


# --- saving -----------------------------------------------------------------------------


def _default_ops() -> "FileOps":
    from trainsup.trainer.fsops import FileOps

    return FileOps()


def save_checkpoint_file(checkpoint: Any, path: str | os.PathLike[str], ops: "FileOps | None" = None) -> FileDigest:
    """`torch.save(checkpoint)` to `path`, power-safe and sealed by its manifest (see the module doc).

    Raises:
        OSError (or what `torch.save` raises): nothing was committed; the previous `path`
        and its manifest are untouched and still load.
    """
    import torch

    ops = ops or _default_ops()
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp = directory / f".{path.name}.tmp-{token}"
    sidecar = manifest_path(path)
    sidecar_temp = directory / f".{sidecar.name}.tmp-{token}"
    meta = checkpoint if isinstance(checkpoint, Mapping) else {}
    step, epoch = int_or_none(meta.get("global_step")), int_or_none(meta.get("epoch"))
    measured: list[HashingWriter] = []

    def write(file: BinaryIO) -> None:
        measured.append(HashingWriter(file))
        torch.save(checkpoint, measured[0])  # type: ignore[arg-type]

    try:
        ops.write_file(temp, write)
        ops.fsync_file(temp)
        new = _entry(measured[0].digest(), step, epoch)
        entries = [new, *_entries_of_current(path)]
        ops.write_file(sidecar_temp, lambda file: file.write(_manifest_bytes(path.name, entries)))
        ops.fsync_file(sidecar_temp)
        ops.rename(sidecar_temp, sidecar)
        ops.fsync_dir(directory)
        ops.rename(temp, path)
        ops.fsync_dir(directory)
    except Exception:
        for leftover in (temp, sidecar_temp):
            _remove_quietly(ops, leftover)
        raise
    if len(entries) > 1:  # trim: only the new bytes are accepted from now on
        trim_temp = directory / f".{sidecar.name}.tmp-{token}-trim"
        try:
            ops.write_file(trim_temp, lambda file: file.write(_manifest_bytes(path.name, [new])))
            ops.fsync_file(trim_temp)
            ops.rename(trim_temp, sidecar)
            ops.fsync_dir(directory)
        except Exception as exc:
            _remove_quietly(ops, trim_temp)
            log.warning("%s is saved; its manifest still also accepts the previous bytes (%s)", path.name, exc)
    return measured[0].digest()


def _entries_of_current(path: Path) -> list[dict[str, Any]]:
    """The manifest entry of the `path` on disk now, kept while it is being replaced."""
    if not path.exists():
        return []
    try:
        entries = read_entries(path)
        # One entry of the right size: trust it without reading a large file. More (a trim
        # interrupted by a crash): hash the file to keep only the one it matches.
        return [verify_checkpoint(path, hashes=len(entries) > 1)]
    except UnverifiedCheckpointError:
        return []  # the file on disk was never loadable; nothing to keep loadable


def _remove_quietly(ops: "FileOps", path: Path) -> None:
    try:
        if os.path.lexists(path):
            ops.remove_file(path)
    except Exception:  # best effort: resume_checkpoint removes it on the next start
        pass


def clean_leftovers(root: Path) -> None:
    """Remove the temp files of interrupted saves, and manifests whose checkpoint never got its name."""
    for entry in root.iterdir():
        name = entry.name
        try:
            if name.startswith(".") and ".tmp-" in name and (".ckpt.tmp-" in name or MANIFEST_SUFFIX + ".tmp-" in name):
                log.info("removing %s left by an interrupted save", name)
                entry.unlink()
            elif name.endswith(".ckpt" + MANIFEST_SUFFIX) and not (root / name[: -len(MANIFEST_SUFFIX)]).exists():
                log.info("removing %s: its checkpoint was never committed", name)
                entry.unlink()
        except OSError as exc:
            log.warning("could not remove %s: %s", name, exc.strerror)


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
