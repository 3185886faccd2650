"""A tiny BERT classifier trained with the Hugging Face Trainer, supervised by trainsup.

Standalone:     python train.py --output-dir /tmp/hf-demo   (Ctrl+C: it checkpoints and exits 75;
                run again: it resumes from the newest verified checkpoint-N)
Under trainsup: trainsup submit job.yaml   (output dir, batch size, heartbeats from TRAINSUP_*)
The lines marked `# trainsup` are all the integration there is. CPU only, no download.
"""

import argparse
import os
import time

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from trainsup.integrations.hf import TrainsupCallback, apply_batch, resume_checkpoint  # trainsup

parser = argparse.ArgumentParser()
parser.add_argument("--max-steps", type=int, default=600)
parser.add_argument("--save-steps", type=int, default=50)
parser.add_argument("--output-dir", default=os.environ.get("TRAINSUP_CHECKPOINT_DIR", "out"))
parser.add_argument("--step-delay", type=float, default=0.05, help="seconds of sleep per step, to watch it on CPU")
parser.add_argument("--final", default=None, help="at the end, torch.save the model and optimizer state here")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()


class Synthetic(torch.utils.data.Dataset):
    """Seeded random token sequences; the label says whether token 1 occurs."""

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


config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=16, num_labels=2)
torch.manual_seed(args.seed)
model = BertForSequenceClassification(config)
training_args = TrainingArguments(
    output_dir=args.output_dir, max_steps=args.max_steps, save_strategy="steps", save_steps=args.save_steps,
    save_total_limit=3, per_device_train_batch_size=16, learning_rate=1e-3, report_to=[], use_cpu=True,
    logging_steps=10, dataloader_num_workers=0, seed=args.seed, disable_tqdm=True,
)
apply_batch(training_args)  # trainsup: TRAINSUP_BATCH_SIZE / TRAINSUP_GRAD_ACCUM, before Trainer(...)
trainer = Trainer(model=model, args=training_args, train_dataset=Synthetic(2048, args.seed),
                  callbacks=[Pace(), TrainsupCallback()])  # trainsup: last in the list
trainer.train(resume_from_checkpoint=resume_checkpoint(training_args.output_dir))  # trainsup: newest verified, or None
print(f"finished at step {trainer.state.global_step}", flush=True)
if args.final:
    torch.save({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}, args.final)
