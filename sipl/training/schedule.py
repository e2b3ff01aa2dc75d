"""Learning-rate schedule and the global-batch plan (per-worker batch, gradient accumulation)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sipl.errors import SiplError


def learning_rate(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """LR for optimiser step ``step`` (0-based): linear warm-up from lr/warmup to ``lr`` over ``warmup_steps``,
    then cosine from ``lr`` down to ``min_lr`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class BatchPlan:
    """How one optimiser step's ``global_batch`` samples are spread: ``num_workers`` × ``accumulation`` micro-batches
    of ``micro_batch`` samples each."""

    global_batch: int
    num_workers: int
    worker_batch: int
    accumulation: int
    micro_batch: int


def batch_plan(global_batch: int, num_workers: int, max_worker_batch: int | None = None,
               profile: str = "<profile>") -> BatchPlan:
    """Derive the per-worker batch and accumulation so that every worker count gives the same optimisation.

    Raises SiplError naming the keys when ``global_batch`` does not split evenly."""
    if global_batch % num_workers:
        raise SiplError(
            f"profiles.{profile}.train.global_batch={global_batch} is not divisible by ray.num_workers={num_workers}; "
            "change one of them so that each worker gets the same number of samples")
    worker_batch = global_batch // num_workers
    accumulation = 1
    if max_worker_batch is not None and worker_batch > max_worker_batch:
        accumulation = math.ceil(worker_batch / max_worker_batch)
        while worker_batch % accumulation:
            accumulation += 1
    return BatchPlan(global_batch, num_workers, worker_batch, accumulation, worker_batch // accumulation)
