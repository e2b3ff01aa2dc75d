"""Training data: shard checks, task mixing, per-worker shard streaming, validation sets.

Each Ray worker (``rank`` of ``world``) and each of its DataLoader workers reads its own part of every task's train
shards: shards are split across the ``world × loader_workers`` reading slots (like WebDataset's ``split_by_node``
then ``split_by_worker``) after a seeded per-epoch shard shuffle; when a task has fewer shards than slots, every
slot reads all of them and keeps every n-th sample instead, so no slot is starved. Either way every sample is read by
exactly one slot per epoch. Samples pass a seeded shuffle buffer, the task streams are mixed by weight with a seeded
generator, and each pair goes through the albumentations pipeline of ``sipl.data.augment`` (crop, flip/rotation, with
``task_steps`` set (``train.fresh_degradations``) content, tone and a fresh degradation of the clean crop, channel
order). The pipeline and the identity and head-crop draws are seeded per sample read, by ``(seed, start step, task,
sample key, epoch)`` only: the same sample read in the same epoch gets the same pixels on any number of ranks and
loader workers, and a crop read again in a later epoch gets new draws. The shard shuffle, the shuffle buffer and the
mixer derive from ``(seed, rank, loader worker, start step)``. No random choice reads global RNG state.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from sipl.errors import SiplError
from sipl.seeding import derive_seed

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
    from sipl.data.shards import is_remote, read_bytes

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

    from sipl.data.shards import is_remote

    if is_remote(url):
        from sipl import storage

        return storage.size(url)
    return os.path.getsize(url) if os.path.isfile(url) else None


def check_shards(root: str, tasks: Iterable[str], split: str, *, required: bool = True,
                 verify_sha256: bool = True, manifest: dict | None = None) -> dict[str, list[str]]:
    """Shard URLs per task of one split, checked before any worker starts.

    Checks that the manifest lists shards for every task, that each shard exists, is non-empty and (with
    ``verify_sha256``, local shards) matches the manifest's sha256, which also catches truncated tars. ``required=False``
    leaves tasks without shards out (with a warning) instead of failing. Raises SiplError naming the split,
    task and shard and what to do."""
    from sipl.data.shards import data_root, is_remote, join, read_manifest, train_entries

    manifest = manifest if manifest is not None else read_manifest(root)
    base = data_root(root, manifest)
    listed = manifest.get("splits", {}).get(split, {})
    tasks = list(tasks)
    entries = train_entries(manifest, tasks) if split == "train" else {task: listed.get(task) for task in tasks}
    result: dict[str, list[str]] = {}
    checked: set[str] = set()  # a clean-only train split lists one set for every task: check each shard once
    for task in tasks:
        entry = entries[task]
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
            url = join(base, split, shard["name"])
            urls.append(url)
            if url in checked:
                continue
            checked.add(url)
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
        result[task] = urls
    return result


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
    crop is degraded afresh at each read; ``synthetic_share`` of the clean crops are dead-leaves images (key suffixed
    ``#leaves``) and ``photometric`` of them get a random exposure, saturation and gamma. With ``head_samples`` > 0
    (needs ``task_steps``) each item also carries ``head_lq`` / ``head_gt`` (head_samples×patch×patch×3 uint8: random
    crops of the same clean image (the dead-leaves canvas where the sample drew one), each with its own tone draw,
    degraded by a uniformly drawn task or left clean) and ``head_labels`` (their class: the task name, or ``"clean"``)."""

    def __init__(self, config: StreamConfig):
        super().__init__()
        self.config = config
        self._skipped = 0

    def _handler(self, task: str):
        def handle(error: Exception) -> bool:
            from sipl.storage import StorageError

            if isinstance(error, StorageError):  # the storage failed, not the data: never skipped as corrupt
                raise StorageError(str(error.args[0])) from None  # (WebDataset appended the URL to its args)
            if self.config.corrupt_samples != "skip":
                raise SiplError(f"task '{task}': corrupt shard data ({error}); set train.corrupt_samples: skip "
                                "to skip it, or re-run `sipl synthesize`") from None
            self._skipped += 1
            log.warning("task '%s': skipping corrupt shard data: %s", task, error)
            return True
        return handle

    def _task_samples(self, task_index: int, task: str, slot: int, slots: int) -> Iterator[Any]:
        import webdataset as wds

        import sipl.data.shards  # noqa: F401  (registers the s3 scheme in this process)
        from sipl.data.shards import decode_sample

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
                yield epoch, sample
            if count == 0:
                raise SiplError(f"task '{task}': reading slot {slot}/{slots} got no decodable samples from shards "
                                f"{mine}; check the shards (re-run `sipl synthesize`)")
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from sipl.data.augment import PairAugment

        cfg = self.config
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = cfg.rank * workers + worker, cfg.world * workers
        tasks = sorted(cfg.task_urls)
        probabilities = np.array([cfg.weights[t] for t in tasks], dtype=np.float64)
        probabilities /= probabilities.sum()
        streams = {t: self._task_samples(i, t, slot, slots) for i, t in enumerate(tasks)}
        mixer = np.random.default_rng([cfg.seed, _MIX_STREAM, cfg.rank, worker, cfg.start_step])
        fresh = cfg.task_steps is not None
        augment = PairAugment(cfg.patch, cfg.task_steps, cfg.photometric, cfg.synthetic_share, cfg.channel_shuffle)
        # head crops are cut from the sample's clean image after its content draw (pair.source)
        heads = PairAugment(cfg.patch, cfg.task_steps, cfg.photometric) if cfg.head_samples > 0 and fresh else None
        while True:
            task = tasks[int(mixer.choice(len(tasks), p=probabilities))]
            epoch, sample = next(streams[task])
            # Each sample is read by exactly one reading slot per epoch, so this seed names one read of one sample
            # whatever the number of ranks and loader workers.
            seed = derive_seed(cfg.seed, cfg.start_step, task, sample.key, epoch)
            identity = cfg.identity_share > 0 and _uniform(seed, "identity") < cfg.identity_share
            pair = augment(sample.lq, sample.gt, None if identity else task, seed, sample.key)
            lq, gt = pair.lq, pair.gt
            key = f"{sample.key}#leaves" if "content" in pair.stages else sample.key
            if identity:
                lq, key = gt, f"{key}#clean"
            skipped, self._skipped = self._skipped, 0
            item = {"lq": lq, "gt": gt, "key": key, "task": task, "skipped": skipped}
            if heads is not None:
                item.update(self._head_crops(heads, pair.source, tasks, seed))
            yield item

    def _head_crops(self, heads: Any, clean: np.ndarray, tasks: list[str], seed: int) -> dict[str, Any]:
        """``head_samples`` crops of ``clean`` (the sample's clean image after its content draw), each through the
        pipeline ``heads`` (crop, orientation, tone, degradation) with its own seed derived from the sample's, and
        degraded by a uniformly drawn task or left clean."""
        from sipl.config.profiles import CLEAN_CLASS

        lqs, gts, labels = [], [], []
        for index in range(self.config.head_samples):
            head_seed = derive_seed(seed, "head", index)
            choice = int(_uniform(head_seed, "label") * (len(tasks) + 1))
            label = CLEAN_CLASS if choice == len(tasks) else tasks[choice]
            lq, gt, _, _ = heads(clean, clean, None if label == CLEAN_CLASS else label, head_seed)
            lqs.append(lq)
            gts.append(gt)
            labels.append(label)
        return {"head_lq": np.stack(lqs), "head_gt": np.stack(gts), "head_labels": labels}


def _uniform(*parts: Any) -> float:
    """A number in [0, 1) from a hash of ``parts`` (a seeded draw without building a generator)."""
    return derive_seed(*parts) / 2.0 ** 63


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
    from sipl.data.shards import iter_samples

    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for task, urls in task_urls.items():
        pairs = []
        for sample in iter_samples(urls):
            pairs.append((sample.lq, sample.gt))
            if len(pairs) >= max_samples:
                break
        out[task] = pairs
    return out
