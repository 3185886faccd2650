"""Adapters that give the training frameworks users already have what `trainsup.trainer` gives a plain loop.

Each lives in its own module and imports its framework only when it is used, so importing
this package costs nothing and needs no framework:

- `trainsup.integrations.hf` — the Hugging Face `Trainer`: `TrainsupCallback`,
  `resume_checkpoint`, `apply_batch`.
- `trainsup.integrations.lightning` — Lightning: `PowerSafeCheckpointIO`, `TrainsupCallback`,
  `resume_checkpoint`, `batch_from_env`.

What they share lives beside them: `runtime` (log, exit.json, resume.json, quarantine,
the trainer library's stop signals and heartbeats) and `sidecar` (a `*.ckpt` sealed by
its manifest). Accelerate and torchrun/DDP adapters are not there yet. See docs/integrations.md.
"""
