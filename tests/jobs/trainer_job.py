"""A small real training run on trainsup.trainer, for the service tests.

Deterministic for a fixed seed, with dropout and data shuffling so that an exact
resume matters. Under the daemon it checkpoints to $TRAINSUP_CHECKPOINT_DIR and turns
SIGTERM into "checkpoint, exit 75"; at the end it writes the final weights to --out.
Prints `event step N` after every optimizer step so tests can synchronise.
`--num-workers 2` loads the data in DataLoader worker processes (forked, one pair per
epoch), the case where a stop must reach the main process only.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainsup import trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--samples", type=int, default=96)
    args = parser.parse_args()

    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(args.samples, 8, generator=data),
                            torch.randint(0, 3, (args.samples,), generator=data))
    batch = trainer.Batch.from_env(micro=4, grad_accum=2)
    loader = DataLoader(dataset, batch_size=batch.micro, sampler=trainer.ResumableSampler(dataset, seed=7),
                        num_workers=args.num_workers)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)

    with trainer.Session(model, optimizer, scheduler, checkpoint_dir=args.checkpoint_dir, batch=batch,
                         saving=trainer.Saving(every_steps=args.save_every, every_seconds=None)) as session:
        print(f"event start step {session.step}", flush=True)
        for _epoch in session.epochs(args.epochs):
            for step in session.steps(loader):
                for x, y in step:
                    loss = torch.nn.functional.cross_entropy(model(x), y) / len(step)
                    loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                scheduler.step()
                time.sleep(args.step_delay)
                session.step_done(loss=loss.item())
                print(f"event step {session.step}", flush=True)

    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": session.step}, args.out)
    print("event done", flush=True)


if __name__ == "__main__":
    main()
