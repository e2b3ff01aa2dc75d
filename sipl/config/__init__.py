"""params.yaml, validated once.

Every path and knob of the pipeline lives in ``params.yaml``; this package is the single place that reads it:
``load_params`` / ``parse_params`` and the root model ``Params`` here, its sections in ``sipl.config.sections``
(data, evaluation, benchmark sets, Prefect) and ``sipl.config.profiles`` (model, training recipe, Ray). Every model
forbids unknown keys, so a typo fails with the key path and what is allowed there instead of being silently
ignored. Config keys equal the constructor / function arguments they feed.

The training profile (``tiny``, ``small``, ``paper``) is chosen by the top-level ``profile`` key; each profile is a
complete ``{model, train}`` block under ``profiles``, so ``dvc exp run -S profile=paper`` switches all sizes at once
and ``-S profiles.tiny.train.steps=500`` changes one knob.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from sipl.config.profiles import ModelConfig, ProfileConfig, RayConfig, TrainConfig
from sipl.config.sections import (BenchmarkConfig, CropsConfig, EvalConfig, PrefectConfig, RefineConfig, ShardsConfig,
                                  SourceConfig, SplitsConfig, Strict, TaskConfig)

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, the key path and what to do."""


def _tinted_haze(step: dict[str, Any]) -> bool:
    """Whether a degradation step is haze with a non-grey airlight (``tint`` other than 0, or a range beyond 0)."""
    tint = step.get("tint", 0.0)
    return step["name"] == "haze" and any(float(value) != 0.0 for value in (tint if isinstance(tint, list) else [tint]))


# ------------------------------------------------------------------------------------------------- root

class Params(Strict):
    # The file these params came from, for messages that name it (set by parse_params; not a params key).
    _source: str = PrivateAttr(default=PARAMS_FILE)

    seed: int = 0
    # a key of `profiles` (checked below): tiny, tiny-scratch, small, paper, or one of your own
    profile: str = Field("tiny", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    refine_steps: Literal["auto"] | int = "auto"
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()], min_length=1)
    splits: SplitsConfig = SplitsConfig()
    crops: CropsConfig = CropsConfig()
    tasks: dict[str, TaskConfig] = Field(min_length=1)
    shards: ShardsConfig = ShardsConfig()
    profiles: dict[str, ProfileConfig]
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
