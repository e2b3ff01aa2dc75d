"""Training: the per-worker loop and the Ray Train launcher, training-state checkpoints, schedule and losses."""
