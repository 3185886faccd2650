"""An HF Trainer script with the four lines of trainsup.integrations.hf (issue 11).

A tiny BERT from a config (no download) on a seeded synthetic dataset, checkpoint-N/ every
K steps into the checkpoint dir, resumed from `resume_checkpoint` (the newest verified one).
Prints `step N` after every optimizer step.

    python hf_trainsup_job.py --steps 90 --save-every 10 [--final state.pt]
    --slow-save-at N --slow-marker PATH   at step N, once (while PATH does not exist), sleep
                                          in on_save after HF wrote checkpoint-N/ and before
                                          trainsup seals it (a test SIGKILLs it there)
"""

import argparse
import os
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from trainsup.integrations.hf import TrainsupCallback, apply_batch, resume_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=90)
parser.add_argument("--save-every", type=int, default=10)
parser.add_argument("--step-delay", type=float, default=0.03, help="seconds of sleep per step")
parser.add_argument("--ckpt-dir", default=os.environ.get("TRAINSUP_CHECKPOINT_DIR", "checkpoints"))
parser.add_argument("--final", default=None, help="at a normal end, torch.save model and optimizer state here")
parser.add_argument("--slow-save-at", type=int, default=None)
parser.add_argument("--slow-marker", default=None)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, 64, (size, 12), generator=generator)
        self.ids[torch.rand(size, generator=generator) < 0.5, 3] = 1
        self.labels = (self.ids == 1).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


class Pace(TrainerCallback):
    def on_step_end(self, training_args, state, control, **kwargs):
        time.sleep(args.step_delay)
        print(f"step {state.global_step}", flush=True)


class SlowSave(TrainerCallback):
    def on_save(self, training_args, state, control, **kwargs):
        marker = Path(args.slow_marker) if args.slow_marker else None
        if state.global_step == args.slow_save_at and marker is not None and not marker.exists():
            marker.touch()
            print(f"saving checkpoint-{state.global_step} slowly", flush=True)
            time.sleep(60)


config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16, num_labels=2)
torch.manual_seed(args.seed)
model = BertForSequenceClassification(config)
training_args = TrainingArguments(
    output_dir=args.ckpt_dir, max_steps=args.steps, save_strategy="steps", save_steps=args.save_every,
    save_total_limit=None, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[], use_cpu=True,
    logging_steps=5, dataloader_num_workers=0, seed=args.seed, disable_tqdm=True,
)
apply_batch(training_args)
trainer = Trainer(model=model, args=training_args, train_dataset=Synthetic(256, args.seed),
                  callbacks=[Pace(), SlowSave(), TrainsupCallback()])
resume = resume_checkpoint(training_args.output_dir)
print(f"resuming from {resume}" if resume else "starting fresh", flush=True)
trainer.train(resume_from_checkpoint=resume)
print(f"finished at step {trainer.state.global_step}", flush=True)
if args.final:
    torch.save({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                "scheduler": trainer.lr_scheduler.state_dict(), "global_step": trainer.state.global_step}, args.final)
