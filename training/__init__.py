"""Accelerate training scripts of score_diffusers and what they share, one module a job: `arguments` (the shared
flags and their checks), `data` (images and batches), `unet` (the score network), `loop` (the training loop with
EMA), `checkpoints`, `samples` (sample grids) and `hub` (model card and upload)."""
