"""What power safety costs: save times for the same state, in the same run.

For each size, the median of --repeats rounds; each round runs the first four once, in turn:
  disk floor         the bytes of that torch.save file written with os.write, then fsync
  torch.save         plain torch.save to a file (page cache only)
  torch.save+fsync   the same, then fsync the file
  power-safe         trainsup's protocol as a Session saves: temp dir, torch.save (without
                     torch's per-record CRC-32) through a BLAKE3 (sha256 without the blake3
                     package), fsync files, manifest, fsync dir, rename, fsync parent,
                     LATEST, retention
  async stall        how long the training loop waits with Saving(in_background=True) (CPU snapshot)
  async durable      from the start of that save until it is durable in the background, while
                     a training loop (an MLP on every core) runs in the loop's thread

    python benchmarks/bench_checkpoint.py [--sizes 10MB,100MB,1GB] [--repeats 5] [--dir PATH]
                                          [--device cuda] [--json PATH]

Write to a real disk (--dir): on tmpfs, fsync costs nothing and the figures mislead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainsup.trainer import CheckpointDir, Retention, Saving, Session  # noqa: E402
from trainsup.trainer.saving import state_writer  # noqa: E402
from trainsup.units import parse_size  # noqa: E402

HEADER = ["disk floor", "torch.save", "torch.save+fsync", "power-safe", "async stall", "async durable"]
RATIOS = {"safe/save+fsync": ("power-safe", "torch.save+fsync"), "safe/floor": ("power-safe", "disk floor"),
          "stall/safe": ("async stall", "power-safe"), "durable/safe": ("async durable", "power-safe")}


def model_of(size: int) -> torch.nn.Module:
    """A module whose parameters take `size` bytes, in 8 MiB tensors like a real model's layers."""
    model = torch.nn.Module()
    chunk = 2 << 20  # float32 elements
    remaining, index = size // 4, 0
    while remaining > 0:
        n = min(chunk, remaining)
        model.register_parameter(f"p{index}", torch.nn.Parameter(torch.randn(n)))
        remaining, index = remaining - n, index + 1
    return model


def timed(works: dict[str, tuple[Callable[[], None], Callable[[], None]]], repeats: int) -> dict[str, float]:
    """The median seconds of each (work, reset) in `works`, run in turn once per round (noise hits all alike)."""
    samples: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, (work, reset) in works.items():
            reset()
            started = time.perf_counter()
            work()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in samples.items()}


def write_fsync(path: Path, size: int, chunk: int = 4 << 20) -> None:
    """The disk floor: `size` bytes with os.write, then fsync (as benchmarks/common.fsync_bandwidth)."""
    block = os.urandom(min(chunk, size))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, block[:min(chunk, left)])
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_size(size: int, repeats: int, root: Path, device: str) -> dict[str, float]:
    model = model_of(size).to(device)
    state = {"model": model.state_dict()}
    target = root / "plain.pt"
    floor = root / "floor.bin"

    def clean() -> None:
        for path in (target, floor):
            if path.exists():
                path.unlink()
        for path in root.iterdir():
            if path.is_dir():
                shutil.rmtree(path)

    def save_fsync() -> None:
        with open(target, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())

    checkpoints = CheckpointDir(root / "checkpoints", retention=Retention(keep_last=1))
    step = iter(range(1, 10**6))

    def power_safe() -> None:
        meta = {"epoch": 0, "position": 0, "torch_version": torch.__version__, "created": time.time()}
        checkpoints.save(next(step), {"state.pt": state_writer(state)}, meta)

    def prepare_checkpoints() -> None:
        clean()
        checkpoints.prepare()

    clean()
    torch.save(state, target)
    file_size = target.stat().st_size
    results = timed({
        "disk floor": (lambda: write_fsync(floor, file_size), clean),
        "torch.save": (lambda: torch.save(state, target), clean),
        "torch.save+fsync": (save_fsync, clean),
        "power-safe": (power_safe, prepare_checkpoints),
    }, repeats)
    stalls, durable = [], []
    clean()
    train_step = training_load()
    with Session(model, checkpoint_dir=root / "async", handle_signals=False, environ={"TRAINSUP_SNAPSHOTS": "0"},
                 saving=Saving(every_seconds=None, on_exit=False, in_background=True),
                 retention=Retention(keep_last=1)) as session:
        background = session._saver._background  # noqa: SLF001 (when the save ended, without waiting for it)
        for _ in range(repeats):
            session.step_done()
            started = time.monotonic()
            session.save()
            stalls.append(time.monotonic() - started)
            while not background.done:
                train_step()
            session.wait_for_save()
            durable.append(background.finished_at - started)
    results["async stall"] = statistics.median(stalls)
    results["async durable"] = statistics.median(durable)
    clean()
    return results


def training_load() -> Callable[[], None]:
    """One step of an MLP's training (forward, backward, SGD), on every core torch uses."""
    net = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    batch = torch.randn(256, 1024)

    def step() -> None:
        optimizer.zero_grad()
        net(batch).square().mean().backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10MB,100MB", help="comma-separated, e.g. 10MB,100MB,1GB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where to write (a real disk)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--device", default="cpu", help="where the state lives, e.g. cuda")
    args = parser.parse_args()
    import logging

    logging.getLogger("trainsup.trainer").setLevel(logging.WARNING)
    sizes = [(text.strip(), parse_size(text.strip())) for text in args.sizes.split(",") if text.strip()]
    root = Path(tempfile.mkdtemp(prefix=".bench-checkpoint-", dir=args.dir))
    report: dict[str, object] = {"torch": torch.__version__, "dir": str(args.dir), "device": args.device,
                                 "repeats": args.repeats, "sizes": {}}
    try:
        print(f"writing to {args.dir}; medians of {args.repeats} runs, seconds")
        print("  ".join(f"{h:>16}" for h in ["size", *HEADER, *RATIOS]))
        for label, size in sizes:
            figures = bench_size(size, args.repeats, root, args.device)
            report["sizes"][label] = figures  # type: ignore[index]
            ratios = [figures[a] / figures[b] for a, b in RATIOS.values()]
            print("  ".join([f"{label:>16}"] + [f"{figures[h]:>16.4f}" for h in HEADER]
                            + [f"{r:>15.2f}x" for r in ratios]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
