"""A tiny training run driven by the subprocess tests: prints `event ...` lines
the tests synchronise kills on, and writes its final state to --out."""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainsup import trainer  # noqa: E402
from trainsup.trainer import rng  # noqa: E402


def event(text: str) -> None:
    """One line in one write: `print` writes the text and its newline apart, so a line of
    the background save's thread could land between them and hide both from the test."""
    sys.stdout.write(f"event {text}\n")
    sys.stdout.flush()


class SlowOps(trainer.FileOps):
    """Announces each file-system step of a save, so a test can kill in the middle."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.count = 0

    def _announce(self, name: str) -> None:
        self.count += 1
        event(f"saveop {self.count} {name}")
        time.sleep(self.delay)

    def mkdir(self, path):  # type: ignore[no-untyped-def]
        self._announce("mkdir")
        super().mkdir(path)

    def write_file(self, path, write):  # type: ignore[no-untyped-def]
        self._announce("write")
        super().write_file(path, write)

    def fsync_file(self, path):  # type: ignore[no-untyped-def]
        self._announce("fsync_file")
        super().fsync_file(path)

    def fsync_dir(self, path):  # type: ignore[no-untyped-def]
        self._announce("fsync_dir")
        super().fsync_dir(path)

    def rename(self, src, dst):  # type: ignore[no-untyped-def]
        self._announce("rename")
        super().rename(src, dst)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=3)
    parser.add_argument("--save-in-background", action="store_true")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--step-delay", type=float, default=0.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    data = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.arange(60), torch.randn(60, 8, generator=data), torch.randint(0, 3, (60,), generator=data))
    batch = trainer.Batch.from_env(micro=4, grad_accum=2)
    loader = DataLoader(dataset, batch_size=batch.micro, sampler=trainer.ResumableSampler(dataset, seed=7),
                        num_workers=args.workers)
    model = torch.nn.Sequential(torch.nn.Linear(8, args.hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(args.hidden, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
    state = {"seen": [], "history": [], "best": None, "epoch_losses": []}
    slow = float(os.environ.get("TEST_SLOW_SAVE", "0"))

    with trainer.Session(model, optimizer, scheduler, extra=state, checkpoint_dir=args.checkpoint_dir,
                         saving=trainer.Saving(every_steps=args.save_every, every_seconds=None,
                                               in_background=args.save_in_background),
                         batch=batch, ops=SlowOps(slow) if slow else None) as session:
        for epoch in session.epochs(args.epochs):
            event(f"epoch {epoch}")
            for step in session.steps(loader):
                for i, (ids, x, y) in enumerate(step):
                    x = x * (1 + 0.01 * np.random.rand()) + 0.01 * torch.randn_like(x) + random.random() * 1e-3
                    loss = torch.nn.functional.cross_entropy(model(x), y) / len(step)
                    loss.backward()
                    state["seen"].extend(ids.tolist())
                    event(f"micro {session.step} {i}")
                optimizer.step()
                optimizer.zero_grad()
                scheduler.step()
                state["epoch_losses"].append(loss.item())
                session.step_done(loss=loss.item())
                event(f"step {session.step}")
                time.sleep(args.step_delay)
            losses, state["epoch_losses"] = state["epoch_losses"], []
            mean = sum(losses) / max(len(losses), 1)
            state["history"].append(mean)
            state["best"] = mean if state["best"] is None else min(state["best"], mean)
            session.report(train_loss=mean)

    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng.capture(), "extra": state,
                "step": session.step}, args.out)
    event("done")


if __name__ == "__main__":
    main()
