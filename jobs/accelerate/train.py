"""A plain accelerate loop with trainsup.integrations.accelerate (lines marked `# trainsup`).

A small MLP with dropout on a seeded synthetic dataset, shuffled every epoch, CPU. Saves
`checkpoint-N/` (accelerate's `save_state`, made power-safe and sealed) every
`--save-every` steps into `--output-dir` (the job's checkpoint dir), resumes from the
newest one that verifies at exactly the batch it stopped at, stops on SIGTERM/SIGINT with a
checkpoint and exit code 75. Prints `step N` after every optimizer step (main process).

    python train.py --steps 300 --save-every 50 --output-dir /tmp/accel-demo   (Ctrl+C, run again)
    accelerate launch --multi_gpu --num_processes 2 --main_process_port 0 train.py ...   (2 processes; gloo on CPU)

Options for the tests: --final PATH (torch.save the model, optimizer and scheduler state at
the end), --slow-save-at N --slow-marker PATH (once, while PATH does not exist: the main
process sleeps after accelerate wrote checkpoint N and before trainsup sealed it).
"""

import argparse
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from trainsup.integrations.accelerate import (  # trainsup
    Checkpoints, batch_from_env, data_position, epoch_batches)

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--save-every", type=int, default=50)
parser.add_argument("--step-delay", type=float, default=0.02, help="seconds of sleep per step")
parser.add_argument("--output-dir", default=os.environ.get("TRAINSUP_CHECKPOINT_DIR", "out"))
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--final", default=None)
parser.add_argument("--slow-save-at", type=int, default=None)
parser.add_argument("--slow-marker", default=None)
args = parser.parse_args()

set_seed(args.seed)
batch = batch_from_env(micro=8, accum=1)                                                   # trainsup
accelerator = Accelerator(cpu=True, gradient_accumulation_steps=batch.grad_accum,
                          dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))  # trainsup: seedable

generator = torch.Generator().manual_seed(args.seed)
inputs = torch.randn(256, 16, generator=generator)
targets = (inputs[:, :4].sum(dim=1) > 0).long()
dataset = torch.utils.data.TensorDataset(inputs, targets)
loader = torch.utils.data.DataLoader(dataset, batch_size=batch.micro, shuffle=True)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + 0.01 * s))
model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

if args.slow_save_at is not None and args.slow_marker:  # for the tests: a kill during a save
    real_save_state = accelerator.save_state

    def slow_save_state(output_dir, *a, **kw):
        real_save_state(output_dir, *a, **kw)
        marker = Path(args.slow_marker)
        at = f"checkpoint-{args.slow_save_at}-" in os.path.basename(output_dir)
        if at and accelerator.is_main_process and not marker.exists():
            marker.touch()
            print(f"saving checkpoint-{args.slow_save_at} slowly (main process, pid {os.getpid()})", flush=True)
            time.sleep(60)

    accelerator.save_state = slow_save_state

ckpt = Checkpoints(accelerator, args.output_dir, save_every=args.save_every, total_steps=args.steps,     # trainsup
                   samples_per_step=batch.micro * batch.grad_accum * accelerator.num_processes)   # trainsup
step = ckpt.load() or 0                                                                    # trainsup
accelerator.print(f"resuming from {ckpt.last_saved}" if step else "starting fresh", flush=True)
batches_per_epoch = len(loader) // batch.grad_accum  # optimizer steps per epoch
epoch, skip = data_position(step, batches_per_epoch)                                      # trainsup
model.train()
while step < args.steps:
    for x, y in epoch_batches(accelerator, loader, epoch, skip * batch.grad_accum):       # trainsup
        with accelerator.accumulate(model):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        step += 1
        time.sleep(args.step_delay)
        accelerator.print(f"step {step}", flush=True)
        ckpt.step_end(step, loss=loss.item(), epoch=epoch)  # trainsup: heartbeat, save, stop → exit 75
        if step >= args.steps:
            break
    epoch, skip = epoch + 1, 0

ckpt.finish(step)                                                                          # trainsup
accelerator.print(f"finished at step {step}", flush=True)
if args.final and accelerator.is_main_process:
    torch.save({"model": accelerator.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "global_step": step}, args.final)
