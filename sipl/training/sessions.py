"""Where ``train_worker`` restores and reports checkpoints and how it wraps the model: a session.

``RaySession`` maps them to ``ray.train.get_checkpoint`` / ``ray.train.report`` / ``ray.train.torch.prepare_model``
(DDP); ``LocalSession`` keeps checkpoints in a folder and is what the fast tests and the benchmarks use.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch


class LocalSession:
    """Single-process session: checkpoints are folders ``{directory}/checkpoint_{step:08d}``; keeps the newest
    ``keep``. Used by tests and benchmarks (and it is what ``train_worker`` sees with one local process)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep
        self.reports: list[dict[str, Any]] = []

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.directory.glob("checkpoint_*"))
        return found[-1] if found else None

    def restore(self, load: Callable[[str], dict]) -> dict | None:
        latest = self.latest_checkpoint()
        return load(str(latest)) if latest else None

    def prepare(self, module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        return module

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"checkpoint_{int(metrics['step']):08d}"
        staging = self.directory / f".{final.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_dir, staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in sorted(self.directory.glob("checkpoint_*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class RaySession:
    """Session inside a Ray Train worker."""

    def restore(self, load: Callable[[str], dict]) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load(directory)

    def prepare(self, module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        import warnings

        import ray.train.torch

        # Depthwise-conv gradients have other strides than DDP's buckets: a copy, not an error.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters})

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
