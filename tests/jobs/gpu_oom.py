"""A job whose simulated GPU fits a micro-batch of at most 16: larger ones raise torch's CUDA OOM."""

import os

import torch

from trainsup.gpu.simulated import OutOfMemoryError as SimulatedOutOfMemory, sim_allocate

GIB = 2**30
micro = int(os.environ["TRAINSUP_BATCH_SIZE"])
accum = int(os.environ["TRAINSUP_GRAD_ACCUM"])
global_batch = int(os.environ["TRAINSUP_GLOBAL_BATCH_SIZE"])
gpu = os.environ["CUDA_VISIBLE_DEVICES"]
print(f"micro {micro} accum {accum} global {global_batch} gpu {gpu}", flush=True)
assert micro * accum == global_batch

try:
    sim_allocate(os.environ["TRAINSUP_SIMULATED_GPUS"], os.getpid(), gpu, micro * GIB)
except SimulatedOutOfMemory as exc:
    raise torch.cuda.OutOfMemoryError(str(exc)) from None

model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
data = torch.randn(global_batch, 8)
seen = 0
for chunk in data.split(micro):
    (model(chunk).pow(2).mean() / accum).backward()
    seen += len(chunk)
optimizer.step()
print(f"one optimizer step over {seen} samples", flush=True)
