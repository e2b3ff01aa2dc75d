"""The sections of params.yaml other than the training profiles: data, evaluation, benchmark sets, Prefect.

Every section forbids unknown keys (``Strict``), so a typo fails with the key path and what is allowed there.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Same value as sipl.data.imageio.DEFAULT_MAX_PIXELS (Pillow's default limit); not imported so that loading params
# stays free of the image stack.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3


class Strict(BaseModel):
    """Base of every params section: unknown keys are errors and values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------- data

class SourceConfig(Strict):
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


class SplitsConfig(Strict):
    """Per-image split assignment by a stable hash of the source id (never per crop)."""

    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> "SplitsConfig":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1 so that some images remain for training")
        return self


class SplitCropConfig(Strict):
    """How one split cuts a source image: ``per_image`` random crops of ``size`` pixels, or the full image
    (``size: null``) centre-cropped to a multiple of ``multiple`` and, if ``max_side`` is set, to at most that side."""

    size: int | None = Field(128, ge=16)
    per_image: int = Field(1, ge=1)
    multiple: int = Field(16, ge=1)
    max_side: int | None = Field(None, ge=16)


class CropsConfig(Strict):
    train: SplitCropConfig = SplitCropConfig(size=128, per_image=12)
    val: SplitCropConfig = SplitCropConfig(size=128, per_image=2)
    test: SplitCropConfig = SplitCropConfig(size=None, per_image=1, max_side=256)


class TaskConfig(Strict):
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


class ShardsConfig(Strict):
    """WebDataset output: ``{root}/{split}/{task}-{NNNNNN}.tar`` plus ``{root}/manifest.json``.

    ``root`` may be a local path or an ``s3://`` prefix. ``encoding`` is the lossless in-shard image format."""

    root: str = "data/shards"
    maxcount: int = Field(256, ge=1)
    encoding: Literal["npy", "png"] = "npy"
    train_pairs: bool = Field(False, description=(
        "true: the train split holds a degraded copy of every crop for every task (lq + gt per task, needed by "
        "train.fresh_degradations: false); false: it holds each clean crop once (task 'clean') and training degrades "
        "it afresh at every read, 1/(2 x tasks) of the bytes"))


# ------------------------------------------------------------------------------------------ evaluation

class RefineConfig(Strict):
    max_steps: int = Field(3, ge=0)
    schemes: list[Literal["official", "anchored"]] = Field(default_factory=lambda: ["official", "anchored"], min_length=1)
    scheme: Literal["official", "anchored"] = "anchored"
    min_gain_db: float = Field(0.0, ge=0.0, description=(
        "auto selection: a step count above 0 must beat step 0 by this many dB of mean validation PSNR (globally, "
        "and for each family without any of its tasks losing more), else step 0 is kept"))


class EvalConfig(Strict):
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


class BenchmarkConfig(Strict):
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


class PrefectConfig(Strict):
    retries: int = Field(1, ge=0)
    retry_delay_s: float = Field(5.0, ge=0)
