"""Field benchmark sets inside the pipeline: params ``benchmarks`` -> test shards (the ``benchmarks`` stage).

Each set ``{name, kind, path}`` becomes ``{root}/{name}/`` in the project's shard format (split ``test`` only:
``test/{task}-NNNNNN.tar``, ``manifest.json`` with every shard's sha256, ``skipped.json``); ``{root}/index.json``
lists the sets (``{"version", "sets": {name: {"kind", "path", "tasks": {task: family}, "samples"}}}``), so the
folder exists, and DVC has an output, even for ``benchmarks: []``.

- ``kind: clean``: every image file of the folder (recursively; EXIF, grey, 16-bit converted as for sources;
  unreadable files listed in ``skipped.json``) is cropped like the test split (``crops.test``: centre crop to
  multiples of ``multiple``, at most ``max_side``) and degraded by every task in ``tasks`` with a generator seeded
  from (seed, set name, task, image id, crop index) only.
- paired kinds (``sipl.data.benchmark_import.KINDS``): ``import_benchmark`` converts the folder, centre-cropped by
  ``crops.test`` too; the noise kinds draw their noise from a seed derived from (seed, set name).

Every set's folder and layout is checked before anything is written or computed; the output is built in
``{root}.partial`` and renamed into place when complete, and the same params give byte-identical files.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from sipl.config.sections import DEFAULT_MAX_PIXELS
from sipl.data.shards import MANIFEST, SKIPPED, Sample, data_root, iter_samples, join, read_bytes, sha256_bytes
from sipl.errors import SiplError

ROOT = "data/benchmarks"
INDEX = "index.json"
SPLIT = "test"


def label(index: int, name: str) -> str:
    """How errors name a set: ``benchmarks[1] (rain)``."""
    return f"benchmarks[{index}] ({name})"


@dataclass(frozen=True)
class CheckedSet:
    """A set whose folder passed the layout check; ``files``: its image files (clean) or pairs (paired kinds)."""

    index: int
    name: str
    kind: str
    path: Path
    files: int
    max_pixels: int = DEFAULT_MAX_PIXELS


def _image_files(root: Path) -> list[Path]:
    from sipl.data.imageio import IMAGE_SUFFIXES

    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def check_sets(configs: list[Any], source: str = "params.yaml") -> list[CheckedSet]:
    """Check every set's folder before any work: it exists, holds images (clean) or a complete paired layout.

    Args:
        configs: ``params.benchmarks`` (``BenchmarkConfig`` items; names are already distinct).
        source: the params file they came from, for the message.

    Raises:
        SiplError naming the set (``benchmarks[i] (name)``), the path and what to do; every bad set in one message.
    """
    from sipl.data.benchmark_import import LAYOUTS, find_pairs
    from sipl.data.imageio import IMAGE_SUFFIXES

    checked, errors = [], []
    for index, config in enumerate(configs):
        where = f"{label(index, config.name)}: {config.kind} folder {config.path}"
        path = Path(config.path).expanduser()
        if not path.exists():
            errors.append(f"{where} does not exist; fix benchmarks[{index}].path in {source} (relative paths "
                          "start at the project root) or remove the set")
            continue
        if not path.is_dir():
            errors.append(f"{where} is not a folder; point benchmarks[{index}].path at the set's folder")
            continue
        if config.kind == "clean":
            count = len(_image_files(path))
            if not count:
                errors.append(f"{where} holds no images ({', '.join(IMAGE_SUFFIXES)}); put clean images in it or "
                              "fix the path")
                continue
        else:
            pairs, problems = find_pairs(config.kind, path)
            if problems:
                listing = "\n    ".join(problems[:10]) + (f"\n    ... {len(problems) - 10} more"
                                                          if len(problems) > 10 else "")
                errors.append(f"{where} is not a complete {config.kind} layout (expected {LAYOUTS[config.kind]}); "
                              f"{len(problems)} problem(s):\n    {listing}\n  fix the folder or "
                              f"benchmarks[{index}].kind / .path")
                continue
            count = len(pairs)
        checked.append(CheckedSet(index, config.name, config.kind, path, count, config.max_pixels))
    if errors:
        raise SiplError(f"{source} benchmarks: {len(errors)} set(s) cannot be used (nothing written):\n  "
                        + "\n  ".join(errors))
    return checked


def _read_images(item: CheckedSet) -> tuple[list[tuple[str, str, np.ndarray]], list[dict[str, str]]]:
    """(source id, uri, uint8 H x W x 3 image) of every image file of a clean set, and the unreadable ones.

    URIs are ``{name}/{path relative to the folder}``, so the shards do not depend on where the folder lives."""
    from sipl.data.imageio import read_rgb
    from sipl.data.sources import safe_id

    images, skipped = [], []
    for path in _image_files(item.path):
        uri = f"{item.name}/{path.relative_to(item.path).as_posix()}"
        try:
            image, _ = read_rgb(path, max_pixels=item.max_pixels)
        except SiplError as error:
            # without the object addresses some decoder messages carry, so the same folder gives the same file
            reason = re.sub(r" at 0x[0-9a-fA-F]+", "", str(error).removeprefix(f"{path}: "))
            skipped.append({"uri": uri, "reason": reason})
            continue
        images.append((safe_id(uri), uri, image))
    return images, skipped


def _clean_set(params: Any, item: CheckedSet, out_root: str) -> dict[str, Any]:
    """Degrade every image of a clean folder by every task; write the set's shards + manifest; return it."""
    import degradations
    from sipl.data.shards import sample_key, write_json, write_task_shards
    from sipl.data.synthesize import crop_boxes
    from sipl.seeding import derive_seed

    images, skipped = _read_images(item)
    crops = []  # (source id, uri, clean crop, crop index, box)
    for source_id, uri, image in sorted(images, key=lambda entry: entry[0]):
        rng = np.random.default_rng(derive_seed(params.seed, "benchmark-crop", item.name, source_id))
        boxes = crop_boxes(image.shape, params.crops.test, rng)
        if not boxes:
            skipped.append({"uri": uri, "reason": f"{image.shape[1]}x{image.shape[0]} is smaller than the test "
                                                  "crop (crops.test)"})
        crops += [(source_id, uri, np.ascontiguousarray(image[top:top + h, left:left + w]), index, (top, left, h, w))
                  for index, (top, left, h, w) in enumerate(boxes)]
    if not crops:
        raise SiplError(f"{label(item.index, item.name)}: no usable image in {item.path} ({len(skipped)} file(s) "
                        "unreadable or smaller than crops.test); put readable clean images in it")
    tasks = {}
    for task_name in sorted(params.tasks):
        task = params.tasks[task_name]
        samples = []
        for source_id, uri, gt, index, (top, left, h, w) in crops:
            seed = derive_seed(params.seed, "benchmark", item.name, task_name, source_id, index)
            lq, applied = degradations.apply(task.steps, gt, np.random.default_rng(seed))
            meta = {"task": task_name, "family": task.family, "split": SPLIT, "source_id": source_id,
                    "source": uri, "crop_box": [top, left, h, w], "seed": seed, "applied": applied,
                    "benchmark": item.name}
            samples.append(Sample(sample_key(task_name, source_id, index), task_name, lq, gt, meta))
        entries = write_task_shards(out_root, SPLIT, task_name, samples, params.shards.encoding,
                                    params.shards.maxcount)
        tasks[task_name] = {"samples": len(samples), "family": task.family, "shards": entries}
    manifest = {"version": 1, "encoding": params.shards.encoding, "seed": params.seed, "benchmark": "clean",
                "splits": {SPLIT: tasks}, "sources": {SPLIT: sorted({crop[0] for crop in crops})},
                "skipped": len(skipped)}
    write_json(join(out_root, SKIPPED), skipped)
    write_json(join(out_root, MANIFEST), manifest)
    return manifest


def _paired_set(params: Any, item: CheckedSet, out_root: str) -> dict[str, Any]:
    from sipl.data.benchmark_import import import_benchmark
    from sipl.seeding import derive_seed

    crop = params.crops.test
    try:
        return import_benchmark(item.kind, item.path, out_root, seed=derive_seed(params.seed, "benchmark", item.name),
                                multiple=crop.multiple, max_side=crop.max_side, maxcount=params.shards.maxcount,
                                encoding=params.shards.encoding, max_pixels=item.max_pixels)
    except SiplError as error:
        raise SiplError(f"{label(item.index, item.name)} ({item.kind}): {error}") from None


def build_sets(params: Any, root: str = ROOT, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the stage: check every set, write ``{root}/{name}/`` per set and ``{root}/index.json``; return the index.

    Args:
        params: validated ``Params`` (reads ``seed``, ``tasks``, ``benchmarks``, ``crops.test``,
            ``shards.encoding``, ``shards.maxcount``).
        root: local output folder (replaced as a whole when the new one is complete).
    """
    from sipl.data.publish import staging_root, swap
    from sipl.data.shards import write_json

    checked = check_sets(params.benchmarks, params.source)
    staging = Path(staging_root(str(root)))
    index: dict[str, Any] = {"version": 1, "sets": {}}
    try:
        for item in checked:
            out_root = str(staging / item.name)
            build = _clean_set if item.kind == "clean" else _paired_set
            manifest = build(params, item, out_root)
            tasks = manifest["splits"][SPLIT]
            index["sets"][item.name] = {
                "kind": item.kind, "path": str(params.benchmarks[item.index].path),
                "tasks": {task: entry["family"] for task, entry in sorted(tasks.items())},
                "samples": sum(entry["samples"] for entry in tasks.values()), "skipped": manifest["skipped"]}
            say(f"{item.name} ({item.kind}, {item.files} file(s)): {len(tasks)} task(s), "
                f"{index['sets'][item.name]['samples']} sample(s), {manifest['skipped']} skipped")
        write_json(str(staging / INDEX), index)
        swap(str(staging), str(root))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return index


# ------------------------------------------------------------------------------------------------ reading

def read_index(root: str = ROOT) -> dict[str, Any] | None:
    """``{root}/index.json``, or None when the folder has none (no ``sipl benchmarks`` run there)."""
    import json

    path = Path(root, INDEX)
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except ValueError as error:
        raise SiplError(f"{path}: not valid JSON ({error}); re-run `sipl benchmarks`") from None
    if not isinstance(index, dict) or not isinstance(index.get("sets"), dict):
        raise SiplError(f"{path}: not a benchmark index (no 'sets'); re-run `sipl benchmarks`")
    return index


def verified_tasks(root: str, name: str) -> dict[str, tuple[str, list[str]]]:
    """The tasks of set ``name`` under ``root`` after checking every shard's sha256 against its manifest.

    Returns:
        task -> (family, shard paths in manifest order).

    Raises:
        SiplError naming the set and the shard that is missing or differs, and to re-run ``sipl benchmarks``.
    """
    import json

    set_root = join(root, name)
    manifest_url = join(set_root, MANIFEST)
    fix = "re-run `sipl benchmarks` (or `dvc repro benchmarks`)"
    try:
        manifest = json.loads(read_bytes(manifest_url))
    except FileNotFoundError:
        raise SiplError(f"benchmark set {name}: {manifest_url} missing; {fix}") from None
    except ValueError as error:
        raise SiplError(f"benchmark set {name}: {manifest_url} is not valid JSON ({error}); {fix}") from None
    tasks = {}
    for task, entry in sorted(manifest.get("splits", {}).get(SPLIT, {}).items()):
        urls = []
        for shard in entry["shards"]:
            url = join(data_root(set_root, manifest), SPLIT, shard["name"])
            try:
                digest = sha256_bytes(read_bytes(url))
            except FileNotFoundError:
                raise SiplError(f"benchmark set {name}: shard {url} missing; {fix}") from None
            if digest != shard["sha256"]:
                raise SiplError(f"benchmark set {name}: shard {url} does not match its manifest (sha256 "
                                f"{digest[:12]}… != {shard['sha256'][:12]}…); {fix}")
            urls.append(url)
        # Both writers record the family (paired kinds: sipl.data.benchmark_import.task_family of the task name).
        tasks[task] = (entry.get("family") or "other", urls)
    if not tasks:
        raise SiplError(f"benchmark set {name}: {manifest_url} lists no '{SPLIT}' shards; {fix}")
    return tasks


def samples_by_task(root: str, name: str) -> dict[str, tuple[str, Iterator[Sample]]]:
    """task -> (family, sample iterator) of a verified set, the input of ``sipl.evaluation.evaluate.evaluate_split``."""
    return {task: (family, iter_samples(urls)) for task, (family, urls) in verified_tasks(root, name).items()}
