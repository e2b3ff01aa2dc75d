"""params.yaml, validated once.

Every path and knob of the pipeline lives in ``params.yaml``; this module is the single place that reads it.
Every model forbids unknown keys, so a typo fails with the key path and what is allowed there instead of being
silently ignored. Config keys equal the constructor / function arguments they feed.

The training profile (``tiny``, ``small``, ``paper``) is chosen by the top-level ``profile`` key; each profile is a
complete ``{model, train}`` block under ``profiles``, so ``dvc exp run -S profile=paper`` switches all sizes at once
and ``-S profiles.tiny.train.steps=500`` changes one knob.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"
# Same value as sipl.data.imageio.DEFAULT_MAX_PIXELS (Pillow's default limit); not imported so that loading params stays
# free of the image stack.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# The degradation head's class of undegraded input (identity training pairs); the other classes are the task names.
CLEAN_CLASS = "clean"


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, the key path and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------- data

class SourceConfig(_Strict):
    """Where clean images come from.

    ``embedded``: the colour photos shipped inside scikit-image, scikit-learn and matplotlib (no network).
    ``folder``: a local directory, searched recursively. ``s3``: an ``s3://bucket/prefix`` read through s3fs.
    """

    kind: Literal["embedded", "folder", "s3"] = "embedded"
    path: str | None = None
    name: str | None = Field(None, description="prefix of source ids; defaults to the kind")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description=(
        "images with more pixels (width x height) are skipped and listed in skipped.json before they are decoded "
        "(decompression bombs); default: Pillow's limit, about 89.5 million"))

    @model_validator(mode="after")
    def _path_matches_kind(self) -> "SourceConfig":
        if self.kind == "embedded" and self.path is not None:
            raise ValueError("an 'embedded' source takes no path; use kind: folder or kind: s3 for your own images")
        if self.kind in ("folder", "s3") and not self.path:
            raise ValueError(f"a '{self.kind}' source needs 'path'")
        if self.kind == "s3" and not str(self.path).startswith("s3://"):
            raise ValueError(f"an 's3' source path must start with s3:// (got {self.path!r})")
        return self


class SplitsConfig(_Strict):
    """Per-image split assignment by a stable hash of the source id (never per crop)."""

    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> "SplitsConfig":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1 so that some images remain for training")
        return self


class SplitCropConfig(_Strict):
    """How one split cuts a source image: ``per_image`` random crops of ``size`` pixels, or the full image
    (``size: null``) centre-cropped to a multiple of ``multiple`` and, if ``max_side`` is set, to at most that side."""

    size: int | None = Field(128, ge=16)
    per_image: int = Field(1, ge=1)
    multiple: int = Field(16, ge=1)
    max_side: int | None = Field(None, ge=16)


class CropsConfig(_Strict):
    train: SplitCropConfig = SplitCropConfig(size=128, per_image=12)
    val: SplitCropConfig = SplitCropConfig(size=128, per_image=2)
    test: SplitCropConfig = SplitCropConfig(size=None, per_image=1, max_side=256)


class TaskConfig(_Strict):
    """One task: an ordered list of degradation steps (``degradations.apply`` format) and its family.

    A step is ``{name: <registry name>, <param>: value | [low, high]}``; a two-element list is a range the
    degradation draws from with the sample's generator.
    """

    family: Literal["noise", "rain", "haze", "blur", "lowlight", "snow", "jpeg", "composite"]
    steps: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _steps_known(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import numpy as np

        import degradations

        try:
            degradations.validate(steps)
            # Values (a negative sigma, a reversed range) are checked when drawn: one draw on a small grey image
            # here makes a bad value fail when the params are loaded, naming the file, not in the middle of a stage.
            degradations.apply(steps, np.full((64, 64, 3), 128, np.uint8), np.random.default_rng(0))
        except degradations.DegradationError as error:
            raise ValueError(str(error)) from None
        return steps


class ShardsConfig(_Strict):
    """WebDataset output: ``{root}/{split}/{task}-{NNNNNN}.tar`` plus ``{root}/manifest.json``.

    ``root`` may be a local path or an ``s3://`` prefix. ``encoding`` is the lossless in-shard image format."""

    root: str = "data/shards"
    maxcount: int = Field(256, ge=1)
    encoding: Literal["npy", "png"] = "npy"


# -------------------------------------------------------------------------------------------------- model

class ModelConfig(_Strict):
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


class LossConfig(_Strict):
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


class TrainConfig(_Strict):
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


class ProfileConfig(_Strict):
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()


class RayConfig(_Strict):
    """Ray Train scaling. ``RAY_ADDRESS`` in the environment selects an existing cluster; otherwise a local
    instance is started. ``storage_path`` may be local or ``s3://``."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    threads_per_worker: int | None = Field(None, ge=1, description="torch intra-op threads; null = cpus_per_worker")
    storage_path: str = ".ray/results"
    run_name: str = "sipl-train"
    max_failures: int = Field(2, ge=0)


# ------------------------------------------------------------------------------------------ evaluation

class RefineConfig(_Strict):
    max_steps: int = Field(3, ge=0)
    schemes: list[Literal["official", "anchored"]] = Field(default_factory=lambda: ["official", "anchored"], min_length=1)
    scheme: Literal["official", "anchored"] = "anchored"
    min_gain_db: float = Field(0.0, ge=0.0, description=(
        "auto selection: a step count above 0 must beat step 0 by this many dB of mean validation PSNR (globally, "
        "and for each family without any of its tasks losing more), else step 0 is kept"))


class EvalConfig(_Strict):
    splits: list[Literal["val", "test"]] = Field(default_factory=lambda: ["val", "test"], min_length=1)
    tile: int | None = Field(None, ge=32, description="tile side for large images; null = whole image")
    tile_overlap: int = Field(16, ge=0)
    engine: Literal["auto", "onnx", "eager"] = Field("auto", description=(
        "how the model runs (sipl.models.runtime): onnx = ONNX Runtime (~4x faster on CPU, outputs within 1e-6 of "
        "eager), eager = PyTorch; auto = onnx"))
    max_images_per_task: int | None = Field(None, ge=1)
    classical: bool = True
    sample_grid_images: int = Field(2, ge=1)


# The paired layouts of sipl.data.benchmark_import.KINDS (not imported here: that module imports this one).
BENCHMARK_KINDS = ("clean", "cbsd68", "kodak", "rain100l", "sots", "gopro", "lol", "cdd11")


class BenchmarkConfig(_Strict):
    """One field benchmark set scored beside the test split (``sipl benchmarks`` -> ``data/benchmarks/{name}/``).

    ``kind: clean``: a folder of clean images (searched recursively) degraded by every task in ``tasks`` with a seed
    from (seed, name, task, image); the other kinds are the paired layouts ``sipl import-benchmark`` reads. Whether
    ``path`` exists and holds that layout is checked when the ``benchmarks`` stage starts."""

    name: str = Field(min_length=1, max_length=64)
    kind: Literal[BENCHMARK_KINDS]
    path: str = Field(min_length=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description=(
        "image files with more pixels are listed as unreadable (skipped.json for kind clean) before decoding"))

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise ValueError(f"{name!r} is not a valid set name; use letters, digits, '_' and '-' (it names the "
                             "folder data/benchmarks/NAME and the key in metrics/benchmarks.json)")
        return name


class PrefectConfig(_Strict):
    retries: int = Field(1, ge=0)
    retry_delay_s: float = Field(5.0, ge=0)


def _tinted_haze(step: dict[str, Any]) -> bool:
    """Whether a degradation step is haze with a non-grey airlight (``tint`` other than 0, or a range beyond 0)."""
    tint = step.get("tint", 0.0)
    return step["name"] == "haze" and any(float(value) != 0.0 for value in (tint if isinstance(tint, list) else [tint]))


# ------------------------------------------------------------------------------------------------- root

class Params(_Strict):
    # The file these params came from, for messages that name it (set by parse_params; not a params key).
    _source: str = PrivateAttr(default=PARAMS_FILE)

    seed: int = 0
    profile: Literal["tiny", "small", "paper"] = "tiny"
    refine_steps: Literal["auto"] | int = "auto"
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()], min_length=1)
    splits: SplitsConfig = SplitsConfig()
    crops: CropsConfig = CropsConfig()
    tasks: dict[str, TaskConfig] = Field(min_length=1)
    shards: ShardsConfig = ShardsConfig()
    profiles: dict[Literal["tiny", "small", "paper"], ProfileConfig]
    ray: RayConfig = RayConfig()
    refine: RefineConfig = RefineConfig()
    eval: EvalConfig = EvalConfig()
    prefect: PrefectConfig = PrefectConfig()
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)

    @field_validator("refine_steps")
    @classmethod
    def _non_negative_steps(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 0:
            raise ValueError("refine_steps must be 'auto' or an integer >= 0")
        return value

    @field_validator("benchmarks")
    @classmethod
    def _distinct_set_names(cls, sets: list[BenchmarkConfig]) -> list[BenchmarkConfig]:
        first: dict[str, int] = {}
        for index, item in enumerate(sets):
            if item.name in first:
                raise ValueError(f"benchmarks[{index}].name {item.name!r} repeats "
                                 f"benchmarks[{first[item.name]}].name; give every set its own name")
            first[item.name] = index
        return sets

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} has no block under 'profiles' (have: {sorted(self.profiles)})")
        if isinstance(self.refine_steps, int) and self.refine_steps > self.refine.max_steps:
            raise ValueError(
                f"refine_steps={self.refine_steps} exceeds refine.max_steps={self.refine.max_steps}; "
                "raise refine.max_steps (evaluation scores steps 0..max_steps) or lower refine_steps"
            )
        train = self.profiles[self.profile].train
        crop = self.crops.train
        if crop.size is not None:
            key, limit, crop_side, needed = "crops.train.size", crop.size, crop.size, train.patch
        else:  # whole images, limited to max_side, then floored to a multiple of crops.train.multiple
            key, limit = "crops.train.max_side", crop.max_side
            crop_side = None if limit is None else limit // crop.multiple * crop.multiple
            needed = -(-train.patch // crop.multiple) * crop.multiple
        if crop_side is not None and crop_side < train.patch:
            floored = "" if limit < train.patch else f" floored to a multiple of {crop.multiple} ({crop_side})"
            raise ValueError(
                f"{key}={limit}{floored} is smaller than profiles.{self.profile}.train.patch={train.patch}: "
                f"training cuts {train.patch}x{train.patch} patches from the train crops; set {key} to at least "
                f"{needed} (`dvc repro` then re-synthesizes the shards) or lower the patch")
        if train.task_weights:
            unknown = sorted(set(train.task_weights) - set(self.tasks))
            if unknown:
                raise ValueError(f"profiles.{self.profile}.train.task_weights names unknown tasks {unknown}; "
                                 f"tasks are {sorted(self.tasks)}")
        if train.channel_shuffle > 0:
            for name, task in self.tasks.items():
                for index, step in enumerate(task.steps):
                    if _tinted_haze(step):
                        raise ValueError(
                            f"profiles.{self.profile}.train.channel_shuffle is {train.channel_shuffle} but "
                            f"tasks.{name}.steps[{index}] (haze) has tint {step['tint']!r}: a tinted airlight is "
                            "not the same in every channel order; set that tint to 0 or channel_shuffle to 0")
                    if step["name"] == "jpeg":
                        raise ValueError(
                            f"profiles.{self.profile}.train.channel_shuffle is {train.channel_shuffle} but "
                            f"tasks.{name}.steps[{index}] is jpeg: JPEG codes luma and chroma from fixed channel "
                            "weights, so its artefacts are not the same in every channel order; set channel_shuffle "
                            "to 0 or leave the jpeg task out")
        return self

    @property
    def source(self) -> str:
        """The params file these values were read from (``params.yaml`` unless another was given)."""
        return self._source

    @property
    def model(self) -> ModelConfig:
        """Model arguments of the selected profile."""
        return self.profiles[self.profile].model

    @property
    def train(self) -> TrainConfig:
        """Training recipe of the selected profile."""
        return self.profiles[self.profile].train


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters ({error.error_count()} problem(s)):"]
    for item in error.errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]).lstrip(".")
        path = path or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against params.yaml's documented keys)"
        elif item["type"] in ("literal_error", "enum"):
            expected = item.get("ctx", {}).get("expected")
            message = f"got {item.get('input')!r}; allowed: {expected}"
        lines.append(f"  - {path}: {message}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = PARAMS_FILE) -> Params:
    """Validate an already-loaded mapping; raises ConfigError naming every bad key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None
    params._source = source
    return params


def load_params(path: str | os.PathLike[str] = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml`` (default: the one in the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found. Run sipl from the project root (where params.yaml lives) "
                          "or pass --params PATH.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_params(raw or {}, source=str(path))
