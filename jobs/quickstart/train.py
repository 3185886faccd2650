"""A small real training job: an MLP learning a synthetic classification task on CPU.

Runs ~30 s on 2 cores, checkpoints every few seconds and resumes from its newest
checkpoint. (Plain torch.save + rename here; see jobs/trainer-demo for the
power-safe, bit-exact version built on trainsup.trainer.)
"""

import os
import time
from pathlib import Path

import torch
from torch import nn

STEPS = int(os.environ.get("STEPS", 5000))
CHECKPOINT_EVERY_S = 3.0
checkpoint_dir = Path(os.environ.get("TRAINSUP_CHECKPOINT_DIR", "checkpoints"))
checkpoint_dir.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
torch.manual_seed(0)

inputs = torch.randn(4096, 64)
labels = (inputs[:, :8].sum(dim=1) > 0).long()
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
start = 0

checkpoints = sorted(checkpoint_dir.glob("step-*"))
if checkpoints:
    state = torch.load(checkpoints[-1] / "state.pt", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    start = state["step"]
    print(f"resumed from {checkpoints[-1].name}", flush=True)
else:
    print("no checkpoint: starting fresh", flush=True)

last_save = time.monotonic()
for step in range(start + 1, STEPS + 1):
    batch = torch.randint(0, len(inputs), (128,))
    loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 250 == 0:
        print(f"step {step} loss {loss.item():.4f}", flush=True)
    if time.monotonic() - last_save >= CHECKPOINT_EVERY_S or step == STEPS:
        tmp = checkpoint_dir / f".tmp-step-{step:09d}"
        tmp.mkdir()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(), "step": step}, tmp / "state.pt")
        tmp.rename(checkpoint_dir / f"step-{step:09d}")
        last_save = time.monotonic()
        print(f"checkpoint at step {step}", flush=True)

accuracy = (model(inputs).argmax(dim=1) == labels).float().mean().item()
print(f"done: {STEPS} steps, accuracy {accuracy:.3f}", flush=True)
