"""Training data: shard checks, task mixing, per-worker shard streaming, paired crops/flips, validation sets.

Each Ray worker (``rank`` of ``world``) and each of its DataLoader workers reads its own part of every task's train
shards: shards are split across the ``world × loader_workers`` reading slots (like WebDataset's ``split_by_node``
then ``split_by_worker``) after a seeded per-epoch shard shuffle; when a task has fewer shards than slots, every
slot reads all of them and keeps every n-th sample instead, so no slot is starved. Samples pass a seeded shuffle
buffer; with ``task_steps`` set (``train.fresh_degradations``) the clean crop is degraded afresh by its task's steps at
every read, so the model never sees the same noise or streak realisation twice; then each pair gets a random
``patch`` crop plus one of the 8 flips/rotations (identical for lq and gt; with ``channel_shuffle`` also a random RGB
order), and the task streams are mixed by weight with a seeded generator. Every random choice derives from
``(seed, rank, loader worker, start step)`` and the position in the stream, never from global RNG state.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from sipl.errors import SiplError

log = logging.getLogger("sipl.data")

_MIX_STREAM = 0x5EED


# ------------------------------------------------------------------------------------------------ weights

def task_weights(families: dict[str, str], override: dict[str, float] | None = None) -> dict[str, float]:
    """Sampling probability of each task (sums to 1).

    ``families`` maps task -> family. Default: every family gets the same share, split equally between its
    tasks (the field's dataset repeat factors written as weights). ``override`` gives explicit per-task weights;
    tasks it does not name keep their default weight relative to the total. Raises SiplError for negative
    weights or an all-zero result."""
    if not families:
        raise SiplError("no tasks to train on: params.yaml 'tasks' is empty")
    per_family: dict[str, int] = {}
    for family in families.values():
        per_family[family] = per_family.get(family, 0) + 1
    weights = {task: 1.0 / (len(per_family) * per_family[family]) for task, family in families.items()}
    for task, weight in (override or {}).items():
        if task not in weights:
            raise SiplError(f"train.task_weights names '{task}', which is not a task in params.yaml")
        if weight < 0:
            raise SiplError(f"train.task_weights.{task} = {weight} is negative")
        weights[task] = float(weight)
    total = sum(weights.values())
    if total <= 0:
        raise SiplError("train.task_weights gives every task weight 0; give at least one task a positive weight")
    return {task: w / total for task, w in weights.items()}


# ----------------------------------------------------------------------------------------- shard checking

def _sha256_file(url: str) -> str:
    from sipl.shards import is_remote, read_bytes

    if is_remote(url):
        return hashlib.sha256(read_bytes(url)).hexdigest()
    digest = hashlib.sha256()
    with open(url, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _object_size(url: str) -> int | None:
    """Size in bytes, or None when the object does not exist."""
    import os

    from sipl.shards import is_remote

    if is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        try:
            return int(fs.size(path))
        except FileNotFoundError:
            return None
    return os.path.getsize(url) if os.path.isfile(url) else None


def check_shards(root: str, tasks: Iterable[str], split: str, *, required: bool = True,
                 verify_sha256: bool = True, manifest: dict | None = None) -> dict[str, list[str]]:
    """Shard URLs per task of one split, checked before any worker starts.

    Checks that the manifest lists shards for every task, that each shard exists, is non-empty and (with
    ``verify_sha256``, local shards) matches the manifest's sha256, which also catches truncated tars. ``required=False``
    leaves tasks without shards out (with a warning) instead of failing. Raises SiplError naming the split,
    task and shard and what to do."""
    from sipl.shards import is_remote, join, read_manifest

    manifest = manifest if manifest is not None else read_manifest(root)
    listed = manifest.get("splits", {}).get(split, {})
    result: dict[str, list[str]] = {}
    for task in tasks:
        entry = listed.get(task)
        shards = (entry or {}).get("shards") or []
        if not shards:
            message = (f"{join(root, 'manifest.json')}: task '{task}' has no {split} shards "
                       f"(manifest has {sorted(listed) or 'none'}); re-run `sipl synthesize` with this task in "
                       "params.yaml, or remove it from 'tasks'")
            if required:
                raise SiplError(message)
            log.warning("%s; it is left out of validation", message)
            continue
        urls = []
        for shard in shards:
            url = join(root, split, shard["name"])
            size = _object_size(url)
            if size is None:
                raise SiplError(f"shard {url} (task '{task}', split '{split}') is listed in the manifest but "
                                "missing; re-run `sipl synthesize` or `dvc pull`")
            if size == 0:
                raise SiplError(f"shard {url} (task '{task}', split '{split}') is empty; re-run `sipl synthesize`")
            # Hashing remote shards would download the whole data set before training; size checks only there.
            if verify_sha256 and shard.get("sha256") and not is_remote(url):
                digest = _sha256_file(url)
                if digest != shard["sha256"]:
                    raise SiplError(f"shard {url} (task '{task}', split '{split}') is corrupt or truncated: sha256 "
                                    f"{digest[:12]}… does not match the manifest's {shard['sha256'][:12]}…; "
                                    "re-run `sipl synthesize` or `dvc pull`")
            urls.append(url)
        result[task] = urls
    return result


# ----------------------------------------------------------------------------------------- augmentations

def paired_crop_flip(lq: np.ndarray, gt: np.ndarray, patch: int, rng: np.random.Generator,
                     key: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """Same random ``patch``×``patch`` crop and the same of the 8 flips/90° rotations on lq and gt.

    ``lq``/``gt``: uint8 H×W×3 of equal shape. Returns contiguous uint8 patch×patch×3 arrays. Raises SiplError
    naming the sample when it is smaller than the patch."""
    height, width = gt.shape[:2]
    if height < patch or width < patch:
        raise SiplError(f"sample {key} is {height}x{width}, smaller than train.patch={patch}; lower the patch or "
                        "raise crops.train.size and re-run `sipl synthesize`")
    top = int(rng.integers(0, height - patch + 1))
    left = int(rng.integers(0, width - patch + 1))
    rotation, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
    out = []
    for image in (lq, gt):
        image = image[top:top + patch, left:left + patch]
        if flip:
            image = image[:, ::-1]
        out.append(np.ascontiguousarray(np.rot90(image, rotation)))
    return out[0], out[1]


def paired_channel_order(lq: np.ndarray, gt: np.ndarray,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random one of the 6 RGB channel orders on lq and gt (uint8 H×W×3 -> contiguous H×W×3).

    Every degradation of the default task list treats the channels alike (grey airlight, white streaks and flakes,
    the same curve and kernel per channel, i.i.d. noise), so a reordered pair is as valid a pair as the original;
    it shows the model clean content in six colour casts instead of one, e.g. red or blue scenes that are not haze."""
    order = rng.permutation(3)
    return np.ascontiguousarray(lq[..., order]), np.ascontiguousarray(gt[..., order])


def fresh_degradation(gt: np.ndarray, steps: list[dict[str, Any]], seed: list[int], task: str = "?",
                      key: str = "?") -> np.ndarray:
    """A new degraded version of the clean crop ``gt`` (uint8 H×W×3 -> uint8 H×W×3) by ``steps`` (the task's
    ``degradations.apply`` steps; ranges drawn afresh), from a generator seeded with ``seed`` only."""
    import degradations

    try:
        lq, _ = degradations.apply(steps, gt, np.random.default_rng(seed))
    except (KeyError, TypeError, ValueError) as error:
        raise SiplError(f"params tasks.{task}: degrading training sample {key} failed: {error}") from None
    return lq


def dead_leaves(like: np.ndarray, rng: np.random.Generator, max_disks: int = 300) -> np.ndarray:
    """A dead-leaves image of the shape of ``like`` (uint8 H×W×3): occluding disks with a power-law radius
    distribution (density ∝ r⁻³, from 2 px to a third of the side), the scale-invariant occlusion model of natural
    images, each coloured with a random pixel of ``like`` (so the colours are a photo's), laid front to back (a disk
    shows only where no earlier one lies) until the canvas is covered or ``max_disks`` are laid (the rest takes the
    last colour), then softened by a blur of random width (0-1.2 px), as natural edges are."""
    import cv2

    height, width = like.shape[:2]
    colours = like.reshape(-1, 3)
    canvas = np.zeros((height, width, 3), np.uint8)
    covered = np.zeros((height, width), bool)
    r_min, r_max = 2.0, max(3.0, min(height, width) / 3)
    for _ in range(max_disks):
        # inverse-CDF draw of p(r) ∝ r^-3 on [r_min, r_max]
        u = rng.random()
        radius = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5
        cy, cx = rng.uniform(-radius, height + radius), rng.uniform(-radius, width + radius)
        top, bottom = max(0, int(cy - radius)), min(height, int(cy + radius) + 1)
        left, right = max(0, int(cx - radius)), min(width, int(cx + radius) + 1)
        if top >= bottom or left >= right:
            continue
        yy, xx = np.ogrid[top:bottom, left:right]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        free = disk & ~covered[top:bottom, left:right]
        colour = colours[int(rng.integers(0, len(colours)))]
        canvas[top:bottom, left:right][free] = colour
        covered[top:bottom, left:right] |= disk
        if covered.all():
            break
    canvas[~covered] = colour
    sigma = rng.uniform(0.0, 1.2)
    if sigma > 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    return canvas


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A clean uint8 H×W×3 image with a random exposure (×0.5–1.3), gamma (0.7–1.5) and saturation (×0.6–1.3),
    as a new clean image (uint8 H×W×3)."""
    x = image.astype(np.float32) / 255.0
    x = np.clip(x * rng.uniform(0.5, 1.3), 0.0, 1.0) ** rng.uniform(0.7, 1.5)
    grey = x.mean(axis=2, keepdims=True)
    x = np.clip(grey + (x - grey) * rng.uniform(0.6, 1.3), 0.0, 1.0)
    return (x * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------- streaming

def slot_shards(urls: list[str], slot: int, slots: int, epoch: int, seed: int) -> tuple[list[str], int]:
    """Shards one reading slot reads in ``epoch`` and the sample stride it keeps (1 = every sample).

    The shard order is shuffled with a generator of ``(seed, epoch)`` only, so all slots agree on it and the
    split is a partition."""
    order = list(urls)
    np.random.default_rng([seed, epoch]).shuffle(order)
    if len(order) >= slots:
        return order[slot::slots], 1
    return order, slots


def _buffer_shuffle(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Seeded shuffle buffer: yields items in random order using at most ``size`` in memory."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = int(rng.integers(0, len(buffer)))
        buffer[index], item = item, buffer[index]
        yield item
    rng.shuffle(buffer)
    yield from buffer


@dataclass
class StreamConfig:
    """Everything a reading slot needs (picklable, so DataLoader workers get a copy)."""

    task_urls: dict[str, list[str]]
    weights: dict[str, float]
    patch: int
    seed: int
    rank: int = 0
    world: int = 1
    start_step: int = 0
    shuffle_buffer: int = 256
    corrupt_samples: str = "skip"
    identity_share: float = 0.0
    channel_shuffle: float = 0.0
    task_steps: dict[str, list[dict[str, Any]]] | None = None
    head_samples: int = 0
    photometric: float = 0.0
    synthetic_share: float = 0.0


class _Corrupt(Exception):
    pass


class TrainStream(torch.utils.data.IterableDataset):
    """Infinite stream of mixed-task training pairs for one rank.

    Yields dicts ``{"lq", "gt"}`` (uint8 patch×patch×3 arrays), ``"key"``, ``"task"`` and ``"skipped"`` (corrupt
    samples or shards skipped by this reading slot since the previous yield). With ``identity_share`` > 0 that share
    of the items is an identity pair: the clean patch as input and target (key suffixed ``#clean``). With
    ``channel_shuffle`` > 0 that share of the pairs has its RGB channels put in a random one of the 6 orders (the
    same for lq and gt). With ``task_steps`` (task -> degradation steps) the shard's lq is ignored and the clean
    crop is degraded afresh at each read. With ``head_samples`` > 0 (needs ``task_steps``) each item also carries
    ``head_lq`` / ``head_gt`` (head_samples×patch×patch×3 uint8: random crops of the same clean image, each degraded by
    a uniformly drawn task or left clean) and ``head_labels`` (their class: the task name, or ``"clean"``)."""

    def __init__(self, config: StreamConfig):
        super().__init__()
        self.config = config
        self._skipped = 0

    def _handler(self, task: str):
        def handle(error: Exception) -> bool:
            if self.config.corrupt_samples != "skip":
                raise SiplError(f"task '{task}': corrupt shard data ({error}); set train.corrupt_samples: skip "
                                "to skip it, or re-run `sipl synthesize`") from None
            self._skipped += 1
            log.warning("task '%s': skipping corrupt shard data: %s", task, error)
            return True
        return handle

    def _task_samples(self, task_index: int, task: str, slot: int, slots: int) -> Iterator[Any]:
        import webdataset as wds

        import sipl.shards  # noqa: F401  (registers the s3 scheme in this process)
        from sipl.shards import decode_sample

        cfg = self.config
        urls = cfg.task_urls[task]
        base = [cfg.seed, task_index, cfg.start_step]
        epoch = 0
        while True:
            mine, stride = slot_shards(urls, slot, slots, epoch, cfg.seed + 7919 * task_index)
            if epoch == 0:  # which shards each reading slot takes (checked by the multi-node test)
                print(f"[sipl data] rank {cfg.rank} slot {slot}/{slots} task {task} reads {len(mine)} shard(s) "
                      f"(every {stride}. sample): {' '.join(mine)}", flush=True)
            raw = wds.tarfile_to_samples(handler=self._handler(task))(iter([{"url": u} for u in mine]))
            if stride > 1:
                raw = (s for i, s in enumerate(raw) if i % stride == slot)
            rng = np.random.default_rng(base + [slot, epoch])
            count = 0
            for item in _buffer_shuffle(raw, cfg.shuffle_buffer, rng):
                try:
                    sample = decode_sample(item)
                except Exception as error:  # any undecodable member (np.load / PNG / json errors) = corrupt
                    self._handler(task)(SiplError(f"sample {item.get('__key__')} in {item.get('__url__')}: {error}"))
                    continue
                count += 1
                yield sample
            if count == 0:
                raise SiplError(f"task '{task}': reading slot {slot}/{slots} got no decodable samples from shards "
                                f"{mine}; check the shards (re-run `sipl synthesize`)")
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.config
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = cfg.rank * workers + worker, cfg.world * workers
        tasks = sorted(cfg.task_urls)
        probabilities = np.array([cfg.weights[t] for t in tasks], dtype=np.float64)
        probabilities /= probabilities.sum()
        streams = {t: self._task_samples(i, t, slot, slots) for i, t in enumerate(tasks)}
        mixer = np.random.default_rng([cfg.seed, _MIX_STREAM, cfg.rank, worker, cfg.start_step])
        crops = np.random.default_rng([cfg.seed, _MIX_STREAM + 1, cfg.rank, worker, cfg.start_step])
        identity = np.random.default_rng([cfg.seed, _MIX_STREAM + 2, cfg.rank, worker, cfg.start_step])
        channels = np.random.default_rng([cfg.seed, _MIX_STREAM + 3, cfg.rank, worker, cfg.start_step])
        extra = np.random.default_rng([cfg.seed, _MIX_STREAM + 5, cfg.rank, worker, cfg.start_step])
        tones = np.random.default_rng([cfg.seed, _MIX_STREAM + 6, cfg.rank, worker, cfg.start_step])
        leaves = np.random.default_rng([cfg.seed, _MIX_STREAM + 7, cfg.rank, worker, cfg.start_step])
        position = 0
        while True:
            task = tasks[int(mixer.choice(len(tasks), p=probabilities))]
            sample = next(streams[task])
            lq, clean, key = sample.lq, sample.gt, sample.key
            if cfg.task_steps is not None:
                if cfg.synthetic_share > 0 and leaves.random() < cfg.synthetic_share:
                    clean = dead_leaves(clean, leaves)
                    key = f"{sample.key}#leaves"
                if cfg.photometric > 0 and tones.random() < cfg.photometric:
                    clean = photometric_jitter(clean, tones)
                draw = [cfg.seed, _MIX_STREAM + 4, cfg.rank, worker, cfg.start_step, position]
                lq = fresh_degradation(clean, cfg.task_steps[task], draw, task, sample.key)
            position += 1
            lq, gt = paired_crop_flip(lq, clean, cfg.patch, crops, sample.key)
            if cfg.channel_shuffle > 0 and channels.random() < cfg.channel_shuffle:
                lq, gt = paired_channel_order(lq, gt, channels)
            if cfg.identity_share > 0 and identity.random() < cfg.identity_share:
                lq, key = gt, f"{key}#clean"
            skipped, self._skipped = self._skipped, 0
            item = {"lq": lq, "gt": gt, "key": key, "task": task, "skipped": skipped}
            if cfg.head_samples > 0 and cfg.task_steps is not None:
                item.update(self._head_crops(clean, tasks, extra))
            yield item

    def _head_crops(self, clean: np.ndarray, tasks: list[str], rng: np.random.Generator) -> dict[str, Any]:
        """``head_samples`` random patches of ``clean``, each degraded by a uniformly drawn task or left clean."""
        from sipl.config import CLEAN_CLASS

        cfg = self.config
        lqs, gts, labels = [], [], []
        for _ in range(cfg.head_samples):
            choice = int(rng.integers(0, len(tasks) + 1))
            label = CLEAN_CLASS if choice == len(tasks) else tasks[choice]
            _, gt = paired_crop_flip(clean, clean, cfg.patch, rng)
            lq = gt if label == CLEAN_CLASS else fresh_degradation(
                gt, cfg.task_steps[label], [int(rng.integers(0, 2**63))], label)
            lqs.append(lq)
            gts.append(gt)
            labels.append(label)
        return {"head_lq": np.stack(lqs), "head_gt": np.stack(gts), "head_labels": labels}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch of stream items: ``lq``/``gt`` uint8 tensors N×H×W×3, ``keys``, ``tasks``, ``skipped`` (int); with head
    crops also ``head_lq``/``head_gt`` (N·k×H×W×3) and ``head_labels``."""
    batch = {
        "lq": torch.from_numpy(np.stack([i["lq"] for i in items])),
        "gt": torch.from_numpy(np.stack([i["gt"] for i in items])),
        "keys": [i["key"] for i in items],
        "tasks": [i["task"] for i in items],
        "skipped": sum(i["skipped"] for i in items),
    }
    if "head_lq" in items[0]:
        batch["head_lq"] = torch.from_numpy(np.concatenate([i["head_lq"] for i in items]))
        batch["head_gt"] = torch.from_numpy(np.concatenate([i["head_gt"] for i in items]))
        batch["head_labels"] = [label for i in items for label in i["head_labels"]]
    return batch


def to_float(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N×H×W×3 -> float32 N×3×H×W in [0, 1] on ``device``."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def train_loader(config: StreamConfig, batch_size: int, loader_workers: int) -> Iterator[dict[str, Any]]:
    """Infinite iterator of collated batches of ``batch_size`` for one rank."""
    loader = torch.utils.data.DataLoader(
        TrainStream(config), batch_size=batch_size, num_workers=loader_workers, collate_fn=collate,
        persistent_workers=loader_workers > 0, prefetch_factor=4 if loader_workers > 0 else None,
        worker_init_fn=_quiet_worker)
    return iter(loader)


def _quiet_worker(_: int) -> None:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


# ------------------------------------------------------------------------------------------- validation

def load_val(task_urls: dict[str, list[str]], max_samples: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Up to ``max_samples`` (lq, gt) uint8 pairs per task, in shard order (deterministic)."""
    from sipl.shards import iter_samples

    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for task, urls in task_urls.items():
        pairs = []
        for sample in iter_samples(urls):
            pairs.append((sample.lq, sample.gt))
            if len(pairs) >= max_samples:
                break
        out[task] = pairs
    return out
