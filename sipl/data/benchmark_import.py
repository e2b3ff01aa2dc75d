"""``sipl import-benchmark``: the field's paired test folders → shards in the project's format (split ``test``).

Supported layouts (names as the benchmarks ship them):

- ``cbsd68`` / ``kodak``: a folder of clean images; Gaussian noise is added with the field's recipe and a fixed seed,
  one task per sigma (``denoise_15``, ``denoise_25``, ``denoise_50``).
- ``rain100l``: ``input/`` + ``target/`` with equal names, or ``rain-NNN.*`` ↔ ``norain-NNN.*`` anywhere below DIR.
- ``sots``: ``hazy/NNNN_A_beta.*`` ↔ ``clear/NNNN.*`` (several hazy images may share one clear image).
- ``gopro``: per sequence ``SEQ/blur/*`` ↔ ``SEQ/sharp/*``.
- ``lol``: ``low/`` ↔ ``high/``.
- ``cdd11``: the 11 type folders (``low``, ``haze_rain``, …) each ↔ ``clear/`` with equal names.

Pairs are centre-cropped to a multiple of 16 (the field's convention). Every missing partner or size mismatch is
collected and reported in one list before anything is written.

The output root must be new, empty, or an earlier import of the same kind (which is replaced as a whole once the
new one is complete); anything else there, such as the shards of ``sipl synthesize`` or another kind's import, is
refused before any image is read, so nothing already there is lost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sipl.data.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_rgb
from sipl.data.publish import GENERATION, NewSet
from sipl.data.shards import (MANIFEST, SKIPPED, Sample, is_remote, join, read_bytes, require_bucket, sample_key,
                              write_task_shards)
from sipl.data.sources import safe_id
from sipl.errors import SiplError
from sipl.seeding import derive_seed
from sipl.storage import files_under

CDD11_TYPES = ("low", "haze", "rain", "snow", "low_haze", "low_rain", "low_snow", "haze_rain", "haze_snow",
               "low_haze_rain", "low_haze_snow")
TASK_FAMILIES = {"derain": "rain", "dehaze": "haze", "deblur": "blur", "lowlight": "lowlight"}


@dataclass(frozen=True)
class Pair:
    task: str
    lq: Path | None  # None: synthesised from gt (noise benchmarks)
    gt: Path
    name: str


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _same_name_pairs(task: str, lq_dir: Path, gt_dir: Path, problems: list[str], prefix: str = "") -> list[Pair]:
    lq, gt = _images(lq_dir), _images(gt_dir)
    for stem in sorted(set(lq) - set(gt)):
        problems.append(f"{lq[stem]}: no partner in {gt_dir}")
    for stem in sorted(set(gt) - set(lq)):
        problems.append(f"{gt[stem]}: no partner in {lq_dir}")
    return [Pair(task, lq[s], gt[s], prefix + s) for s in sorted(set(lq) & set(gt))]


def _pairs_noise(root: Path, problems: list[str], sigmas: list[int]) -> list[Pair]:
    clean = _images(root)
    if not clean:
        problems.append(f"{root}: no images")
    return [Pair(f"denoise_{sigma}", None, path, stem) for sigma in sigmas for stem, path in clean.items()]


def _pairs_rain(root: Path, problems: list[str], _: list[int]) -> list[Pair]:
    if (root / "input").is_dir() or (root / "target").is_dir():
        return _same_name_pairs("derain", root / "input", root / "target", problems)
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    clean = {m.group(1): p for p in files if (m := re.fullmatch(r"norain-?(\d+)(x\d)?", p.stem))}
    rainy = {m.group(1): p for p in files if (m := re.fullmatch(r"rain-?(\d+)(x\d)?", p.stem))}
    for number in sorted(set(rainy) - set(clean)):
        problems.append(f"{rainy[number]}: no norain-{number} partner")
    for number in sorted(set(clean) - set(rainy)):
        problems.append(f"{clean[number]}: no rain-{number} partner")
    return [Pair("derain", rainy[n], clean[n], n) for n in sorted(set(rainy) & set(clean))]


def _pairs_sots(root: Path, problems: list[str], _: list[int]) -> list[Pair]:
    hazy, clear = _images(root / "hazy"), _images(root / "clear")
    if not hazy:
        problems.append(f"{root / 'hazy'}: no hazy images")
    pairs = []
    for stem, path in hazy.items():
        scene = stem.split("_", 1)[0]
        if scene not in clear:
            problems.append(f"{path}: no clear/{scene}.* partner")
            continue
        pairs.append(Pair("dehaze", path, clear[scene], stem))
    return pairs


def _pairs_gopro(root: Path, problems: list[str], _: list[int]) -> list[Pair]:
    sequences = sorted(p for p in root.iterdir() if (p / "blur").is_dir() or (p / "sharp").is_dir())
    if not sequences:
        problems.append(f"{root}: no SEQ/blur + SEQ/sharp folders")
    pairs = []
    for sequence in sequences:
        pairs += _same_name_pairs("deblur", sequence / "blur", sequence / "sharp", problems, f"{sequence.name}-")
    return pairs


def _pairs_lol(root: Path, problems: list[str], _: list[int]) -> list[Pair]:
    return _same_name_pairs("lowlight", root / "low", root / "high", problems)


def _pairs_cdd11(root: Path, problems: list[str], _: list[int]) -> list[Pair]:
    if not (root / "clear").is_dir():
        problems.append(f"{root / 'clear'}: missing (CDD-11 needs the clear/ folder)")
    present = [t for t in CDD11_TYPES if (root / t).is_dir()]
    if not present:
        problems.append(f"{root}: none of the CDD-11 type folders {list(CDD11_TYPES)}")
    pairs = []
    for task in present:
        pairs += _same_name_pairs(task, root / task, root / "clear", problems)
    return pairs


KINDS: dict[str, Callable[[Path, list[str], list[int]], list[Pair]]] = {
    "cbsd68": _pairs_noise, "kodak": _pairs_noise, "rain100l": _pairs_rain, "sots": _pairs_sots,
    "gopro": _pairs_gopro, "lol": _pairs_lol, "cdd11": _pairs_cdd11,
}
# What each kind expects under its folder, for error messages.
LAYOUTS = {
    "cbsd68": "clean images directly in the folder", "kodak": "clean images directly in the folder",
    "rain100l": "input/ + target/ with equal file names, or rain-NNN.* and norain-NNN.* files below the folder",
    "sots": "hazy/NNNN_A_beta.* + clear/NNNN.*", "gopro": "SEQ/blur/* + SEQ/sharp/* per sequence folder",
    "lol": "low/ + high/ with equal file names",
    "cdd11": "clear/ + any of the type folders " + ", ".join(f"{t}/" for t in CDD11_TYPES) + " with equal file names",
}


def find_pairs(kind: str, directory: str | Path, sigmas: list[int] | None = None) -> tuple[list[Pair], list[str]]:
    """The pairs of a benchmark folder and every layout problem (missing partner, missing folder), reading no image.

    No pairs at all is a problem too, so an empty problem list means the layout is usable."""
    if kind not in KINDS:
        raise SiplError(f"unknown benchmark kind {kind!r}; known: {sorted(KINDS)}")
    root = Path(directory)
    if not root.is_dir():
        raise SiplError(f"{root}: not a directory")
    problems: list[str] = []
    pairs = KINDS[kind](root, problems, sigmas or [15, 25, 50])
    if not pairs and not problems:
        problems.append(f"{root}: no {kind} pairs found (expected {LAYOUTS[kind]})")
    return pairs, problems


def task_family(task: str) -> str:
    """The family of a task name these layouts give (``derain`` -> ``rain``, ``low`` -> ``lowlight``, CDD-11
    combinations -> ``composite``), for grouping and the classical baselines."""
    if task.startswith("denoise_"):
        return "noise"
    return TASK_FAMILIES.get(task, "composite" if "_" in task else {"low": "lowlight"}.get(task, task))


def _mod_crop(image: np.ndarray, multiple: int, max_side: int | None = None) -> np.ndarray:
    """Centre crop of an H x W x C image to sides that are multiples of ``multiple`` and at most ``max_side``."""
    h = min(image.shape[0], max_side or image.shape[0]) // multiple * multiple
    w = min(image.shape[1], max_side or image.shape[1]) // multiple * multiple
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[top:top + h, left:left + w]


def _existing_files(out_root: str) -> list[str]:
    """Paths (relative to ``out_root``, '/'-separated) of every file already under a local folder or S3 prefix."""
    if is_remote(out_root):
        prefix = out_root.rstrip("/")
        return [url[len(prefix) + 1:] for url in files_under(prefix)]
    from sipl.outputs import writable_dir

    folder = Path(out_root)
    if folder.exists() and not folder.is_dir():
        raise SiplError(f"-o {folder}: is an existing file; give a folder for the shards")
    writable_dir(folder.resolve().parent, "-o")  # the output is built beside it, then renamed
    if not folder.is_dir():
        return []
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if not path.is_dir())


def check_out_root(out_root: str, kind: str) -> bool:
    """Whether ``out_root`` holds an earlier import of ``kind`` to be replaced (False: it is new or empty).

    Raises:
        SiplError naming the folder and what it holds when it holds anything else (shards of another stage, another
        kind's import, unrelated files): importing there would overwrite or orphan them.
    """
    require_bucket(out_root, "-o")
    # Unfinished generations of an earlier run on S3 (sipl.data.publish) are this command's own leftovers.
    files = [name for name in _existing_files(out_root) if not GENERATION.match(name.split("/", 1)[0])]
    if not files:
        return False
    manifest = None
    if MANIFEST in files:
        try:
            manifest = json.loads(read_bytes(join(out_root, MANIFEST)))
        except (OSError, ValueError):
            manifest = None
    if isinstance(manifest, dict) and manifest.get("benchmark") == kind:
        # Its manifest and skipped list, and the shards of an import written before generations.
        listed = {MANIFEST, SKIPPED} | {f"test/{entry.get('name')}"
                                        for task in (manifest.get("splits") or {}).get("test", {}).values()
                                        for entry in task.get("shards", [])}
        if set(files) <= listed:
            return True
    if isinstance(manifest, dict) and isinstance(manifest.get("splits"), dict):
        what = (f"an import of {manifest['benchmark']}" if manifest.get("benchmark")
                else f"shards with a manifest of splits {', '.join(sorted(manifest['splits']))}")
    else:
        what = "files that are not an earlier import of " + kind
    shown = ", ".join(files[:5]) + (f", ... ({len(files)} in all)" if len(files) > 5 else "")
    raise SiplError(f"-o {out_root}: already holds {what} ({shown}); importing there would overwrite or orphan "
                    f"them. Give a new or empty folder with -o (the default is data/imported/{kind}), or move "
                    "those files away first.")


def import_benchmark(kind: str, directory: str | Path, out_root: str, sigmas: list[int] | None = None,
                     seed: int = 0, multiple: int = 16, maxcount: int = 256, encoding: str = "npy",
                     skip_unpaired: bool = False, max_side: int | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Convert one benchmark folder into shards under ``out_root/test/``; returns the manifest.

    Pairs are centre-cropped to multiples of ``multiple`` and, with ``max_side``, to at most that side. Image files
    above ``max_pixels`` pixels count as unreadable. ``out_root`` is checked first (``check_out_root``); a local one
    is built as ``{out_root}.partial`` and renamed into place when complete."""
    import degradations

    root = Path(directory)
    check_out_root(out_root, kind)
    pairs, problems = find_pairs(kind, root, sigmas)
    if problems and not skip_unpaired:
        listing = "\n  ".join(problems)
        raise SiplError(f"{root}: {len(problems)} problem(s) in the {kind} layout (nothing written; "
                        f"--skip-unpaired converts the rest):\n  {listing}")
    by_task: dict[str, list[Sample]] = {}
    for pair in pairs:
        try:
            gt, _ = read_rgb(pair.gt, max_pixels=max_pixels)
            if pair.lq is None:
                sigma = int(pair.task.split("_")[1])
                sample_seed = derive_seed(seed, pair.task, pair.name)
                gt = _mod_crop(gt, multiple, max_side)
                lq, applied = degradations.apply({"name": "gaussian_noise", "sigma": sigma}, gt,
                                                 np.random.default_rng(sample_seed))
            else:
                lq, _ = read_rgb(pair.lq, max_pixels=max_pixels)
                if lq.shape != gt.shape:
                    raise SiplError(f"{pair.lq}: size {lq.shape[1]}x{lq.shape[0]} differs from {pair.gt} "
                                    f"{gt.shape[1]}x{gt.shape[0]}")
                lq, gt = _mod_crop(lq, multiple, max_side), _mod_crop(gt, multiple, max_side)
                sample_seed, applied = None, []
        except SiplError as error:
            problems.append(str(error))
            continue
        source_id = safe_id(f"{kind}/{pair.name}")
        meta = {"task": pair.task, "family": task_family(pair.task), "split": "test", "source_id": source_id,
                "source": str(pair.gt.relative_to(root)), "crop_box": [0, 0, *gt.shape[:2]], "seed": sample_seed,
                "applied": applied, "benchmark": kind}
        by_task.setdefault(pair.task, []).append(Sample(sample_key(pair.task, source_id, 0), pair.task, lq, gt, meta))
    if problems and not skip_unpaired:
        listing = "\n  ".join(problems)
        raise SiplError(f"{root}: {len(problems)} unreadable or mismatched file(s) (nothing written):\n  {listing}")
    if not by_task:
        raise SiplError(f"{root}: no usable {kind} pairs found")
    # Local: a staging folder swapped in when complete; S3: a new generation, switched to by the manifest. Either
    # way an earlier import of this kind stays readable until the new one is complete.
    with NewSet(out_root) as target:
        tasks = {}
        for task, samples in sorted(by_task.items()):
            entries = write_task_shards(target.out, "test", task, samples, encoding, maxcount)
            tasks[task] = {"samples": len(samples), "family": task_family(task), "shards": entries}
        manifest = {"version": 1, "encoding": encoding, "seed": seed, "benchmark": kind, "splits": {"test": tasks},
                    "sources": {"test": sorted({s.meta["source_id"] for v in by_task.values() for s in v})},
                    "skipped": len(problems)}
        return target.commit(manifest, [{"uri": p.split(": ", 1)[0], "reason": p.split(": ", 1)[-1]}
                                        for p in problems])
