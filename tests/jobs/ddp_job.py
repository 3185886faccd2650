"""A 2-process DDP training run on trainsup.trainer, for `torchrun --nproc-per-node 2` (gloo, CPU).

Deterministic for a fixed seed, with per-rank dropout RNG and a sharded, shuffled
sampler (95 samples: padded to 96, 48 a rank), so an exact resume needs the global data
position and every rank's own RNG state. Rank 0 writes the final model and optimizer
state to --out. Prints `event rank R pid P step N` after every optimizer step.
`--kill RANK:STEP[:micro]` makes that rank SIGKILL itself after step STEP (or after the
first micro-batch of step STEP+1), when the run reaches it. `--die-in-save STEP:K
--die-marker PATH` makes rank 0 SIGKILL itself right after the K-th file operation of its
save of checkpoint STEP (1: the temp dir made, ..., 7: renamed into place, 8: the
directory fsynced), once: while PATH does not exist.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from trainsup import trainer
from trainsup.trainer.fsops import FileOps


class DyingOps(FileOps):
    """The real file operations; SIGKILL after the K-th one of the save of checkpoint `step`."""

    def __init__(self, step: int, after: int, marker: str) -> None:
        self.prefix, self.after, self.marker, self.done = f".tmp-step-{step:09d}-", after, marker, 0

    def _count(self, what: str, path: object) -> None:
        if self.done or os.path.basename(str(path)).startswith(self.prefix):
            self.done += 1
        if self.done == self.after and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            print(f"event rank 0 dies in the save after op {self.done} ({what} {os.path.basename(str(path))})",
                  flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def mkdir(self, path):  # type: ignore[no-untyped-def]
        super().mkdir(path)
        self._count("mkdir", path)

    def write_file(self, path, write):  # type: ignore[no-untyped-def]
        super().write_file(path, write)
        self._count("write_file", path)

    def fsync_file(self, path):  # type: ignore[no-untyped-def]
        super().fsync_file(path)
        self._count("fsync_file", path)

    def fsync_dir(self, path):  # type: ignore[no-untyped-def]
        super().fsync_dir(path)
        self._count("fsync_dir", path)

    def rename(self, src, dst):  # type: ignore[no-untyped-def]
        super().rename(src, dst)
        self._count("rename", src)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=95)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--kill", default=None)
    parser.add_argument("--die-in-save", default=None)
    parser.add_argument("--die-marker", default=None)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    kill_rank, kill_step, where = (args.kill.split(":") + ["step"])[:3] if args.kill else (-1, -1, "")
    kill_rank, kill_step = int(kill_rank), int(kill_step)

    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(args.samples, 8, generator=data),
                            torch.randint(0, 3, (args.samples,), generator=data))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    ddp = DistributedDataParallel(model)
    torch.manual_seed(100 + rank)  # each rank its own dropout masks
    batch = trainer.Batch.from_env(micro=4, grad_accum=2)
    loader = DataLoader(dataset, batch_size=batch.micro, sampler=trainer.ResumableSampler(dataset, seed=7))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)

    ops = None
    if args.die_in_save and rank == 0:
        save_step, after = args.die_in_save.split(":")
        ops = DyingOps(int(save_step), int(after), args.die_marker)
    with trainer.Session(model, optimizer, scheduler, checkpoint_dir=args.checkpoint_dir, batch=batch, ops=ops,
                         saving=trainer.Saving(every_steps=args.save_every, every_seconds=None)) as session:
        print(f"event rank {rank} pid {os.getpid()} start step {session.step}", flush=True)
        for _epoch in session.epochs(args.epochs):
            for step in session.steps(loader):
                for index, (x, y) in enumerate(step):
                    if rank == kill_rank and where == "micro" and session.step == kill_step and index == 1:
                        os.kill(os.getpid(), signal.SIGKILL)
                    loss = torch.nn.functional.cross_entropy(ddp(x), y) / len(step)
                    loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                scheduler.step()
                time.sleep(args.step_delay)
                session.step_done(loss=loss.item())
                print(f"event rank {rank} pid {os.getpid()} step {session.step}", flush=True)
                if rank == kill_rank and where == "step" and session.step == kill_step:
                    os.kill(os.getpid(), signal.SIGKILL)

    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": session.step}, args.out)
    print(f"event rank {rank} done", flush=True)
    # Tear down together, with DDP's reducer gone first: a rank that destroys its gloo group
    # while its peer is still mid-send, or leaves gloo work for interpreter finalization,
    # can abort at exit ("terminate called without an active exception").
    del ddp
    dist.barrier()
    dist.destroy_process_group()
    # Even so, CI once saw rank 1 abort during interpreter finalization after a clean run
    # (1 in 16 under load; gloo threads torn down with the interpreter, PyTorch issue
    # #190489). Everything this job has to say is written and flushed: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
