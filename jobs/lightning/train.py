"""A small Lightning classifier on synthetic data, made power-safe with trainsup.

Standalone:     python train.py --steps 600              (Ctrl+C: it saves, exits 75; run again: it resumes)
Under trainsup: trainsup submit job.yaml                 (checkpoint dir, batch sizes from TRAINSUP_*)
The lines marked `# trainsup` are all the integration there is. `--save-delay` and `--step-delay`
only slow the job down so that the tests can kill it in the middle of a save.
"""

import argparse
import os
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainsup.integrations.lightning import (  # trainsup
    PowerSafeCheckpointIO, TrainsupCallback, batch_from_env, resume_checkpoint)

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=600)
parser.add_argument("--save-every", type=int, default=50)
parser.add_argument("--samples", type=int, default=512)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--ckpt-dir", default=os.environ.get("TRAINSUP_CHECKPOINT_DIR", "checkpoints"))
parser.add_argument("--out", default=None, help="at a normal end, torch.save {global_step, epoch, state_dict} here")
parser.add_argument("--step-delay", type=float, default=0.0, help="seconds of sleep per step")
parser.add_argument("--save-delay", type=float, default=0.0, help="seconds of sleep inside each checkpoint write")
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
    """Prints `step N loss L` after each optimizer step."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.last = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.last:
            self.last = trainer.global_step
            print(f"step {trainer.global_step} loss {outputs['loss'].item():.4f}", flush=True)


def slow_ops():
    """File operations that pause in the middle of each checkpoint write (for the tests)."""
    from trainsup.trainer.fsops import FileOps

    class SlowOps(FileOps):
        def write_file(self, path, write):
            def slowly(file):
                if ".ckpt.tmp-" in path.name:
                    print(f"saving {path.name}", flush=True)
                    time.sleep(args.save_delay)
                write(file)
            super().write_file(path, slowly)

    return SlowOps()


L.seed_everything(args.seed, verbose=False)
generator = torch.Generator().manual_seed(args.seed)
x = torch.randn(args.samples, 16, generator=generator)
y = torch.randint(0, 4, (args.samples,), generator=generator)
batch = batch_from_env(micro=32, accum=2)  # trainsup: the micro-batch may shrink after an OOM, 64 stays the global batch
loader = DataLoader(TensorDataset(x, y), batch_size=batch.micro, shuffle=True, generator=generator)

trainer = L.Trainer(
    max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
    enable_progress_bar=False, enable_model_summary=False,
    accumulate_grad_batches=batch.grad_accum,  # trainsup
    plugins=[PowerSafeCheckpointIO(ops=slow_ops() if args.save_delay else None)],  # trainsup
    callbacks=[ModelCheckpoint(dirpath=args.ckpt_dir, every_n_train_steps=args.save_every, save_last=True,
                               save_top_k=2, monitor="step", mode="max"),
               TrainsupCallback(args.ckpt_dir),  # trainsup
               PrintSteps()],
)
model = Net()
ckpt_path = resume_checkpoint(args.ckpt_dir)  # trainsup: the newest checkpoint that verifies, or None
print(f"resuming from {ckpt_path}" if ckpt_path else "starting fresh", flush=True)
trainer.fit(model, loader, ckpt_path=ckpt_path)
print(f"finished at step {trainer.global_step} epoch {trainer.current_epoch}", flush=True)
if args.out:
    torch.save({"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                "state_dict": model.state_dict(),
                "optimizer": trainer.optimizers[0].state_dict()}, args.out)
