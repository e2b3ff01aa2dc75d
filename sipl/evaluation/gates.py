"""Scoring the degradation head's confidence gate on validation (part of ``sipl evaluate``).

At test time the head's global per-class gain and bias are applied only to inputs whose most probable class has at
least ``affine_min_confidence`` (``sipl.models.degradation_head``). Under any gate the step-0 restoration of an input
is one of two images: with the affine correction or without it. So one pass per input scores every gate: the encoder
and the decoder run once, without the affine; the head's probabilities are computed once; each gate then adds the
correction where the input's top probability reaches it (the same sum, in the same order, as the model's own output).

``score_gates`` returns the ``"affine_gate"`` section of ``metrics/eval_steps.json``; ``sipl.evaluation.selection.
choose_gate`` picks the gate from it (``sipl evaluate`` applies that gate before scoring the splits and benchmark sets,
``sipl select`` writes it to ``models/selection.json``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from sipl.data.shards import Sample
from sipl.evaluation.evaluate import to_tensor
from sipl.evaluation.metrics import psnr
from sipl.models.degradation_head import Conditioning
from sipl.models.files import NEVER_GATE_THRESHOLD, gate_label
from sipl.models.tiling import tiled_map

# The head thresholds scored besides the model's own one and "never" (NEVER_GATE_THRESHOLD).
GATE_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)


def candidate_thresholds(own: float) -> list[float]:
    """The scored thresholds, ascending: ``GATE_GRID``, the model's own one, and "never"."""
    return sorted({*GATE_GRID, float(own) if own <= 1.0 else NEVER_GATE_THRESHOLD, NEVER_GATE_THRESHOLD})


def step0_under_gates(model: torch.nn.Module, x: Tensor, thresholds: list[float]) -> tuple[list[Tensor], Tensor]:
    """Step-0 restorations of N×3×H×W ``x`` under each head threshold, from one encoder and decoder pass.

    ``model``: an eager ``SIPLModel`` with a global affine. Returns (one clipped output per threshold, the N top
    class probabilities)."""
    state = model.encode(x)
    height, width = state.size
    image = state.image[..., :height, :width]
    probabilities = model.head(image).logits.softmax(dim=1)
    # The predicted probabilities as the class weights: the head's own test-time mixing, never gated.
    ungated = model.head(image, probabilities)
    residual = model.decode(state, condition=Conditioning(ungated.logits, ungated.film, None, None))
    confidence = probabilities.max(dim=1).values
    outputs = []
    for threshold in thresholds:
        applied = (confidence >= threshold).to(residual.dtype)[:, None, None, None]
        gain, bias = ungated.gain.to(residual.dtype) * applied, ungated.bias.to(residual.dtype) * applied
        outputs.append((residual + image * gain + bias).clamp(0, 1))
    return outputs, confidence


def score_gates(model: torch.nn.Module, samples_by_task: dict[str, tuple[str, Iterable[Sample]]],
                tile: int | None = None, tile_overlap: int = 16, max_images: int | None = None,
                progress: Callable[[str], None] | None = None, split: str = "val") -> dict[str, Any]:
    """Mean step-0 PSNR per task under each candidate gate (``candidate_thresholds`` of the model's own).

    Args:
        model: the eager model (``has_global_affine``), whose head holds its own threshold.
        samples_by_task: task -> (family, Samples) of the selection split.
        tile / tile_overlap: ``eval.tile`` as the evaluation runs it (the head then gates each tile on its own).
        max_images: ``eval.max_images_per_task``.

    Returns:
        ``{"split", "gates": [label, ...] ascending, "model": label of the model's own gate,
        "tasks": {TASK: {"images", "psnr": {label: mean dB}, "corrected": {label: share of the passes (images, or
        tiles) that got the affine}}}}``.
    """
    thresholds = candidate_thresholds(model.head.affine_min_confidence)
    labels = [gate_label(t) for t in thresholds]
    tasks: dict[str, Any] = {}
    model.eval()
    with torch.inference_mode():
        for task, (_, samples) in sorted(samples_by_task.items()):
            scores: list[list[float]] = []
            corrected: list[list[float]] = []
            for index, sample in enumerate(samples):
                if max_images is not None and index >= max_images:
                    break
                lq, gt = to_tensor(sample.lq), to_tensor(sample.gt)
                confidences: list[Tensor] = []

                def run(patch: Tensor) -> list[Tensor]:
                    outputs, confidence = step0_under_gates(model, patch, thresholds)
                    confidences.append(confidence)
                    return outputs

                if tile is None or (lq.shape[-2] <= tile and lq.shape[-1] <= tile):
                    outputs = run(lq)
                else:
                    outputs = tiled_map(run, lq, tile, tile_overlap, align=model.multiple)
                scores.append([float(psnr(out, gt)[0]) for out in outputs])
                passes = torch.cat(confidences)
                corrected.append([float((passes >= t).float().mean()) for t in thresholds])
            if not scores:
                continue
            psnr_means, corrected_means = np.mean(scores, axis=0), np.mean(corrected, axis=0)
            tasks[task] = {"images": len(scores),
                           "psnr": {label: round(float(v), 6) for label, v in zip(labels, psnr_means)},
                           "corrected": {label: round(float(v), 6) for label, v in zip(labels, corrected_means)}}
            if progress:
                best = max(tasks[task]["psnr"], key=tasks[task]["psnr"].__getitem__)
                progress(f"{task}: {len(scores)} images, step 0 by gate: best {best} "
                         f"({tasks[task]['psnr'][best]:.2f} dB)")
    return {"split": split, "gates": labels, "model": gate_label(model.head.affine_min_confidence), "tasks": tasks}
