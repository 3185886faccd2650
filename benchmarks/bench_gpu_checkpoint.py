"""Checkpointing a GPU-resident state: trainsup next to torch.save and PyTorch Distributed
Checkpoint (DCP), in one process, and what an async save costs a running GPU training loop.

For each size (the bytes of the saved tensors), medians of --repeats runs of:
  rows   torch.save, torch.save+fsync, trainsup power-safe, trainsup async stall and durable
         (benchmarks/bench_checkpoint.bench_size); dcp save (sync); dcp async_save stall
         (until it returns) and durable (until its future's result()), with DCP's default
         writer and, on CUDA, with its pinned staging cache (cache_staged_state_dict=True)
  loop   a training loop of Linear layers + Adam whose model+optimizer state is about the
         size: the median step without saving; the step that starts a trainsup background
         save (the stall) and the mean step while it writes (interference); the same for
         DCP async_save; the step that makes a blocking trainsup save

    python benchmarks/bench_gpu_checkpoint.py --device cuda --sizes 1GB,4GB --repeats 3 \\
        --dir /fast/disk --json out.json

Seconds throughout. Write to a real disk (--dir): on tmpfs, fsync costs nothing.
`--budget-s` lowers the repeats of a size (never below 1) when the disk speed measured so
far says the run would take longer; the repeats used are in the JSON.
Nothing here asserts a time; a measurement that fails reports "error: ..." and the rest run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import shutil
import stat
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_checkpoint  # noqa: E402
from common import fsync_bandwidth  # noqa: E402

from trainsup.trainer import CheckpointDir, Retention, Saving, Session  # noqa: E402
from trainsup.units import parse_size  # noqa: E402

ROWS = ["torch.save", "torch.save+fsync", "power-safe", "async stall", "async durable",
        "dcp save", "dcp async stall", "dcp async durable",
        "dcp async stall (pinned)", "dcp async durable (pinned)"]
_BENCH_SIZE_ROWS = ROWS[:5]
WARMUP_STEPS = 3
BASELINE_STEPS = 10
RECOVERY_STEPS = 2
MAX_OVERLAP_STEPS = 40      # steps measured while a background write runs (free: we wait for it anyway)
FUTURE_TIMEOUT_S = 600.0
WRITES_PER_REPEAT = 7       # full writes of the state per repeat (4 in bench_size, 3 DCP)
FIXED_WRITES = 5            # full writes in the loop (trainsup 2 + blocking 1, DCP 2)


# --- small helpers ------------------------------------------------------------------

_T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[gpu-checkpoint {time.perf_counter() - _T0:6.1f}s] {message}", flush=True)


def label_of(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            return f"{size / scale:g}{unit}"
    return f"{size}B"


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"error: {type(exc).__name__}: {text[:300]}"


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if is_cuda(device):
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        # the pinned host memory freed by this size's snapshots stays cached unless emptied
        accelerator = getattr(torch, "accelerator", None)
        for host_empty in (getattr(accelerator, "empty_host_cache", None), getattr(torch._C, "_host_emptyCache", None)):
            if host_empty is not None:
                with contextlib.suppress(Exception):
                    host_empty()
                    break


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def clear_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No INFO logs from trainsup's saves, nor its warning that each new session starts
    fresh; no DCP single-process warning per save."""
    logger = logging.getLogger("trainsup.trainer")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed\.checkpoint.*")
        try:
            yield
        finally:
            logger.setLevel(level)


@contextlib.contextmanager
def state_made_on(device: str) -> Iterator[None]:
    """bench_checkpoint.model_of, with its random parameters created where the state lives:
    the same tensors, without generating gigabytes on one CPU core and copying them over."""
    original = bench_checkpoint.model_of

    def model_on_device(size: int) -> torch.nn.Module:
        with torch.device(device):
            model = original(size)
        sync(device)
        return model

    bench_checkpoint.model_of = model_on_device
    try:
        yield
    finally:
        bench_checkpoint.model_of = original


@contextlib.contextmanager
def counting_fsyncs() -> Iterator[dict[str, int]]:
    """Count os.fsync calls (on files and on directories) made while inside."""
    counts = {"files": 0, "dirs": 0}
    original = os.fsync

    def fsync(fd: Any) -> None:
        with contextlib.suppress(Exception):
            number = fd if isinstance(fd, int) else fd.fileno()
            counts["dirs" if stat.S_ISDIR(os.fstat(number).st_mode) else "files"] += 1
        original(fd)

    os.fsync = fsync  # type: ignore[assignment]
    try:
        yield counts
    finally:
        os.fsync = original  # type: ignore[assignment]


def result_of(future: Any) -> Any:
    """Wait for what async_save returned: a Future, or (newer torch) an AsyncSaveResponse."""
    upload = getattr(future, "upload_completion", None)
    return (upload if upload is not None else future).result(timeout=FUTURE_TIMEOUT_S)


def done(future: Any) -> bool:
    upload = getattr(future, "upload_completion", None)
    return (upload if upload is not None else future).done()


# --- DCP ----------------------------------------------------------------------------

class Dcp:
    """torch.distributed.checkpoint, set up once: whether it works here, in which mode
    (no process group, or a 1-process gloo group made here), and whether it fsyncs."""

    def __init__(self, device: str, root: Path) -> None:
        self.device = device
        self.root = root
        self.error: str | None = None
        self.mode = "not set up"
        self.owns_group = False
        self.fsyncs: dict[str, Any] = {}
        self.sync_files: Any = None
        self.dcp: Any = None
        try:
            import torch.distributed.checkpoint as dcp
            self.dcp = dcp
        except Exception as exc:  # noqa: BLE001
            self.error = f"n/a: torch.distributed.checkpoint does not import ({describe(exc)})"
            return
        self._set_up()

    def writer(self, path: Path, pinned: bool = False) -> Any:
        if pinned:
            return self.dcp.FileSystemWriter(str(path), sync_files=True, cache_staged_state_dict=True)
        return self.dcp.FileSystemWriter(str(path), sync_files=True)

    def save(self, state: dict[str, Any], path: Path) -> None:
        self.dcp.save(state, storage_writer=self.writer(path))

    def async_save(self, state: dict[str, Any], path: Path, writer: Any = None) -> Any:
        if writer is None:
            return self.dcp.async_save(state, storage_writer=self.writer(path))
        return self.dcp.async_save(state, checkpoint_id=str(path), storage_writer=writer)

    def _probe(self) -> None:
        state = {"x": torch.arange(64, dtype=torch.float32, device=self.device)}
        folder = self.root / "dcp-probe"
        clear_dir(folder)
        with counting_fsyncs() as counts:
            self.save(state, folder / "sync")
        self.fsyncs = {"files": counts["files"], "dirs": counts["dirs"],
                       "per": "one dcp.save of a 1-tensor state", "directory_fsynced": counts["dirs"] > 0}
        result_of(self.async_save(state, folder / "async"))
        shutil.rmtree(folder, ignore_errors=True)

    def _set_up(self) -> None:
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            self.sync_files = getattr(self.writer(self.root / "unused"), "sync_files", None)
        if dist.is_available() and dist.is_initialized():
            self.mode = f"the caller's process group ({dist.get_backend()}, world {dist.get_world_size()})"
            try:
                self._probe()
            except Exception as exc:  # noqa: BLE001
                self.error = f"n/a: DCP fails with the caller's process group ({describe(exc)})"
            return
        try:
            self.mode = "no process group (DCP single-process mode)"
            self._probe()
            return
        except Exception as exc:  # noqa: BLE001
            first = describe(exc)
        try:
            unset = "GLOO_SOCKET_IFNAME" not in os.environ
            if unset:
                os.environ["GLOO_SOCKET_IFNAME"] = "lo"
            try:
                dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            finally:
                if unset:
                    os.environ.pop("GLOO_SOCKET_IFNAME", None)
            self.owns_group = True
            self.mode = "gloo process group of 1, made here (single-process mode failed: " + first + ")"
            self._probe()
        except Exception as exc:  # noqa: BLE001
            self.error = f"n/a: DCP fails without a process group ({first}) and with a gloo one ({describe(exc)})"

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.owns_group = False

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "error": self.error, "sync_files": self.sync_files,
                "fsync_calls": self.fsyncs,
                "note": ("sync_files is FileSystemWriter's default (True here too): it fsyncs the data files and "
                         "the .metadata file; fsync_calls counts the os.fsync calls on files and on directories "
                         "made by one dcp.save here (dirs 0: nothing fsyncs the directory after the renames)")}


def trainsup_fsyncs(root: Path) -> dict[str, Any]:
    """os.fsync calls of one trainsup power-safe save, for comparison with DCP's."""
    folder = root / "trainsup-probe"
    clear_dir(folder)
    try:
        checkpoints = CheckpointDir(folder / "checkpoints", retention=Retention(keep_last=1))
        checkpoints.prepare()
        state = {"x": torch.arange(64, dtype=torch.float32)}
        with counting_fsyncs() as counts:
            checkpoints.save(1, {"state.pt": lambda f: torch.save(state, f)},
                             {"epoch": 0, "position": 0, "torch_version": torch.__version__, "created": time.time()})
        return {"files": counts["files"], "dirs": counts["dirs"], "per": "one power-safe save of a 1-tensor state"}
    except Exception as exc:  # noqa: BLE001
        return {"error": describe(exc)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def dcp_rows(size: int, repeats: int, root: Path, device: str, dcp: Dcp) -> dict[str, Any]:
    names = ROWS[5:]
    if dcp.error:
        return {name: dcp.error for name in names}
    rows: dict[str, Any] = {}
    with state_made_on(device):
        model = bench_checkpoint.model_of(size)
    state = {"model": model.state_dict()}
    folder = root / "dcp-rows"
    try:
        def sync_save() -> float:
            clear_dir(folder)
            sync(device)
            started = time.perf_counter()
            dcp.save(state, folder / "ckpt")
            return time.perf_counter() - started

        def async_save(writer: Any = None) -> tuple[float, float]:
            clear_dir(folder)
            sync(device)
            started = time.perf_counter()
            future = dcp.async_save(state, folder / "ckpt", writer)
            sync(device)
            stall = time.perf_counter() - started
            result_of(future)
            return stall, time.perf_counter() - started

        say(f"{label_of(size)}: dcp save x{repeats}")
        try:
            rows["dcp save"] = median([sync_save() for _ in range(repeats)])
        except Exception as exc:  # noqa: BLE001
            rows["dcp save"] = describe(exc)
        say(f"{label_of(size)}: dcp async_save x{repeats}")
        try:
            samples = [async_save() for _ in range(repeats)]
            rows["dcp async stall"] = median([s for s, _ in samples])
            rows["dcp async durable"] = median([d for _, d in samples])
        except Exception as exc:  # noqa: BLE001
            rows["dcp async stall"] = rows["dcp async durable"] = describe(exc)
        if not is_cuda(device):
            rows["dcp async stall (pinned)"] = rows["dcp async durable (pinned)"] = "n/a on CPU: DCP's pinned staging needs CUDA"
        else:
            say(f"{label_of(size)}: dcp async_save, pinned staging cache, x{repeats}")
            try:
                writer = dcp.writer(folder / "ckpt", pinned=True)
                writer.stage(state)  # allocates and pins the cache once, as a first save would; not timed
                samples = [async_save(writer) for _ in range(repeats)]
                rows["dcp async stall (pinned)"] = median([s for s, _ in samples])
                rows["dcp async durable (pinned)"] = median([d for _, d in samples])
                del writer
            except Exception as exc:  # noqa: BLE001
                rows["dcp async stall (pinned)"] = rows["dcp async durable (pinned)"] = describe(exc)
    finally:
        del state, model
        shutil.rmtree(folder, ignore_errors=True)
        free_memory(device)
    return rows


# --- the training loop --------------------------------------------------------------

def loop_shape(size: int, device: str) -> tuple[int, int, int]:
    """(width, layers, batch) of Linear layers whose weights + Adam's two moments are ~size bytes."""
    params_bytes = max(size / 3, 4096 * 4)
    limit, batch = (4096, 1024) if is_cuda(device) else (512, 64)
    width = int(math.sqrt(params_bytes / (4 * 8))) // 64 * 64  # about 8 layers where that fits
    width = max(64, min(limit, width))
    layers = max(1, round(params_bytes / (4 * width * width)))
    return width, layers, batch


def background_running(session: Session) -> bool:
    """Whether trainsup's background save thread is still writing (private; True if unknown)."""
    try:
        thread = session._saver._background._thread  # noqa: SLF001
        return thread is not None and thread.is_alive()
    except AttributeError:
        return True


def training_loop(size: int, device: str, root: Path, dcp: Dcp) -> dict[str, Any]:
    width, layers, batch = loop_shape(size, device)
    report: dict[str, Any] = {}
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False, device=device) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    inputs = torch.randn(batch, width, device=device)
    targets = torch.zeros(batch, width, device=device)
    loop_dir = root / "loop"
    clear_dir(loop_dir)
    session = Session(model, optimizer, checkpoint_dir=loop_dir / "trainsup", handle_signals=False, environ={},
                      saving=Saving(every_seconds=None, every_epoch=False, on_exit=False, in_background=True),
                      retention=Retention(keep_last=1))
    steps = 0

    def step(extra: Callable[[], Any] | None = None) -> tuple[float, float | None, Any, float]:
        """Seconds of one training step and of `extra` (run at its end, e.g. a save), what
        `extra` returned, and when it was called (perf_counter)."""
        nonlocal steps
        sync(device)
        started = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        session.step_done()
        call, value, called = None, None, 0.0
        if extra is not None:
            called = time.perf_counter()
            value = extra()
            call = time.perf_counter() - called
        sync(device)
        steps += 1
        return time.perf_counter() - started, call, value, called

    def overlapped(running: Callable[[], bool]) -> list[float]:
        times = []
        while len(times) < MAX_OVERLAP_STEPS and running():
            times.append(step()[0])
        return times

    def recover() -> None:
        for _ in range(RECOVERY_STEPS):
            step()

    try:
        session.start()
        state_bytes = sum(t.numel() * t.element_size() for t in model.parameters()) * 3
        report["model"] = {"width": width, "layers": layers, "batch": batch, "dtype": "float32",
                           "optimizer": "Adam", "state_bytes": state_bytes}
        say(f"{label_of(size)}: loop of {layers} x Linear({width}) + Adam, batch {batch}")
        for _ in range(WARMUP_STEPS):
            step()
        base = [step()[0] for _ in range(BASELINE_STEPS)]
        report["baseline step"] = median(base)
        report["baseline steps"] = len(base)

        # trainsup, Saving(in_background=True): a first save pays for its pinned buffers
        try:
            first, first_call, _, _ = step(session.save)
            session.wait_for_save()
            recover()
            stall, call, _, began = step(session.save)
            busy = overlapped(lambda: background_running(session))
            waited = time.perf_counter()
            session.wait_for_save()
            ended = time.perf_counter()
            report["trainsup async"] = {
                "first stall step": first, "first save call": first_call,
                "stall step": stall, "save call": call,
                "overlap steps": len(busy), "overlap step mean": mean(busy),
                "overlap step median": median(busy), "overlap step max": max(busy, default=None),
                "drain wait": ended - waited, "durable after": ended - began,
            }
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            report["trainsup async"] = {"error": describe(exc)}
            with contextlib.suppress(BaseException):
                session.wait_for_save()
        recover()

        # trainsup blocking: the same code path as Saving(in_background=False), on this session
        try:
            blocking, call, _, _ = step(lambda: session.save(wait=True))
            report["trainsup blocking"] = {"step": blocking, "save call": call}
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            report["trainsup blocking"] = {"error": describe(exc)}
        recover()

        # DCP async_save, pinned staging cache on CUDA (as trainsup keeps its pinned buffers)
        if dcp.error:
            report["dcp async"] = {"error": dcp.error}
        else:
            try:
                pinned = is_cuda(device)
                writer = dcp.writer(loop_dir / "dcp-0", pinned=pinned)

                def dcp_save(index: int) -> Callable[[], Any]:
                    def start() -> Any:
                        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                        return dcp.async_save(state, loop_dir / f"dcp-{index}", writer)
                    return start

                first, first_call, future, _ = step(dcp_save(0))
                result_of(future)
                shutil.rmtree(loop_dir / "dcp-0", ignore_errors=True)
                recover()
                stall, call, future, began = step(dcp_save(1))
                busy = overlapped(lambda: not done(future))
                waited = time.perf_counter()
                result_of(future)
                ended = time.perf_counter()
                report["dcp async"] = {
                    "writer": "FileSystemWriter(sync_files=True" + (", cache_staged_state_dict=True)" if pinned else ")"),
                    "first stall step": first, "first save call": first_call,
                    "stall step": stall, "save call": call,
                    "overlap steps": len(busy), "overlap step mean": mean(busy),
                    "overlap step median": median(busy), "overlap step max": max(busy, default=None),
                    "drain wait": ended - waited, "durable after": ended - began,
                }
                del writer
            except Exception as exc:  # noqa: BLE001
                report["dcp async"] = {"error": describe(exc)}
        report["steps"] = steps
    finally:
        with contextlib.suppress(BaseException):
            session.close()
        del session, optimizer, model, inputs, targets
        shutil.rmtree(loop_dir, ignore_errors=True)
        free_memory(device)
    return report


# --- one size, all sizes ------------------------------------------------------------

def bench_one(size: int, repeats: int, root: Path, device: str, dcp: Dcp) -> dict[str, Any]:
    label = label_of(size)
    started = time.perf_counter()
    result: dict[str, Any] = {"bytes": size, "repeats": repeats, "rows": {}, "loop": {}}
    rows_dir = root / "rows"
    clear_dir(rows_dir)
    say(f"{label}: torch.save, +fsync, power-safe, trainsup async x{repeats} (bench_checkpoint.bench_size)")
    try:
        with state_made_on(device):
            figures = bench_checkpoint.bench_size(size, repeats, rows_dir, device)
        result["rows"].update({name: figures.get(name, "error: missing") for name in _BENCH_SIZE_ROWS})
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (a trainsup error in a `with Session` exits)
        result["rows"].update({name: describe(exc) for name in _BENCH_SIZE_ROWS})
    finally:
        shutil.rmtree(rows_dir, ignore_errors=True)
        free_memory(device)
    try:
        result["rows"].update(dcp_rows(size, repeats, root, device, dcp))
    except Exception as exc:  # noqa: BLE001
        result["rows"].update({name: describe(exc) for name in ROWS[5:]})
    try:
        result["loop"] = training_loop(size, device, root, dcp)
    except Exception as exc:  # noqa: BLE001
        result["loop"] = {"error": describe(exc)}
    free_memory(device)
    result["elapsed_s"] = time.perf_counter() - started
    say(f"{label}: done in {result['elapsed_s']:.1f} s")
    return result


def plan_repeats(size: int, repeats: int, seconds_per_byte: float | None, left_s: float | None) -> int:
    """The most repeats (1..repeats) whose projected time fits in `left_s`."""
    if seconds_per_byte is None or left_s is None:
        return repeats
    for r in range(repeats, 0, -1):
        if seconds_per_byte * size * (r * WRITES_PER_REPEAT + FIXED_WRITES) <= left_s:
            return r
    return 1


def run(device: str, sizes: list[int], repeats: int, root: Path, *, budget_s: float | None = 80.0) -> dict:
    """Measure checkpointing a `device`-resident state of each of `sizes` bytes, writing
    under `root` (a scratch folder is made there and removed). Never raises for a failed
    measurement: its value is "error: ..." or "n/a: ..." instead of seconds."""
    started = time.perf_counter()
    report: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "device": device, "device_name": None, "dir": str(root), "repeats": repeats, "budget_s": budget_s,
        "disk": None, "dcp": None, "trainsup_fsync_calls": None, "sizes": {},
        "notes": [
            "seconds; rows are medians of 'repeats' runs per size",
            "async stall (trainsup, from bench_size) with repeats < 3 includes the first save, "
            "which allocates the pinned buffers",
            "dcp async (pinned) rows exclude allocating DCP's pinned cache (staged once before timing)",
            "loop: 'stall step' is a whole training step that also starts the save; 'save call' is the save "
            "call alone; 'overlap step mean' is over up to %d steps while the write runs" % MAX_OVERLAP_STEPS,
            "loop: trainsup blocking = session.save(wait=True), the same path as Saving(in_background=False)",
        ],
    }
    if is_cuda(device) and not torch.cuda.is_available():
        report["error"] = f"device {device} asked for, but torch.cuda.is_available() is False"
        return report
    if is_cuda(device):
        if torch.device(device).index is not None:
            with contextlib.suppress(Exception):
                torch.cuda.set_device(torch.device(device))
        with contextlib.suppress(Exception):
            report["device_name"] = torch.cuda.get_device_name(torch.device(device))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".bench-gpu-checkpoint-", dir=root))
    dcp: Dcp | None = None
    try:
        with quiet():
            say(f"device {device} ({report['device_name'] or platform.processor() or 'cpu'}), torch {torch.__version__}, "
                f"writing under {scratch}")
            probe_bytes = (256 if is_cuda(device) else 16) * 10**6
            try:
                report["disk"] = fsync_bandwidth(scratch, probe_bytes, reps=2)
                say(f"disk: write+fsync {report['disk']['mb_per_s']:.0f} MB/s ({probe_bytes // 10**6} MB)")
            except Exception as exc:  # noqa: BLE001
                report["disk"] = {"error": describe(exc)}
            dcp = Dcp(device, scratch)
            report["dcp"] = dcp.info()
            report["trainsup_fsync_calls"] = trainsup_fsyncs(scratch)
            say(f"dcp: {dcp.error or dcp.mode}")
            # seconds per byte written, first from the disk probe (x1.5 for serialisation), then measured
            mb_per_s = (report["disk"] or {}).get("mb_per_s")
            per_byte = 1.5 / (mb_per_s * 1e6) if mb_per_s else None
            for size in sizes:
                left = None if budget_s is None else budget_s - (time.perf_counter() - started)
                use = plan_repeats(size, repeats, per_byte, left)
                if use < repeats:
                    say(f"{label_of(size)}: {use} repeat(s), not {repeats}, to stay within {budget_s:.0f} s")
                result = bench_one(size, use, scratch, device, dcp)
                report["sizes"][label_of(size)] = result
                per_byte = result["elapsed_s"] / (size * (use * WRITES_PER_REPEAT + FIXED_WRITES))
    finally:
        if dcp is not None:
            dcp.close()
        shutil.rmtree(scratch, ignore_errors=True)
    report["elapsed_s"] = time.perf_counter() - started
    return report


# --- printing -----------------------------------------------------------------------

LOOP_LINES = [
    ("loop: baseline step", lambda l: l.get("error", l.get("baseline step"))),
    ("loop: trainsup async first stall step", lambda l: _part(l, "trainsup async", "first stall step")),
    ("loop: trainsup async stall step", lambda l: _part(l, "trainsup async", "stall step")),
    ("loop: trainsup async save call", lambda l: _part(l, "trainsup async", "save call")),
    ("loop: trainsup async overlap step", lambda l: _part(l, "trainsup async", "overlap step mean")),
    ("loop: trainsup async durable after", lambda l: _part(l, "trainsup async", "durable after")),
    ("loop: trainsup blocking step", lambda l: _part(l, "trainsup blocking", "step")),
    ("loop: dcp async first stall step", lambda l: _part(l, "dcp async", "first stall step")),
    ("loop: dcp async stall step", lambda l: _part(l, "dcp async", "stall step")),
    ("loop: dcp async save call", lambda l: _part(l, "dcp async", "save call")),
    ("loop: dcp async overlap step", lambda l: _part(l, "dcp async", "overlap step mean")),
    ("loop: dcp async durable after", lambda l: _part(l, "dcp async", "durable after")),
]


def _part(loop: dict[str, Any], section: str, key: str) -> Any:
    if "error" in loop:
        return loop["error"]
    part = loop.get(section) or {}
    return part.get("error", part.get(key))


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4f}"
    if value is None:
        return "-"
    return str(value)[:40]


def table(report: dict[str, Any]) -> str:
    """The figures of `run` as a text table: one line per measurement, one column per size."""
    sizes = report.get("sizes", {})
    labels = list(sizes)
    lines = [f"checkpoint of a {report.get('device')}-resident state ({report.get('device_name') or ''}), "
             f"torch {report.get('torch')}; seconds, medians"]
    if report.get("error"):
        lines.append(f"error: {report['error']}")
    disk = report.get("disk") or {}
    if disk.get("mb_per_s"):
        lines.append(f"disk write+fsync: {disk['mb_per_s']:.0f} MB/s")
    dcp = report.get("dcp") or {}
    if dcp:
        lines.append(f"dcp: {dcp.get('error') or dcp.get('mode')}; sync_files={dcp.get('sync_files')}; "
                     f"fsync calls per save: {dcp.get('fsync_calls')}")
    if report.get("trainsup_fsync_calls"):
        lines.append(f"trainsup power-safe fsync calls per save: {report['trainsup_fsync_calls']}")
    if not labels:
        return "\n".join(lines)
    name_width = 40
    widths = [max(12, len(label) + 2) for label in labels]
    header = f"{'':<{name_width}}" + "".join(f"{label:>{w}}" for label, w in zip(labels, widths))
    lines.append(header)
    lines.append(f"{'repeats':<{name_width}}" + "".join(f"{sizes[l].get('repeats', '-'):>{w}}"
                                                        for l, w in zip(labels, widths)))
    for name in ROWS:
        cells = [_cell(sizes[l].get("rows", {}).get(name)) for l in labels]
        lines.append(_line(name, cells, widths, name_width))
    for name, get in LOOP_LINES:
        cells = [_cell(get(sizes[l].get("loop", {}))) for l in labels]
        lines.append(_line(name, cells, widths, name_width))
    lines.append(_line("loop: overlap steps (trainsup / dcp)",
                       [f"{_part(sizes[l].get('loop', {}), 'trainsup async', 'overlap steps')}/"
                        f"{_part(sizes[l].get('loop', {}), 'dcp async', 'overlap steps')}"[:12] for l in labels],
                       widths, name_width))
    lines.append(_line("elapsed", [_cell(sizes[l].get("elapsed_s")) for l in labels], widths, name_width))
    if report.get("elapsed_s") is not None:
        lines.append(f"total {report['elapsed_s']:.1f} s")
    errors = [(l, k, v) for l in labels for k, v in _flat(sizes[l]) if isinstance(v, str) and v.startswith("error")]
    for label, key, value in errors:
        lines.append(f"{label} {key}: {value}")
    return "\n".join(lines)


def _line(name: str, cells: list[str], widths: list[int], name_width: int) -> str:
    # a long error string gets its own column width; the full text is printed below the table
    return f"{name:<{name_width}}" + "".join(f"{c[:w - 1]:>{w}}" for c, w in zip(cells, widths))


def _flat(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _flat(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, obj


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="1GB,4GB", help="comma-separated, e.g. 20MB,1GB,4GB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where to write (a real disk)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--budget-s", type=float, default=80.0,
                        help="lower a size's repeats when the run would take longer (0: never)")
    args = parser.parse_args(argv)
    sizes = [parse_size(text.strip()) for text in args.sizes.split(",") if text.strip()]
    report = run(args.device, sizes, max(1, args.repeats), args.dir, budget_s=args.budget_s or None)
    print(table(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if report.get("error"):
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
