"""The training profiles of params.yaml: ``profiles.<name>.model`` and ``.train``, and Ray Train's scaling (``ray``).

A profile (``tiny``, ``small``, ``paper``) is a complete ``{model, train}`` block; the top-level ``profile`` key
selects one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sipl.config.sections import Strict

# The degradation head's class of undegraded input (identity training pairs); the other classes are the task names.
CLEAN_CLASS = "clean"


class ModelConfig(Strict):
    """Arguments of ``sipl.models.build_model``."""

    backbone: Literal["nafnet", "promptir", "restormer"] = "nafnet"
    size: Literal["tiny", "small", "paper"] = "tiny"
    sipl: bool = True
    degradation_head: bool = Field(False, description=(
        "add the degradation head (classifier over 'clean' + the tasks, decoder conditioning; see "
        "sipl.models.degradation_head); its class names are the task names, so it is built from params 'tasks'"))
    overrides: dict[str, Any] = Field(default_factory=dict)

    def build_arguments(self, sipl: bool | None = None, tasks: list[str] | None = None) -> dict[str, Any]:
        """Keyword arguments of ``build_model`` (``sipl`` given: that mode instead, e.g. the plain baseline).
        ``tasks``: the task names, required for the degradation head's classes (``"clean"`` + tasks)."""
        arguments = {"backbone": self.backbone, "size": self.size, "sipl": self.sipl if sipl is None else sipl,
                     **self.overrides}
        if self.degradation_head:
            if not tasks:
                raise ValueError("model.degradation_head needs the task names (params.yaml 'tasks')")
            arguments["degradation_classes"] = [CLEAN_CLASS, *tasks]
        return arguments


class LossConfig(Strict):
    l1: float = Field(1.0, ge=0.0)
    charbonnier: float = Field(0.0, ge=0.0)
    fft: float = Field(0.0, ge=0.0)
    psnr: float = Field(0.0, ge=0.0, description=(
        "weight of the per-image log10(MSE) loss (sipl.training.losses.psnr_loss)"))
    rmse: float = Field(0.0, ge=0.0, description=(
        "weight of the per-image sqrt(MSE) loss (sipl.training.losses.rmse_loss)"))
    preliminary: float = Field(0.5, ge=0.0, description="weight of the loss on the dictionary-only restoration")
    degradation: float = Field(0.0, ge=0.0, description=(
        "weight of the degradation head's cross-entropy against each sample's task (model.degradation_head)"))
    head_affine: float = Field(0.0, ge=0.0, description=(
        "weight of the pixel loss of the head's global gain/bias alone (x + x·gain + bias against the target), on "
        "the batch and the train.head_samples crops: the only loss that trains the gain and bias (global_affine)"))


class TrainConfig(Strict):
    """Training recipe of one profile. Length is in optimiser steps; ``global_batch`` is the knob and the
    per-worker batch and gradient accumulation are derived from it and the worker count."""

    steps: int = Field(600, ge=1)
    global_batch: int = Field(8, ge=1)
    max_worker_batch: int | None = Field(None, ge=1, description="cap per forward; beyond it gradients accumulate")
    patch: int = Field(64, ge=16)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float | None = Field(0.5, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    loss: LossConfig = LossConfig()
    random_proxy: bool = False
    self_privileged: float = Field(0.0, ge=0.0, le=1.0, description=(
        "fraction of batches whose privileged features come from the model's own preliminary restoration of the "
        "input (as in test-time refinement) instead of its restoration of the ground truth (official)"))
    privileged_source: Literal["restoration", "ground_truth"] = Field("restoration", description=(
        "privileged features of the other batches: encoder features of the model's dictionary-only restoration of "
        "the ground truth (official) or of the ground truth itself (skips a no-grad forward pass per step)"))
    preliminary_share: float | None = Field(None, gt=0.0, lt=1.0, description=(
        "null: the preliminary loss restores every sample once more (one extra decoder pass with gradients); a share "
        "in (0, 1): that share of each worker batch takes the dictionary-only path inside the one decoder pass"))
    task_weights: dict[str, float] | None = Field(None, description="per task; null = equal weight per family")
    identity_share: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "share of training samples given as clean input -> clean target, so the model learns to leave undegraded "
        "content (and mildly degraded content it cannot improve) as it is"))
    channel_shuffle: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of training pairs whose RGB channels are put in a random one of the 6 orders (the same for input "
        "and target); valid while every task's degradations treat the channels alike (no tinted airlight)"))
    photometric: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of clean training crops given a random exposure, gamma and saturation before they are degraded "
        "(needs fresh_degradations): more tonal variety than a handful of photos, so a dark or pale photo is not "
        "taken for low light or haze"))
    synthetic_share: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of clean training crops replaced by a dead-leaves image coloured from that crop (needs "
        "fresh_degradations): scale-invariant occlusion content beyond the handful of embedded photos"))
    head_samples: int = Field(0, ge=0, description=(
        "per training sample, this many extra crops of its clean image, each degraded by a random task (or left "
        "clean), that train only the degradation head (classification and global gain/bias): the head needs far "
        "more samples than the restorer and costs little per sample"))
    fresh_degradations: bool = Field(True, description=(
        "degrade each training crop afresh at every read with its task's steps (a new draw per read, seeded by "
        "seed, start step, task, sample key and epoch); false = train on the shards' fixed lq"))
    init_weights: str | None = Field(None, description=(
        "start from these weights instead of a random initialisation (fine-tuning): pretrained:NAME (a model "
        "shipped inside the package, sipl/pretrained/NAME), a model folder (model.safetensors + model.json) or a "
        ".safetensors file of the same model; null = from scratch. A resumed run continues from its checkpoint"))
    val_every: int = Field(200, ge=1)
    val_max_samples: int = Field(32, ge=1)
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    corrupt_samples: Literal["skip", "fail"] = "skip"
    loader_workers: int = Field(1, ge=0)
    shuffle_buffer: int = Field(256, ge=0)
    bf16: bool = True
    channels_last: bool = Field(True, description=(
        "train with weights and images in the channels_last (N×H×W×C) memory layout: on CPU the depthwise and "
        "pointwise convolutions of these thin feature maps run faster in it; false = N×C×H×W"))
    fused_optimizer: bool = Field(True, description=(
        "AdamW's fused kernel (one pass over all parameters) instead of a loop over the parameter tensors"))


class ProfileConfig(Strict):
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()


class RayConfig(Strict):
    """Ray Train scaling. ``RAY_ADDRESS`` in the environment selects an existing cluster; otherwise a local
    instance is started. ``storage_path`` may be local or ``s3://``."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    threads_per_worker: int | None = Field(None, ge=1, description="torch intra-op threads; null = cpus_per_worker")
    keep_freed_memory: bool = Field(True, description=(
        "each training worker keeps the memory a step frees for the next step (glibc malloc: blocks up to 32 MiB "
        "from the heap, trimmed only past 1 GiB; sipl.training.allocator) instead of mapping and faulting it in "
        "again every step; no effect where the C library is not glibc"))
    storage_path: str = ".ray/results"
    run_name: str = "sipl-train"
    max_failures: int = Field(2, ge=0)
