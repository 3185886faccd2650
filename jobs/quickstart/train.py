"""A small real training job: an MLP learning a synthetic classification task on CPU.

About 30 s on 2 cores. The five lines marked `# trainsup` make it power-safe and
resumable: checkpoints every few seconds, exact resume (weights, optimizer,
scheduler, RNG, data position), SIGTERM → checkpoint → exit 75, heartbeats.
Standalone: python train.py --checkpoint-dir /tmp/ckpt  (Ctrl+C and run again: it resumes)
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainsup import trainer  # trainsup

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--checkpoint-dir", default=None)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
inputs = torch.randn(16384, 64)
labels = (inputs[:, :8].sum(dim=1) > 0).long()
dataset = TensorDataset(inputs, labels)
loader = DataLoader(dataset, batch_size=64, sampler=trainer.ResumableSampler(dataset, seed=0))  # trainsup
model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=500, gamma=0.5)
history = {"accuracy": []}

with trainer.Session(model, optimizer, scheduler, extra=history, checkpoint_dir=args.checkpoint_dir,  # trainsup
                     saving=trainer.Saving(every_seconds=3.0), retention=trainer.Retention(keep_last=3)) as session:
    print(f"starting at epoch {session.epoch}, step {session.step}", flush=True)
    for epoch in session.epochs(args.epochs):  # trainsup
        for step in session.steps(loader):  # trainsup
            for x, y in step:
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            session.step_done(loss=loss.item())  # trainsup
        accuracy = (model(inputs).argmax(dim=1) == labels).float().mean().item()
        history["accuracy"].append(accuracy)
        print(f"epoch {epoch}: step {session.step}, loss {loss.item():.4f}, accuracy {accuracy:.3f}", flush=True)
