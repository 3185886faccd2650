"""The training script of ../shared/USERS.md story 1, as users write it from resume guides
(generic mode: it never imports trainsup). Each epoch it overwrites
`<ckpt dir>/last_model.pth` with plain, non-atomic `torch.save`; `--resume PATH` loads it
and goes on at the next epoch (a file that does not load is a traceback, exit 1).

    python guide_job.py --epochs 8 [--resume ckpt/last_model.pth] [--out result.json]
    --slow-save-at-epoch E   at epoch E's save, write a few bytes, then stall (a test
                             SIGKILLs it there, leaving a truncated last_model.pth)
"""

import argparse
import io
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--steps-per-epoch", type=int, default=10)
parser.add_argument("--step-delay", type=float, default=0.02, help="seconds of sleep per step")
parser.add_argument("--ckpt-dir", default=os.environ.get("TRAINSUP_CHECKPOINT_DIR", "checkpoints"))
parser.add_argument("--resume", default=None, help="path of a checkpoint to resume from")
parser.add_argument("--slow-save-at-epoch", type=int, default=None)
parser.add_argument("--out", default=None, help="at a normal end, write {global_step, epoch} here as JSON")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(args.seed)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
generator = torch.Generator().manual_seed(args.seed)
data_x = torch.randn(args.steps_per_epoch, 32, 16, generator=generator)
data_y = torch.randint(0, 4, (args.steps_per_epoch, 32), generator=generator)

start_epoch, global_step, best_loss, history = 1, 0, float("inf"), []
if args.resume:
    checkpoint = torch.load(args.resume, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    start_epoch = checkpoint["epoch"] + 1
    global_step, best_loss, history = checkpoint["global_step"], checkpoint["best_loss"], checkpoint["history"]
    print(f"resumed from {args.resume} at epoch {start_epoch}", flush=True)
else:
    print("starting fresh at epoch 1", flush=True)

checkpoints = Path(args.ckpt_dir)
checkpoints.mkdir(parents=True, exist_ok=True)
for epoch in range(start_epoch, args.epochs + 1):
    total = 0.0
    for x, y in zip(data_x, data_y):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        global_step += 1
        total += loss.item()
        time.sleep(args.step_delay)
    scheduler.step()
    history.append(total / len(data_x))
    best_loss = min(best_loss, history[-1])
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "global_step": global_step, "best_loss": best_loss, "history": history}
    if epoch == args.slow_save_at_epoch:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with open(checkpoints / "last_model.pth", "wb") as handle:  # truncates the only checkpoint
            handle.write(buffer.getvalue()[:64])
            handle.flush()
            print(f"saving epoch {epoch} slowly", flush=True)
            time.sleep(120)
            handle.write(buffer.getvalue()[64:])
    else:
        torch.save(state, checkpoints / "last_model.pth")
    print(f"epoch {epoch} done, step {global_step}, loss {history[-1]:.4f}", flush=True)

print(f"finished at epoch {args.epochs}, step {global_step}", flush=True)
if args.out:
    Path(args.out).write_text(json.dumps({"global_step": global_step, "epoch": args.epochs}))
