"""A small real training run on trainsup.trainer for the Slurm and `trainsup run` tests.

12 optimizer steps per epoch; checkpoints every `--save-every` steps and on SIGTERM
(then exits 75). `--crash-at N` dies with exit 1 when it reaches step N in its first
attempt only; `--crash-always` dies at that step in every attempt. At the end it writes
`{"step": ..., "attempt": ...}` to --out, so a test checks the final step exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainsup import trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument("--crash-at", type=int, default=None)
    parser.add_argument("--crash-always", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(96, 8, generator=data), torch.randint(0, 3, (96,), generator=data))
    batch = trainer.Batch.from_env(micro=4, grad_accum=2)
    loader = DataLoader(dataset, batch_size=batch.micro, sampler=trainer.ResumableSampler(dataset, seed=7))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    attempt = int(os.environ.get("TRAINSUP_ATTEMPT", "1"))
    crash = args.crash_at is not None and (args.crash_always or attempt == 1)

    with trainer.Session(model, optimizer, checkpoint_dir=None, batch=batch,
                         saving=trainer.Saving(every_steps=args.save_every, every_seconds=None)) as session:
        print(f"event start step {session.step} attempt {attempt}", flush=True)
        for _epoch in session.epochs(args.epochs):
            for step in session.steps(loader):
                for x, y in step:
                    loss = torch.nn.functional.cross_entropy(model(x), y) / len(step)
                    loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                time.sleep(args.step_delay)
                session.step_done(loss=loss.item())
                print(f"event step {session.step}", flush=True)
                if crash and session.step == args.crash_at:
                    print(f"event crash at step {session.step}", flush=True)
                    sys.exit(1)

    with open(args.out, "w") as handle:
        json.dump({"step": session.step, "attempt": attempt}, handle)
    print("event done", flush=True)


if __name__ == "__main__":
    main()
