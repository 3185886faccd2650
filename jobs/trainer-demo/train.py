"""A small classifier on synthetic data, made resumable with trainsup.trainer.

Standalone:   python train.py --checkpoint-dir /tmp/demo-ckpt   (Ctrl+C, run again: it resumes)
Under trainsup: trainsup submit job.yaml   (the checkpoint dir and batch sizes come from TRAINSUP_*)
The lines marked `# trainsup` are all the integration there is.
"""

import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainsup import trainer  # trainsup

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--lr", type=float, default=1e-2)
parser.add_argument("--checkpoint-dir", default=None)
parser.add_argument("--patience", type=int, default=3, help="stop after this many epochs without a better val_acc")
args = parser.parse_args()

torch.manual_seed(0)
features = torch.randn(4096, 32)
labels = (features[:, :4].sum(dim=1) > 0).long()
train_set = TensorDataset(features[:3584], labels[:3584])
val_x, val_y = features[3584:], labels[3584:]

batch = trainer.Batch.from_env(micro=64, grad_accum=2)  # trainsup: micro-batch may shrink after an OOM, global stays 128
loader = DataLoader(train_set, batch_size=batch.micro, sampler=trainer.ResumableSampler(train_set, seed=0))  # trainsup
model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(128, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(loader) // batch.grad_accum)
state = {"history": [], "best_acc": 0.0, "bad_epochs": 0}

with trainer.Session(model, optimizer, scheduler, extra=state, checkpoint_dir=args.checkpoint_dir, batch=batch,  # trainsup
                     saving=trainer.Saving(every_steps=20),
                     retention=trainer.Retention(keep_best=1, metric="val_acc", mode="max")) as session:
    for epoch in session.epochs(args.epochs):  # trainsup
        model.train()
        for step in session.steps(loader):  # trainsup
            for x, y in step:
                loss = torch.nn.functional.cross_entropy(model(x), y) / len(step)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            session.step_done(loss=loss.item() * len(step))  # trainsup
        model.eval()
        with torch.no_grad():
            acc = (model(val_x).argmax(dim=1) == val_y).float().mean().item()
        state["history"].append(acc)
        state["bad_epochs"] = 0 if acc > state["best_acc"] else state["bad_epochs"] + 1
        state["best_acc"] = max(state["best_acc"], acc)
        session.report(val_acc=acc)
        print(f"epoch {epoch}: val_acc {acc:.3f} (best {state['best_acc']:.3f})", flush=True)
        if state["bad_epochs"] >= args.patience:
            break
