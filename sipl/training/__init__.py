"""Training: the optimisation step, the per-worker loop, its sessions and the Ray Train launcher.

- ``step``: the training step DDP sees (``_StepModule``), the optimiser, EMA and gradient accumulation.
- ``loop``: ``train_worker``, the per-worker loop (validation, progress, the run summary).
- ``sessions``: ``LocalSession`` (a checkpoint folder, for tests and benchmarks) and ``RaySession`` (Ray Train).
- ``launcher``: ``make_spec`` and ``fit`` (start or join Ray, run the TorchTrainer) and ``export`` of the result.
- ``checkpoint``: resumable training state (safetensors + JSON); ``schedule``: batch plan and learning rate;
  ``losses``: the pixel losses of a recipe.
"""
