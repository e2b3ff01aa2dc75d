"""The ``synthesize`` stage: clean sources → crops → degradations → WebDataset shards + manifest.

Determinism: a sample's degradation generator is seeded from (seed, task, source id, crop index) only and its crop
box from (seed, source id, crop index), so the same params give byte-identical shards regardless of worker count
or order. Local output is built in a staging folder and swapped in when complete; S3 output goes to a new generation
prefix and the manifest, written last, switches readers to it (``sipl.data.publish``), so a failed or interrupted
run never touches the complete set the manifest named before, and a reader never sees a manifest naming a missing
shard.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sipl.config import Params
from sipl.config.sections import SplitCropConfig, TaskConfig
from sipl.data.publish import NewSet
from sipl.data.shards import (CLEAN_SET, MANIFEST, SKIPPED, SPLITS, Sample, is_remote, sample_key, write_json,
                              write_task_shards)
from sipl.data.sources import SourceImage, Skipped, assign_splits, load_sources
from sipl.errors import SiplError
from sipl.seeding import derive_seed

# With shards on S3, the manifest and the skipped list are mirrored here so the DVC stage has a local output.
LOCAL_INDEX_DIR = "data/shards"


def crop_boxes(shape: tuple[int, ...], crop: SplitCropConfig, rng: np.random.Generator | None,
               count: int | None = None) -> list[tuple[int, int, int, int]]:
    """Crop boxes ``(top, left, height, width)`` for an image of ``shape`` (H, W, ...).

    ``crop.size`` set: ``crop.per_image`` random square crops (``rng`` required); an image smaller than the size gives
    none. ``crop.size`` null: one centre crop of the whole image, limited to ``crop.max_side`` and floored to a
    multiple of ``crop.multiple`` (the field's mod-16 convention)."""
    height, width = shape[:2]
    if crop.size is None:
        h = min(height, crop.max_side or height) // crop.multiple * crop.multiple
        w = min(width, crop.max_side or width) // crop.multiple * crop.multiple
        if h == 0 or w == 0:
            return []
        return [((height - h) // 2, (width - w) // 2, h, w)]
    if height < crop.size or width < crop.size:
        return []
    tops = rng.integers(0, height - crop.size + 1, size=count or crop.per_image)
    lefts = rng.integers(0, width - crop.size + 1, size=count or crop.per_image)
    return [(int(t), int(l), crop.size, crop.size) for t, l in zip(tops, lefts)]


@dataclass(frozen=True)
class Job:
    split: str
    task: str


# Set in the parent before the pool forks, so the decoded images are shared copy-on-write, not pickled per job.
_STATE: dict[str, Any] = {}


def _samples_for(job: Job) -> list[Sample]:
    import cv2

    import degradations

    cv2.setNumThreads(1)
    params: Params = _STATE["params"]
    crop_cfg: SplitCropConfig = getattr(params.crops, job.split)
    samples = []
    if job.task == CLEAN_SET:
        return _clean_samples(params, _STATE["by_split"][job.split], crop_cfg, job.split)
    task: TaskConfig = params.tasks[job.task]
    for source in _STATE["by_split"][job.split]:
        crop_rng = np.random.default_rng(derive_seed(params.seed, "crop", source.source_id))
        for index, (top, left, h, w) in enumerate(crop_boxes(source.image.shape, crop_cfg, crop_rng)):
            gt = np.ascontiguousarray(source.image[top:top + h, left:left + w])
            seed = derive_seed(params.seed, job.task, source.source_id, index)
            try:
                lq, applied = degradations.apply(task.steps, gt, np.random.default_rng(seed))
            except (KeyError, TypeError, ValueError) as error:
                raise SiplError(f"{params.source} tasks.{job.task}: {error}") from None
            meta = {
                "task": job.task, "family": task.family, "split": job.split, "source_id": source.source_id,
                "source": source.uri, "crop_box": [top, left, h, w], "seed": seed, "applied": applied,
            }
            samples.append(Sample(sample_key(job.task, source.source_id, index), job.task, lq, gt, meta))
    return samples


def _clean_samples(params: Params, sources: list[SourceImage], crop_cfg: SplitCropConfig,
                   split: str) -> list[Sample]:
    """Clean crops stored once (``shards.train_pairs: false``): the same crop boxes as the per-task samples, no
    input (the loader degrades each crop afresh at every read)."""
    samples = []
    for source in sources:
        crop_rng = np.random.default_rng(derive_seed(params.seed, "crop", source.source_id))
        for index, (top, left, h, w) in enumerate(crop_boxes(source.image.shape, crop_cfg, crop_rng)):
            gt = np.ascontiguousarray(source.image[top:top + h, left:left + w])
            meta = {"task": CLEAN_SET, "family": CLEAN_SET, "split": split, "source_id": source.source_id,
                    "source": source.uri, "crop_box": [top, left, h, w]}
            samples.append(Sample(sample_key(CLEAN_SET, source.source_id, index), CLEAN_SET, None, gt, meta))
    return samples


def _run_job(job: Job) -> tuple[Job, list[dict[str, Any]], int]:
    params: Params = _STATE["params"]
    samples = _samples_for(job)
    entries = write_task_shards(_STATE["out_root"], job.split, job.task, samples, params.shards.encoding,
                                params.shards.maxcount)
    return job, entries, len(samples)


def check_shards_root(root: str, source: str = "params.yaml") -> None:
    """Before any work: an S3 root's bucket exists (never created); a local root is a folder, or can be one."""
    from sipl.data.shards import require_bucket
    from sipl.outputs import writable_dir

    key = f"{source} shards.root"
    if is_remote(root):
        require_bucket(root, key)
        return
    target = Path(root)
    if target.exists() and not target.is_dir():
        raise SiplError(f"{key}: {root} is an existing file; point shards.root at a folder")
    writable_dir(target.resolve().parent, key)  # the shards are built beside it, then renamed into place


def synthesize(params: Params, workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the stage; returns the manifest written to ``{shards.root}/manifest.json``."""
    started = time.perf_counter()
    check_shards_root(params.shards.root, params.source)
    images, skipped = load_sources(params.sources)
    for image in images:
        for note in image.notes:
            print(f"note: {image.uri}: {note}")
    split_of_group = assign_splits([i.group for i in images], params.splits.val_fraction,
                                   params.splits.test_fraction)
    by_split: dict[str, list[SourceImage]] = {split: [] for split in SPLITS}
    for image in sorted(images, key=lambda i: i.source_id):
        by_split[split_of_group[image.group]].append(image)
    for split in SPLITS:
        crop_cfg = getattr(params.crops, split)
        for image in by_split[split]:
            if not crop_boxes(image.image.shape, crop_cfg, np.random.default_rng(0), count=1):
                skipped.append(Skipped(image.uri, f"{image.image.shape[1]}x{image.image.shape[0]} is smaller than "
                                                  f"the {split} crop (crops.{split})"))
    root = params.shards.root
    jobs = [Job(split, task) for split in SPLITS for task in _split_sets(params, split) if by_split[split]]
    workers = workers or min(len(jobs), os.cpu_count() or 1, 4)
    # A staging folder, or on S3 a new generation that no manifest names yet; dropped if anything fails.
    with NewSet(root) as target:
        _STATE.update(params=params, by_split=by_split, out_root=target.out)
        try:
            results = _run_jobs(jobs, workers, progress)
        finally:
            _STATE.clear()
        manifest = target.commit(_manifest(params, results, by_split, skipped),
                                 [{"uri": s.uri, "reason": s.reason} for s in skipped])
    if is_remote(root):
        write_json(str(Path(LOCAL_INDEX_DIR, MANIFEST)), manifest)
        write_json(str(Path(LOCAL_INDEX_DIR, SKIPPED)), [{"uri": s.uri, "reason": s.reason} for s in skipped])
    print(summary_table(manifest, skipped, time.perf_counter() - started))
    return manifest


def _run_jobs(jobs: list[Job], workers: int, progress: bool) -> list:
    """Each job's (job, manifest entries, sample count), in job order; ``workers`` forked processes when > 1."""
    if workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        try:
            return list(_progress(pool.map(_run_job, jobs), len(jobs), progress))
        finally:
            # After a failure the jobs not started yet are cancelled: an unreachable endpoint would otherwise cost
            # every remaining job its full retry time before the error is shown.
            pool.shutdown(wait=True, cancel_futures=True)
    return list(_progress(map(_run_job, jobs), len(jobs), progress))


def _split_sets(params: Params, split: str) -> list[str]:
    """The shard sets of a split: one per task, or for a clean-only train split the one clean set."""
    if split == "train" and not params.shards.train_pairs:
        return [CLEAN_SET]
    return sorted(params.tasks)


def _progress(iterator, total: int, enabled: bool):
    if not enabled:
        return iterator
    from tqdm import tqdm

    return tqdm(iterator, total=total, desc="synthesize", unit="task")


def _manifest(params: Params, results, by_split, skipped: list[Skipped]) -> dict[str, Any]:
    splits: dict[str, dict[str, Any]] = {}
    for job, entries, count in results:
        family = CLEAN_SET if job.task == CLEAN_SET else params.tasks[job.task].family
        splits.setdefault(job.split, {})[job.task] = {"samples": count, "family": family, "shards": entries}
    return {
        "version": 1,
        "encoding": params.shards.encoding,
        "train_pairs": params.shards.train_pairs,
        "seed": params.seed,
        "splits": splits,
        "sources": {split: [image.source_id for image in by_split[split]] for split in SPLITS},
        "skipped": len(skipped),
    }


def summary_table(manifest: dict[str, Any], skipped: list[Skipped], seconds: float) -> str:
    """A plain-text table: samples per task and split, shard counts, skipped files, wall time."""
    tasks = sorted({task for split in manifest["splits"].values() for task in split})
    header = f"{'task':<18}" + "".join(f"{split:>8}" for split in SPLITS)
    lines = [header, "-" * len(header)]
    for task in tasks:
        counts = [manifest["splits"].get(split, {}).get(task, {}).get("samples", 0) for split in SPLITS]
        lines.append(f"{task:<18}" + "".join(f"{count:>8}" for count in counts))
    totals = [sum(t["samples"] for t in manifest["splits"].get(split, {}).values()) for split in SPLITS]
    lines.append(f"{'total':<18}" + "".join(f"{count:>8}" for count in totals))
    images = {split: len(ids) for split, ids in manifest["sources"].items()}
    lines.append(f"source images per split: {images}; skipped files: {len(skipped)}; {seconds:.1f}s")
    for item in skipped:
        lines.append(f"  skipped {item.uri}: {item.reason}")
    return "\n".join(lines)
