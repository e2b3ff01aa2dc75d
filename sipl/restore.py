"""Restoring users' own images: input collection, output naming, tiling policy and the per-file loop.

Inputs are files, folders (their image files, not recursive) and glob patterns. Each readable image becomes
``OUT/{stem}.png`` (a repeated stem gets ``-2``, ``-3``, ...); unreadable ones are listed and skipped. An output
path that is one of the inputs is refused before anything runs, so an input is never overwritten. Large images are
processed in tiles (``AUTO_TILE`` unless told otherwise), which bounds memory whatever the image size.

The refinement step count is one number, or per degradation class (``{"clean": 0, "denoise_25": 3, ...}``, the
per-task choice of ``sipl select``): then a model with a degradation head first classifies each image (on a centre
crop, ``sipl.models.refine.predict_degradation``) and refines it with its class's step count.
"""

from __future__ import annotations

import glob
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sipl.data.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_rgb, write_png_atomic
from sipl.errors import SiplError
from sipl.models.tiling import tile_count, tile_spans

AUTO_TILE = 512
_GLOB_CHARS = set("*?[")


@dataclass
class RestorePlan:
    """What will be restored: (input, output) pairs, and inputs that could not even be listed."""

    jobs: list[tuple[Path, Path]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders and globs into a de-duplicated, ordered list of files.

    Returns:
        (files, problems) where problems are (argument, reason) for arguments that matched nothing.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for argument in inputs:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append((argument, f"folder holds no image files ({', '.join(IMAGE_SUFFIXES)})"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif _GLOB_CHARS & set(argument):
            found = sorted(Path(p) for p in glob.glob(argument, recursive=True) if Path(p).is_file())
            if not found:
                problems.append((argument, "pattern matches no file"))
            files.extend(found)
        else:
            problems.append((argument, "no such file or folder"))
    unique, seen = [], set()
    for file in files:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(file)
    return unique, problems


def plan(inputs: list[str], out_dir: str | Path) -> RestorePlan:
    """Pair every input with ``out_dir/{stem}.png``; refuse (SiplError) when an output would replace an input."""
    files, problems = collect_inputs(inputs)
    out_dir = Path(out_dir)
    result = RestorePlan(missing=problems)
    used: dict[str, int] = {}
    for file in files:
        stem = file.stem
        used[stem] = used.get(stem, 0) + 1
        name = f"{stem}.png" if used[stem] == 1 else f"{stem}-{used[stem]}.png"
        result.jobs.append((file, out_dir / name))
    inputs_resolved = {file.resolve() for file in files}
    clashes = [str(dst) for _, dst in result.jobs if dst.resolve() in inputs_resolved]
    if clashes:
        raise SiplError(f"refusing to overwrite input file(s) {clashes}: choose an output folder (-o) that does not "
                        "hold same-named .png inputs")
    return result


def choose_tile(height: int, width: int, tile: int | None) -> int | None:
    """Tile side for an image: ``tile`` if given (0 = never tile), else ``AUTO_TILE`` for images larger than it."""
    if tile is not None:
        return tile if tile > 0 and max(height, width) > tile else None
    return AUTO_TILE if max(height, width) > AUTO_TILE else None


def degradation_belief(model: Any, image: np.ndarray, top: int = 3) -> dict[str, Any] | None:
    """What the model's degradation head believes of one image: ``{"label", "confidence", "top": [[class,
    probability], ...]}`` (the ``top`` most probable classes, most probable first); None for a model without a
    head."""
    from sipl.models.refine import degradation_probabilities

    if not getattr(model, "degradation_classes", None):
        return None
    ranked = sorted(degradation_probabilities(model, image).items(), key=lambda item: -item[1])
    return {"label": ranked[0][0], "confidence": round(ranked[0][1], 4),
            "top": [[name, round(probability, 4)] for name, probability in ranked[:top]]}


def steps_for(model: Any, image: np.ndarray, steps: int | dict[str, int],
              belief: dict[str, Any] | None = None) -> tuple[int, str | None]:
    """(step count, predicted class or None) for one image: ``steps`` itself when it is a number; else the count
    of the class the model predicts (0 for a class ``steps`` does not list). ``belief``: the head's answer for
    this image when the caller already has it (``degradation_belief``)."""
    from sipl.models.refine import predict_degradation

    if isinstance(steps, int):
        return steps, None
    label = belief["label"] if belief else predict_degradation(model, image)
    return int(steps.get(label, 0)), label


def chain_passes(steps: int, scheme: str) -> int:
    """Cost of restoring with ``steps`` refinement steps, in full passes (one encoder + one decoder pass = 1):
    step 0 is one pass; an anchored step one more; an official step one (the first) or two (each later one)."""
    if scheme == "official":
        return 1 + min(steps, 1) + 2 * max(steps - 1, 0)
    return 1 + steps


def processed_megapixels(height: int, width: int, tile: int | None, overlap: int, align: int) -> float:
    """Megapixels one pass runs on: the image, or the sum of its (overlapping) tiles."""
    if tile is None:
        return height * width / 1e6
    tile = tile // align * align
    rows = sum(end - start for start, end in tile_spans(height, tile, overlap, align))
    cols = sum(end - start for start, end in tile_spans(width, tile, overlap, align))
    return rows * cols / 1e6


def measure_pass_speed(model: Any, side: int = 256) -> float:
    """Seconds per megapixel of one full pass (step 0) of ``model`` on this machine, timed on a side×side probe
    after one warm-up run; the basis of the estimate printed before each image."""
    from sipl.models.refine import refine

    probe = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        for _ in refine(model, probe, 0):
            pass
        seconds.append(time.perf_counter() - start)
    return seconds[-1] / (side * side / 1e6)


def restore_array(model: Any, image: np.ndarray, steps: int, scheme: str, tile: int | None,
                  tile_overlap: int = 16, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Restore one image.

    Args:
        model: a ``SIPLModel`` or what ``sipl.models.runtime.for_inference`` made of one.
        image: uint8 H x W x 3 RGB, any size.
        steps: refinement steps (0 = the preliminary restoration only).
        tile: tile side, or None for the whole image at once.
        on_tile: called as ``on_tile(done, total)`` after each tile (once for an untiled image).

    Returns:
        uint8 H x W x 3 RGB (output clipped to [0, 1] and rounded).
    """
    from sipl.evaluation.evaluate import to_tensor
    from sipl.models.refine import refine

    x = to_tensor(image)
    output = None
    with torch.inference_mode():
        for _, output in refine(model, x, steps, scheme=scheme, tile=tile, tile_overlap=tile_overlap,
                                last_only=True, on_tile=on_tile):
            pass
        del x
        # In place: on a 24 MP photo each float copy of the output is another 290 MB.
        output = output[0].clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return output.permute(1, 2, 0).contiguous().numpy()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_plan(model: Any, restore_plan: RestorePlan, steps: int | dict[str, int], scheme: str,
             tile: int | None,
             tile_overlap: int = 16, progress: bool = True,
             log: Callable[[str], None] = print, max_pixels: int = DEFAULT_MAX_PIXELS,
             on_done: Callable[[dict[str, Any], np.ndarray, np.ndarray], None] | None = None,
             on_failed: Callable[[dict[str, str]], None] | None = None) -> dict[str, Any]:
    """Restore every planned file, one at a time. ``steps``: a step count, or step counts per degradation class
    (the model's head picks the class of each image, see ``steps_for``). Files above ``max_pixels`` pixels are
    skipped like unreadable ones, before they are decoded.

    Before each image one line says its size, tiles, step count and estimated time (from a short speed probe of
    the model on this machine); with ``progress`` a tqdm bar on stderr then counts its tiles, with an ETA.
    ``on_done(record, image, restored)`` is called after each written output with its record (below) and the input
    and output arrays (uint8 H×W×3), ``on_failed(item)`` for each input that failed, as they happen.

    An output that cannot be written (disk full, folder turned read-only) stops the run there: every later image
    would fail the same way after its whole restoration.

    Returns:
        ``{"done": [{"input", "output", "size", "seconds", "notes", "steps", "degradation", "belief", "tiles"}],
        "failed": [{"input", "reason"}]}``; ``degradation`` is the class that chose the step count (None when
        the count was fixed), ``belief`` what the head believes (``degradation_belief``; None without a head).
        After a failed write also ``"not_attempted"`` (the inputs after it) and ``"stopped": {"output", "errno",
        "reason"}``.
    """
    from tqdm import tqdm

    model.eval()
    done, failed = [], [{"input": arg, "reason": reason} for arg, reason in restore_plan.missing]
    if on_failed is not None:
        for item in failed:
            on_failed(item)
    emit = (lambda message: tqdm.write(message, file=sys.stderr)) if progress else log
    align = getattr(model, "multiple", 1)
    seconds_per_mp = measure_pass_speed(model) if restore_plan.jobs else 0.0
    count = len(restore_plan.jobs)
    for index, (src, dst) in enumerate(restore_plan.jobs, 1):
        start = time.perf_counter()
        try:
            image, notes = read_rgb(src, max_pixels=max_pixels)
        except SiplError as error:
            failed.append({"input": str(src), "reason": str(error)})
            emit(f"skipped {src}: {error}")
            if on_failed is not None:
                on_failed(failed[-1])
            continue
        height, width = image.shape[:2]
        belief = degradation_belief(model, image)
        image_steps, label = steps_for(model, image, steps, belief)
        image_tile = choose_tile(height, width, tile)
        tiles = tile_count(height, width, image_tile, tile_overlap, align) if image_tile else 1
        estimate = (seconds_per_mp * processed_megapixels(height, width, image_tile, tile_overlap, align)
                    * chain_passes(image_steps, scheme))
        emit(f"[{index}/{count}] {src}: {width}x{height}, {tiles} tile(s), {image_steps} refinement step(s)"
             f"{' (looks like ' + label + ')' if label else ''}, about {_duration(estimate)}")
        with tqdm(total=tiles, unit="tile", disable=not progress, desc=f"[{index}/{count}] {src.name}",
                  file=sys.stderr, leave=False) as bar:
            restored = restore_array(model, image, image_steps, scheme, image_tile, tile_overlap,
                                     on_tile=lambda finished, _total: bar.update(finished - bar.n))
        try:
            write_png_atomic(restored, dst)
        except OSError as error:
            # A folder-wide condition (disk full, read-only, permissions) that every later image would meet too,
            # after minutes of work each: stop, and say what was written, what failed and what was not attempted.
            failed.append({"input": str(src), "reason": f"cannot write {dst}: {error.strerror or error}"})
            emit(f"failed {src}: cannot write {dst}: {error.strerror or error}")
            if on_failed is not None:
                on_failed(failed[-1])
            return {"done": done, "failed": failed,
                    "not_attempted": [str(path) for path, _ in restore_plan.jobs[index:]],
                    "stopped": {"output": str(dst), "errno": error.errno, "reason": error.strerror or str(error)}}
        seconds = time.perf_counter() - start
        if label is not None:
            notes = [f"looks like {label}: {image_steps} refinement step(s)", *notes]
        done.append({"input": str(src), "output": str(dst), "size": [height, width], "seconds": round(seconds, 3),
                     "notes": notes, "steps": image_steps, "degradation": label, "belief": belief, "tiles": tiles})
        line = f"{src} -> {dst} ({width}x{height}, {seconds:.2f} s{'; ' + '; '.join(notes) if notes else ''})"
        emit(line)
        if on_done is not None:
            on_done(done[-1], image, restored)
    return {"done": done, "failed": failed}
