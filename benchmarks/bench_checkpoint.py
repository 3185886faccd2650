"""What power safety costs: save times for the same state, in the same run.

For each size, a model of 1024-wide Linear layers with about that many bytes of parameters;
the median of --repeats rounds, each running the first four once, in turn:
  disk floor         the bytes of that torch.save file written with os.write, then fsync
                     (each round starts with the next row in turn, see `timed`)
  torch.save         plain torch.save to a file (page cache only)
  torch.save+fsync   the same, then fsync the file
  power-safe         trainsup's protocol as a Session saves: temp dir, torch.save (without
                     torch's per-record CRC-32) through a BLAKE3 (sha256 without the blake3
                     package), fsync files, manifest, fsync dir, rename, fsync parent,
                     LATEST, retention
and then, with the same model trained by a loop on every core (forward, backward and an
SGD step of --batch rows through its layers, as a training step does) and a Session saving
with Saving(in_background=True) between two of its steps (heartbeats on, as under the daemon):
  loop step          the loop's median step without a save (for scale)
  save in the loop   the alternative to a background save: the same Session's save(wait=True)
                     between two steps of that loop (the same state, caches and load)
  async stall        how long the loop's thread waits: in save(), plus the wait of the
                     optimizer's next step for the copy of its tensors
  async durable      from the start of that save until it is durable in the background
  async loop loss    the loop's time from the start of that save to the end of the first
                     step ending after it is durable, less as many steps without a save
                     (the median step of the round's steps just before it): what the save
                     cost training in all (its copy, a thread lent to the writer, the
                     writer's CPU and memory traffic)
The async rows take 3 x --repeats rounds (each round is a few steps; the loop's figures
are noisier than a save's on a shared machine). Then the same rounds again with
TRAINSUP_OPENMP_RELEASE=0, the alternative to letting torch's idle OpenMP workers go at a
background save on a CPU loop (`trainsup/trainer/openmp.py`):
  kept: async stall, async durable, async loop loss

    python benchmarks/bench_checkpoint.py [--sizes 10MB,100MB,1GB] [--repeats 5] [--dir PATH]
                                          [--batch 32] [--device cuda] [--json PATH]

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
from trainsup.trainer.environment import ENV_OPENMP_RELEASE  # noqa: E402
from trainsup.trainer.saving import state_writer  # noqa: E402
from trainsup.units import parse_size  # noqa: E402

HEADER = ["disk floor", "torch.save", "torch.save+fsync", "power-safe", "loop step", "save in the loop",
          "async stall", "async durable", "async loop loss", "kept: async durable", "kept: async loop loss"]
RATIOS = {"safe/save+fsync": ("power-safe", "torch.save+fsync"), "safe/floor": ("power-safe", "disk floor"),
          "stall/safe": ("async stall", "power-safe"), "durable/safe": ("async durable", "power-safe"),
          "loss/safe": ("async loop loss", "power-safe"), "stall/in loop": ("async stall", "save in the loop"),
          "durable/in loop": ("async durable", "save in the loop"), "loss/in loop": ("async loop loss", "save in the loop"),
          "durable/kept": ("async durable", "kept: async durable")}
WIDTH = 1024


def model_of(size: int) -> torch.nn.Module:
    """An MLP of 1024-wide layers (4 MiB of weights each) whose parameters take about `size` bytes."""
    layer_bytes = 4 * (WIDTH * WIDTH + WIDTH)
    layers = max(1, round(size / layer_bytes))
    return torch.nn.Sequential(*[m for _ in range(layers) for m in (torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU())])


def timed(works: dict[str, tuple[Callable[[], None], Callable[[], None]]], repeats: int) -> dict[str, float]:
    """The median seconds of each (work, reset) in `works`, run in turn once per round (noise hits all alike).

    Each round starts with the next one in turn: on a disk mounted with `discard` (this VM's),
    the first write after a reset waits for the discard of the GiB the reset freed, and in a
    fixed order that penalty would always fall on the same row."""
    samples: dict[str, list[float]] = {name: [] for name in works}
    names = list(works)
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            work, reset = works[name]
            reset()
            started = time.perf_counter()
            work()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in samples.items()}


def write_fsync(path: Path, data: bytes, chunk: int = 4 << 20) -> None:
    """The disk floor: `data` (the torch.save file's own bytes) with os.write, then fsync.

    The same bytes, because what a disk takes depends on them: on this VM's host, 1 GB of
    random bytes took 2.5-3.5 s to become durable, 1 GB of one 4 MiB block repeated 0.7 s,
    and a torch.save file of float32 weights about 1 s."""
    view = memoryview(data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for start in range(0, len(view), chunk):
            piece = view[start:start + chunk]
            while piece:
                piece = piece[os.write(fd, piece):]
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_size(size: int, repeats: int, root: Path, device: str, batch: int = 32) -> dict[str, float]:
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
    data = target.read_bytes()
    results = timed({
        "disk floor": (lambda: write_fsync(floor, data), clean),
        "torch.save": (lambda: torch.save(state, target), clean),
        "torch.save+fsync": (save_fsync, clean),
        "power-safe": (power_safe, prepare_checkpoints),
    }, repeats)
    clean()
    results.update(bench_async(model, repeats, root / "async", device, batch))
    kept = bench_async(model, repeats, root / "async-kept", device, batch, release_workers=False)
    results.update({f"kept: {row}": kept[row] for row in ("async stall", "async durable", "async loop loss")})
    results["state bytes"] = sum(t.numel() * t.element_size() for t in state["model"].values())
    clean()
    return results


def bench_async(model: torch.nn.Module, repeats: int, root: Path, device: str, batch: int,
                release_workers: bool = True) -> dict[str, float]:
    """Background saves between the steps of a loop training `model`; each round, as many
    steps without a save as the last save window had (at least 3), then a save window.
    `release_workers`: as TRAINSUP_OPENMP_RELEASE says (on by default)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    rows = torch.randn(batch, WIDTH, device=device)

    def train_step() -> None:
        optimizer.zero_grad()
        model(rows).square().mean().backward()
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()

    stalls: list[float] = []
    durable: list[float] = []
    losses: list[float] = []
    base: list[float] = []
    in_loop: list[float] = []
    # heartbeats as under the daemon: a save's beats are part of what the loop waits for
    environ = {"TRAINSUP_SNAPSHOTS": "0", "TRAINSUP_HEARTBEAT": str(root / "heartbeat"),
               ENV_OPENMP_RELEASE: "1" if release_workers else "0"}
    with Session(model, optimizer, checkpoint_dir=root / "checkpoints", handle_signals=False, environ=environ,
                 saving=Saving(every_seconds=None, every_epoch=False, on_exit=False, in_background=True),
                 retention=Retention(keep_last=1)) as session:
        saver = session._saver  # noqa: SLF001 (when the save ended, and the loop's waits, without waiting)
        background = saver._background  # noqa: SLF001
        for _ in range(2):
            train_step()
            session.step_done()
        steps = 3
        for _ in range(3 * repeats):
            before: list[float] = []
            for _ in range(steps):
                started = time.monotonic()
                train_step()
                session.step_done()
                before.append(time.monotonic() - started)
            base.extend(before)
            waited = saver.waited_s
            started = time.monotonic()
            session.save()
            stall = time.monotonic() - started
            steps = 0
            while True:
                done = background.done
                train_step()
                session.step_done()  # gives the lent thread back once the save is durable
                steps += 1
                if done:
                    break
            ended = time.monotonic()
            session.wait_for_save()
            stalls.append(stall + saver.waited_s - waited)
            durable.append(background.finished_at - started)
            losses.append(ended - started - steps * statistics.median(before))
            steps = max(3, steps)
            for _ in range(3):
                train_step()
                session.step_done()
            started = time.monotonic()
            session.save(wait=True)  # the alternative: the loop stops for a synchronous save
            in_loop.append(time.monotonic() - started)
    return {"loop step": statistics.median(base), "async stall": statistics.median(stalls),
            "async durable": statistics.median(durable), "async loop loss": statistics.median(losses),
            "save in the loop": statistics.median(in_loop)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10MB,100MB", help="comma-separated, e.g. 10MB,100MB,1GB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where to write (a real disk)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--device", default="cpu", help="where the state lives, e.g. cuda")
    parser.add_argument("--batch", type=int, default=32, help="rows per step of the training loop")
    args = parser.parse_args()
    import logging

    logging.getLogger("trainsup.trainer").setLevel(logging.WARNING)
    sizes = [(text.strip(), parse_size(text.strip())) for text in args.sizes.split(",") if text.strip()]
    root = Path(tempfile.mkdtemp(prefix=".bench-checkpoint-", dir=args.dir))
    report: dict[str, object] = {"torch": torch.__version__, "dir": str(args.dir), "device": args.device,
                                 "repeats": args.repeats, "batch": args.batch, "threads": torch.get_num_threads(),
                                 "sizes": {}}
    try:
        print(f"writing to {args.dir}; medians of {args.repeats} runs, seconds")
        print("  ".join(f"{h:>16}" for h in ["size", *HEADER, *RATIOS]))
        for label, size in sizes:
            figures = bench_size(size, args.repeats, root, args.device, args.batch)
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
