"""Paired training augmentation: one albumentations pipeline per task, the ground truth as an additional target.

For a training sample the pipeline takes the input (``image``: the shard's stored lq, or with fresh degradations the
clean crop itself) and the ground truth (``gt``, albumentations' additional target of type image) and runs, in order:

=============  =========================================================  ==========================================
stage          transforms                                                 applies to
=============  =========================================================  ==========================================
content        ``DeadLeaves`` (hand-written, below)                       both: replaced by one dead-leaves canvas
                                                                          of the full crop; share
                                                                          ``synthetic_share`` (fresh only)
geometry       ``A.RandomCrop(patch, patch)`` + ``A.D4`` (one of the 8    both alike, always
               flips / 90° rotations)
tone           ``A.ColorJitter`` (exposure ×0.5–1.3, saturation           both alike; share ``photometric`` (fresh
               ×0.6–1.3) + ``A.RandomGamma`` (γ 0.7–1.5)                  only)
degradation    ``Degrade``: the task's steps of the ``degradations``      input := degradation of ``gt`` (fresh only)
               registry (hand-written physics)
channels       ``A.ChannelShuffle``                                       both alike; share ``channel_shuffle``
=============  =========================================================  ==========================================

With fresh degradations the crop, orientation and tone are drawn before the degradation, so the physics runs on the
``patch``² crop the model sees. The content stage runs on the whole clean crop and the call returns that clean image
(``AugmentedPair.source``), so further crops of the same sample (the degradation head's) reuse the canvas instead of
drawing one each. Determinism: every call is seeded by a per-sample seed only (the caller derives it from params and
the sample's identity); each stage gets its own generators (``np.random.Generator`` and ``random.Random``) derived
from that seed and the stage name, so switching one stage on or off leaves the draws of the others unchanged, and no
process-global RNG state (``np.random``, ``random``, torch) is read or written.
"""

from __future__ import annotations

import os
import random
from typing import Any, NamedTuple

import numpy as np

from sipl.errors import SiplError
from sipl.seeding import derive_seed

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no registry check when a loader worker imports it

import albumentations as A  # noqa: E402

STAGES = ("content", "geometry", "tone", "degradation", "channels")


# ------------------------------------------------------------------------------------- hand-written pieces

def fresh_degradation(gt: np.ndarray, steps: list[dict[str, Any]], rng: np.random.Generator | list[int] | int,
                      task: str = "?", key: str = "?") -> np.ndarray:
    """A new degraded version of the clean crop ``gt`` (uint8 H×W×3 -> uint8 H×W×3) by ``steps`` (the task's
    ``degradations.apply`` steps; ranges drawn afresh) with the generator ``rng`` (or one seeded with it).
    Raises SiplError naming the task and sample when a step cannot run."""
    import degradations

    try:
        lq, _ = degradations.apply(steps, gt, np.random.default_rng(rng))
    except (KeyError, TypeError, ValueError) as error:
        raise SiplError(f"params tasks.{task}: degrading training sample {key} failed: {error}") from None
    return lq


def dead_leaves(like: np.ndarray, rng: np.random.Generator, max_disks: int = 300) -> np.ndarray:
    """A dead-leaves image of the shape of ``like`` (uint8 H×W×3): ``max_disks`` occluding disks with a power-law
    radius distribution (density ∝ r⁻³, from 2 px to a third of the side), the scale-invariant occlusion model of
    natural images, each coloured with a random pixel of ``like`` (so the colours are a photo's); disk k lies in front
    of every later one, a pixel no disk covers takes the last disk's colour; then softened by a blur of random width
    (0-1.2 px), as natural edges are."""
    import cv2

    height, width = like.shape[:2]
    colours = like.reshape(-1, 3)
    r_min, r_max = 2.0, max(3.0, min(height, width) / 3)
    # inverse-CDF draw of p(r) ∝ r^-3 on [r_min, r_max]
    radii = (r_min ** -2 - rng.random(max_disks) * (r_min ** -2 - r_max ** -2)) ** -0.5
    centres_y = rng.uniform(-radii, height + radii)
    centres_x = rng.uniform(-radii, width + radii)
    picks = colours[rng.integers(0, len(colours), max_disks)].astype(int)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = picks[-1]
    scale = 16  # OpenCV's fixed-point sub-pixel positions (shift=4)
    # painted back to front, so each disk covers the ones drawn after it
    for k in range(max_disks - 1, -1, -1):
        centre = (int(round(centres_x[k] * scale)), int(round(centres_y[k] * scale)))
        cv2.circle(canvas, centre, int(round(radii[k] * scale)), picks[k].tolist(), thickness=-1,
                   lineType=cv2.LINE_8, shift=4)
    sigma = rng.uniform(0.0, 1.2)
    if sigma > 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    return canvas


# ------------------------------------------------------------------------------- albumentations transforms

class DeadLeaves(A.ImageOnlyTransform):
    """Replaces input and ground truth by one dead-leaves canvas (``dead_leaves``) coloured from the ground truth;
    drawn with this transform's ``random_generator``. The canvas is also kept in the call's applied parameters
    (``get_applied_params()["canvas"]``)."""

    def apply_with_params(self, params: dict[str, Any], **data: Any) -> dict[str, Any]:
        canvas = dead_leaves(data["gt"], self.random_generator)
        params["canvas"] = canvas
        return {**data, "image": canvas, "gt": canvas}


class Degrade(A.ImageOnlyTransform):
    """Replaces the input (``image``) by the task's degradation of the ground truth (``gt``), drawn with this
    transform's ``random_generator``; ``gt`` is left as it is. ``steps``: the task's ``degradations.apply`` steps."""

    def __init__(self, steps: list[dict[str, Any]], task: str = "?", p: float = 1.0):
        super().__init__(p=p)
        self.steps, self.task = steps, task

    def apply_with_params(self, params: dict[str, Any], **data: Any) -> dict[str, Any]:
        lq = fresh_degradation(data["gt"], self.steps, self.random_generator, self.task, data.get("key", "?"))
        return {**data, "image": lq}


def photometric(p: float) -> A.Sequential:
    """Random exposure (×0.5–1.3), saturation (×0.6–1.3, towards the luma grey) in random order, then gamma
    (0.7–1.5), with probability ``p``; on uint8 images."""
    return A.Sequential([
        A.ColorJitter(brightness=(0.5, 1.3), contrast=(1.0, 1.0), saturation=(0.6, 1.3), hue=(0.0, 0.0), p=1.0),
        A.RandomGamma(gamma_limit=(70, 150), p=1.0),
    ], p=p)


# ------------------------------------------------------------------------------------------------ pipeline

class AugmentedPair(NamedTuple):
    """One augmented training pair."""

    lq: np.ndarray  # input, contiguous uint8 patch×patch×3
    gt: np.ndarray  # ground truth, contiguous uint8 patch×patch×3
    stages: tuple[str, ...]  # the STAGES that changed this pair, e.g. ("content", "geometry", "degradation")
    source: np.ndarray  # the whole clean image after the content stage (the given gt, or its dead-leaves canvas)


class PairAugment:
    """The training pair's augmentation pipeline (module docstring), one ``A.Compose`` per task, built on first use.

    Args:
        patch: side of the square training crop (px).
        task_steps: task -> degradation steps; given, the input is degraded afresh from the ground truth at every
            call (``train.fresh_degradations``) and the content and tone stages are enabled; None keeps the input.
        photometric: share of clean crops given a random exposure, saturation and gamma (needs ``task_steps``).
        synthetic_share: share of clean crops replaced by a dead-leaves image (needs ``task_steps``).
        channel_shuffle: share of pairs put in a random one of the 6 RGB orders, the same for input and target.
    """

    def __init__(self, patch: int, task_steps: dict[str, list[dict[str, Any]]] | None = None,
                 photometric: float = 0.0, synthetic_share: float = 0.0, channel_shuffle: float = 0.0):
        self.patch, self.task_steps = patch, task_steps
        self.photometric, self.synthetic_share, self.channel_shuffle = photometric, synthetic_share, channel_shuffle
        self._pipelines: dict[str | None, tuple[A.Compose, list[tuple[str, list[Any]]]]] = {}

    def _build(self, task: str | None) -> tuple[A.Compose, list[tuple[str, list[Any]]]]:
        fresh = self.task_steps is not None
        stages: list[tuple[str, list[Any]]] = []
        if fresh and self.synthetic_share > 0:
            stages.append(("content", [DeadLeaves(p=self.synthetic_share)]))
        stages.append(("geometry", [A.RandomCrop(self.patch, self.patch, p=1.0), A.D4(p=1.0)]))
        if fresh and self.photometric > 0:
            stages.append(("tone", [photometric(self.photometric)]))
        if fresh and task is not None:
            stages.append(("degradation", [Degrade(self.task_steps[task], task)]))
        if self.channel_shuffle > 0:
            stages.append(("channels", [A.ChannelShuffle(p=self.channel_shuffle)]))
        transforms = [t for _, members in stages for t in members]
        # seed=0 only fixes the Compose's own draws; every call re-seeds each stage from the sample's seed.
        # Shapes are checked in __call__, with the sample's key in the message.
        return A.Compose(transforms, additional_targets={"gt": "image"}, seed=0, is_check_shapes=False), stages

    def __call__(self, image: np.ndarray | None, gt: np.ndarray, task: str | None, seed: int,
                 key: str = "?") -> AugmentedPair:
        """Augment one pair.

        Args:
            image: the input, uint8 H×W×3 (ignored where the task is degraded afresh: it is the degradation of gt).
            gt: the ground truth, uint8 H×W×3 of the same shape.
            task: the task whose steps degrade the crop (fresh mode); None = no degradation (an identity pair in
                fresh mode: both outputs are the augmented ground truth).
            seed: the per-sample seed (0 <= seed < 2**63); the same seed gives the same pixels.
            key: the sample key, named in errors.

        Returns:
            ``AugmentedPair(lq, gt, stages, source)``.

        Raises:
            SiplError naming the sample when it is smaller than the patch or its input and ground truth differ in
            shape, or the task when degrading fails.
        """
        fresh = self.task_steps is not None
        if gt.ndim != 3 or gt.shape[2] != 3 or (not fresh and image.shape != gt.shape):
            raise SiplError(f"sample {key}: input {getattr(image, 'shape', None)} and ground truth {gt.shape} must be "
                            "RGB images of one shape (H×W×3); re-run `sipl synthesize`")
        height, width = gt.shape[:2]
        if height < self.patch or width < self.patch:
            raise SiplError(f"sample {key} is {height}x{width}, smaller than train.patch={self.patch}; lower the "
                            "patch or raise crops.train.size and re-run `sipl synthesize`")
        if task not in self._pipelines:
            self._pipelines[task] = self._build(task)
        pipeline, stages = self._pipelines[task]
        for name, members in stages:
            stage_seed = derive_seed(seed, name)
            generator, py_random = np.random.default_rng(stage_seed), random.Random(stage_seed)
            for transform in members:
                transform.set_random_state(generator, py_random)
        out = pipeline(image=gt if fresh else image, gt=gt, key=key)
        applied = tuple(name for name, members in stages
                        if any(t.p >= 1.0 or _was_applied(t) for t in members))
        source = stages[0][1][0].get_applied_params()["canvas"] if "content" in applied else gt
        return AugmentedPair(np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["gt"]), applied, source)


def _was_applied(transform: Any) -> bool:
    """Whether a transform (or any member of a nested composition) ran in the last call."""
    if isinstance(transform, A.BaseCompose):
        return any(_was_applied(member) for member in transform.transforms)
    return bool(transform.get_applied_params())
