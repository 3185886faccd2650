"""An HF Trainer user's training script, run under trainsup as is (generic mode: it never
imports trainsup). A tiny BERT built from a config (no download) on a seeded synthetic
dataset; checkpoint-N/ every K steps in the checkpoint dir; on start it resumes from
`--resume DIR`, else from the newest checkpoint-N there if any (HF picks the largest N).

    python hf_job.py --steps 60 --save-every 10 [--resume DIR] [--out result.json]
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--save-every", type=int, default=10)
parser.add_argument("--step-delay", type=float, default=0.02, help="seconds of sleep per step")
parser.add_argument("--ckpt-dir", default=os.environ.get("TRAINSUP_CHECKPOINT_DIR", "checkpoints"))
parser.add_argument("--resume", default=None, help="a checkpoint-N dir to resume from")
parser.add_argument("--out", default=None, help="at a normal end, write {global_step, epoch} here as JSON")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()


class Synthetic(torch.utils.data.Dataset):
    """Seeded random token sequences; the label is whether token 1 occurs."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, 64, (size, 12), generator=generator)
        self.ids[torch.rand(size, generator=generator) < 0.5, 3] = 1
        self.labels = (self.ids == 1).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


class Slow(TrainerCallback):
    def on_step_end(self, training_args, state, control, **kwargs):
        if args.step_delay:
            time.sleep(args.step_delay)
        print(f"step {state.global_step}", flush=True)


config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16, num_labels=2)
torch.manual_seed(args.seed)
model = BertForSequenceClassification(config)
training_args = TrainingArguments(
    output_dir=args.ckpt_dir, max_steps=args.steps, save_strategy="steps", save_steps=args.save_every,
    save_total_limit=None, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[], use_cpu=True,
    logging_steps=10, dataloader_num_workers=0, seed=args.seed, disable_tqdm=True,
)
trainer = Trainer(model=model, args=training_args, train_dataset=Synthetic(256, args.seed), callbacks=[Slow()])
# What the HF examples do: resume_from_checkpoint=True would pick the same (largest N).
resume = args.resume or (get_last_checkpoint(args.ckpt_dir) if Path(args.ckpt_dir).is_dir() else None)
print(f"resuming from {resume}" if resume else "starting fresh", flush=True)
trainer.train(resume_from_checkpoint=resume)
print(f"finished at step {trainer.state.global_step} epoch {trainer.state.epoch}", flush=True)
if args.out:
    with open(args.out, "w") as handle:
        json.dump({"global_step": trainer.state.global_step, "epoch": trainer.state.epoch}, handle)
