"""Scoring refinement steps 0..K on the val/test shards (the ``evaluate`` stage).

For every image the refinement chain runs once per scheme up to ``refine.max_steps``; each yielded step is scored
as it comes (RGB and Y PSNR/SSIM, see ``sipl.evaluation.metrics``) together with the cumulative model time to reach
it. The degraded input and, where the family has one, a classical baseline (``sipl.evaluation.classical``) are scored
too. Per-task values are plain means over images; group values are plain means over tasks. A model with a degradation
head also classifies every input as ``sipl restore`` does; each task records how often the predicted class is the
task itself (``accuracy``) or one of its family (``family_accuracy``).
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from sipl.data.shards import Sample
from sipl.evaluation import classical, metrics
from sipl.evaluation.selection import METRIC_KEYS, group_members


@dataclass
class TaskAccumulator:
    """Per-image values of one split/task, reduced to means by ``result()``."""

    family: str
    schemes: list[str]
    images: int = 0
    input: dict[str, list[float]] = field(default_factory=dict)
    classical: dict[str, list[float]] = field(default_factory=dict)
    classical_method: str | None = None
    steps: dict[tuple[str, int], dict[str, list[float]]] = field(default_factory=dict)
    predicted: dict[str, int] = field(default_factory=dict)
    task: str = ""
    class_families: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def _add(target: dict[str, list[float]], values: dict[str, float]) -> None:
        for key, value in values.items():
            target.setdefault(key, []).append(value)

    def result(self) -> dict[str, Any]:
        def means(values: dict[str, list[float]]) -> dict[str, float]:
            return {key: round(float(np.mean(items)), 6) for key, items in values.items()}

        out: dict[str, Any] = {"family": self.family, "images": self.images, "input": means(self.input)}
        if self.classical:
            out["classical"] = {"method": self.classical_method, **means(self.classical)}
        out["schemes"] = {
            scheme: {str(step): means(values) for (name, step), values in sorted(self.steps.items())
                     if name == scheme}
            for scheme in self.schemes
        }
        if self.predicted:
            total = sum(self.predicted.values())
            same_family = sum(n for name, n in self.predicted.items()
                              if self.class_families.get(name) == self.family)
            out["degradation"] = {"accuracy": round(self.predicted.get(self.task, 0) / total, 6),
                                  "family_accuracy": round(same_family / total, 6),
                                  "predicted": dict(sorted(self.predicted.items()))}
        return out


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> float32 1 x 3 x H x W in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W float (any range) -> uint8 H x W x 3, clipped and rounded."""
    array = image[0].detach().float().clamp(0.0, 1.0).mul(255.0).round().byte()
    return array.permute(1, 2, 0).contiguous().numpy()


def _score(out: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    return {key: float(value[0]) for key, value in metrics.score(out, gt).items()}


def evaluate_sample(model: torch.nn.Module, sample: Sample, acc: TaskAccumulator, max_steps: int,
                    tile: int | None, tile_overlap: int, use_classical: bool,
                    keep_scheme: str | None = None) -> list[np.ndarray] | None:
    """Score one sample into ``acc``; return the ``keep_scheme`` outputs of steps 0..K (uint8) when asked."""
    from sipl.models.refine import refine

    lq, gt = to_tensor(sample.lq), to_tensor(sample.gt)
    acc.images += 1
    if getattr(model, "degradation_classes", None):
        from sipl.models.refine import predict_degradation

        label = predict_degradation(model, sample.lq)
        acc.predicted[label] = acc.predicted.get(label, 0) + 1
    acc._add(acc.input, _score(lq, gt))
    if use_classical and classical.method_name(acc.family):
        start = time.perf_counter()
        restored = classical.restore(sample.lq, acc.family, sample.meta.get("applied"))
        elapsed = time.perf_counter() - start
        acc.classical_method = classical.method_name(acc.family)
        acc._add(acc.classical, {**_score(to_tensor(restored), gt), "seconds": elapsed})
    kept = None
    for scheme in acc.schemes:
        outputs = []
        elapsed, last = 0.0, time.perf_counter()
        for step, out in refine(model, lq, max_steps, scheme=scheme, tile=tile, tile_overlap=tile_overlap):
            # The clock runs only while the model works, not while its outputs are scored.
            elapsed += time.perf_counter() - last
            acc._add(acc.steps.setdefault((scheme, step), {}), {**_score(out, gt), "seconds": elapsed})
            if scheme == keep_scheme:
                outputs.append(to_uint8(out))
            last = time.perf_counter()
        if scheme == keep_scheme:
            kept = outputs
    return kept


def group_averages(split_tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Plain means over each group's tasks of input, classical (where every member has one) and every step."""
    families = {name: task["family"] for name, task in split_tasks.items()}
    groups = {}
    for group, members in group_members(families).items():
        rows = [split_tasks[name] for name in members]

        def mean_of(pick: Callable[[dict[str, Any]], dict[str, float]]) -> dict[str, float]:
            return {key: round(float(np.mean([pick(row)[key] for row in rows])), 6) for key in METRIC_KEYS}

        entry: dict[str, Any] = {"tasks": members, "input": mean_of(lambda row: row["input"])}
        if all("classical" in row for row in rows):
            entry["classical"] = mean_of(lambda row: row["classical"])
        schemes = rows[0]["schemes"]
        entry["schemes"] = {
            scheme: {step: mean_of(lambda row, s=scheme, k=step: row["schemes"][s][k])
                     for step in steps if all(step in row["schemes"].get(scheme, {}) for row in rows)}
            for scheme, steps in schemes.items()
        }
        groups[group] = entry
    return groups


def psnr_csv(split_tasks: dict[str, dict[str, Any]], groups: dict[str, Any]) -> str:
    """CSV text ``task,scheme,step,psnr`` for every task and the ``all`` group (rows ``task=all``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "scheme", "step", "psnr"])
    rows = dict(sorted(split_tasks.items()))
    if "all" in groups:
        rows["all"] = groups["all"]
    for name, task in rows.items():
        for scheme, steps in task["schemes"].items():
            for step, values in sorted(steps.items(), key=lambda item: int(item[0])):
                writer.writerow([name, scheme, int(step), f"{values['psnr']:.4f}"])
    return buffer.getvalue()


def sample_grid(rows: list[list[np.ndarray]], labels: list[str], min_side: int = 128,
                max_side: int = 192) -> np.ndarray:
    """One PNG-ready uint8 image: a header of column labels, then one row per sample.

    Args:
        rows: per sample, the column images (uint8 H x W x 3, equal size within a row).
        labels: one label per column.
        min_side / max_side: each row is scaled so that its longer side lies between these (nearest-neighbour
            when enlarging, so pixels stay visible).
    """
    from PIL import Image, ImageDraw

    gap, header = 4, 18
    scaled_rows = []
    for row in rows:
        height, width = row[0].shape[:2]
        longer = max(height, width)
        scale = max_side / longer if longer > max_side else max(1.0, min_side / longer)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resample = Image.NEAREST if scale >= 1 else Image.BILINEAR
        scaled_rows.append([np.asarray(Image.fromarray(image).resize(size, resample)) for image in row])
    cell_w = max(image.shape[1] for row in scaled_rows for image in row)
    total_h = header + sum(row[0].shape[0] + gap for row in scaled_rows)
    total_w = len(labels) * (cell_w + gap) - gap
    canvas = Image.new("RGB", (total_w, total_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, label in enumerate(labels):
        draw.text((column * (cell_w + gap) + 2, 3), label, fill=(0, 0, 0))
    top = header
    for row in scaled_rows:
        for column, image in enumerate(row):
            canvas.paste(Image.fromarray(image), (column * (cell_w + gap), top))
        top += row[0].shape[0] + gap
    return np.asarray(canvas)


SAMPLE_IMAGES_INDEX = "index.json"


def sample_columns(scheme: str, steps: int) -> list[dict[str, str]]:
    """The columns of a sample row (``evaluate_split``'s grids): ``[{"key", "label"}]`` for the input, step 0,
    steps 1..``steps`` of ``scheme`` and the ground truth."""
    return ([{"key": "input", "label": "input"}, {"key": "step0", "label": "step 0"}]
            + [{"key": f"step{k}", "label": f"{scheme} {k}"} for k in range(1, steps + 1)]
            + [{"key": "gt", "label": "ground truth"}])


def write_sample_images(folder: Path, scheme: str,
                        sets: list[tuple[str, str, dict[str, list[list[np.ndarray]]]]]) -> dict[str, Any]:
    """Write every sample row as one PNG per column, and ``index.json`` listing them, into ``folder``: the images
    the report compares side by side (``sipl.viewer``). The folder is built as ``{folder}.partial`` and renamed
    into place when complete, replacing an earlier one as a whole.

    Args:
        folder: e.g. ``plots/sample_images``.
        scheme: the refinement scheme of the rows' steps 1..K.
        sets: ``(name, kind, task -> rows)``; kind ``split`` (files under ``{name}/``) or ``benchmark``
            (``benchmarks/{name}/``); rows as ``evaluate_split`` keeps them, [input, step 0..K, ground truth].
    Returns:
        The index: ``{"version", "scheme", "columns": [{"key", "label"}], "sets": [{"name", "kind", "tasks":
        {TASK: [{"size": [h, w], "files": {KEY: path relative to folder}}]}}]}``.
    """
    from sipl.atomic_files import write_json_atomic
    from sipl.data.imageio import write_png_atomic

    steps = max((len(row) - 3 for _, _, grids in sets for rows in grids.values() for row in rows), default=0)
    columns = sample_columns(scheme, steps)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    index: dict[str, Any] = {"version": 1, "scheme": scheme, "columns": columns, "sets": []}
    for name, kind, grids in sets:
        base = name if kind == "split" else f"benchmarks/{name}"
        tasks: dict[str, list[dict[str, Any]]] = {}
        for task, rows in sorted(grids.items()):
            for number, row in enumerate(rows):
                files = {}
                for column, image in zip(columns[:len(row) - 1] + columns[-1:], row):
                    files[column["key"]] = f"{base}/{task}/{number:02d}-{column['key']}.png"
                    write_png_atomic(image, staging / files[column["key"]])
                tasks.setdefault(task, []).append({"size": list(row[0].shape[:2]), "files": files})
        index["sets"].append({"name": name, "kind": kind, "tasks": tasks})
    write_json_atomic(staging / SAMPLE_IMAGES_INDEX, index)
    retired = folder.with_name(folder.name + ".old")
    shutil.rmtree(retired, ignore_errors=True)
    if folder.exists():
        folder.rename(retired)
    staging.rename(folder)
    shutil.rmtree(retired, ignore_errors=True)
    return index


def evaluate_split(model: torch.nn.Module, samples_by_task: dict[str, tuple[str, Iterable[Sample]]],
                   schemes: list[str], max_steps: int, tile: int | None = None, tile_overlap: int = 16,
                   use_classical: bool = True, grid_scheme: str | None = None, grid_images: int = 0,
                   max_images: int | None = None, progress: Callable[[str], None] | None = None,
                   class_families: dict[str, str] | None = None,
                   ) -> tuple[dict[str, Any], dict[str, list[list[np.ndarray]]]]:
    """Evaluate every task of one split.

    Args:
        samples_by_task: task -> (family, iterable of Samples).
        grid_scheme / grid_images: keep the first ``grid_images`` samples' outputs of that scheme for the grids.
        class_families: degradation class -> family, for the head's ``family_accuracy`` (models with a head).

    Returns:
        (task -> result dict as in ``metrics/eval_steps.json``, task -> grid rows [input, step 0..K, gt]).
    """
    results, grids = {}, {}
    model.eval()
    with torch.inference_mode():
        for task, (family, samples) in sorted(samples_by_task.items()):
            acc = TaskAccumulator(family=family, schemes=list(schemes), task=task,
                                  class_families=dict(class_families or {}))
            rows: list[list[np.ndarray]] = []
            start = time.perf_counter()
            for index, sample in enumerate(samples):
                if max_images is not None and index >= max_images:
                    break
                keep = grid_scheme if index < grid_images else None
                outputs = evaluate_sample(model, sample, acc, max_steps, tile, tile_overlap, use_classical, keep)
                if outputs is not None:
                    rows.append([sample.lq, *outputs, sample.gt])
            if acc.images == 0:
                continue
            results[task] = acc.result()
            grids[task] = rows
            if progress:
                best = max(v["psnr"] for s in results[task]["schemes"].values() for v in s.values())
                progress(f"{task}: {acc.images} images, input {results[task]['input']['psnr']:.2f} dB, "
                         f"best output {best:.2f} dB ({time.perf_counter() - start:.1f} s)")
    return results, grids
