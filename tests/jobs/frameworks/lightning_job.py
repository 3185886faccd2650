"""A Lightning user's training script, run under trainsup as is (generic mode: it never
imports trainsup). A 2-layer MLP on seeded random tensors; ModelCheckpoint every K steps
plus last.ckpt; `--ckpt-path` resumes (the job spec fills it from the newest *.ckpt).

    python lightning_job.py --steps 60 --save-every 10 [--ckpt-path X.ckpt] [--out result.json]
"""

import argparse
import json
import os
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--save-every", type=int, default=10)
parser.add_argument("--step-delay", type=float, default=0.02, help="seconds of sleep per step")
parser.add_argument("--ckpt-dir", default=os.environ.get("TRAINSUP_CHECKPOINT_DIR", "checkpoints"))
parser.add_argument("--ckpt-path", default=None, help="a checkpoint to resume from")
parser.add_argument("--out", default=None, help="at a normal end, write {global_step, epoch} here as JSON")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        if args.step_delay:
            time.sleep(args.step_delay)
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class PrintSteps(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        print(f"step {trainer.global_step} loss {outputs['loss'].item():.4f}", flush=True)


L.seed_everything(args.seed, verbose=False)
generator = torch.Generator().manual_seed(args.seed)
x = torch.randn(256, 16, generator=generator)
y = torch.randint(0, 4, (256,), generator=generator)
loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=generator)

checkpoints = ModelCheckpoint(dirpath=args.ckpt_dir, every_n_train_steps=args.save_every,
                              save_last=True, save_top_k=-1)
trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[checkpoints, PrintSteps()])
model = Net()
print(f"resuming from {args.ckpt_path}" if args.ckpt_path else "starting fresh", flush=True)
# On SIGTERM, Lightning finishes the current step and raises SystemExit (exit 0) out of fit:
# no checkpoint, and nothing below runs.
trainer.fit(model, loader, ckpt_path=args.ckpt_path)
print(f"finished at step {trainer.global_step} epoch {trainer.current_epoch}", flush=True)
if args.out:
    with open(args.out, "w") as handle:
        json.dump({"global_step": trainer.global_step, "epoch": trainer.current_epoch}, handle)
