"""Synthesis and data-loading throughput.

Prints, measured in one run:
1. samples/s of every registered degradation (and the CDD-11 triple composites) on 256×256 uint8 images;
2. training-read throughput of our shards (WebDataset + DataLoader, 2 workers, random 128 crops) next to a
   PromptIR-style dataset (a folder of PNGs, PIL decode, Gaussian noise added on the fly, same crops and workers),
   as a ratio. Goal: shards >= 2x the folder baseline. The same shards are also read with a paired crop + one of the
   8 flips/rotations, once hand-written in NumPy (what the training loader did before ``sipl.data.augment``) and
   once through the training loader's albumentations pair pipeline (``sipl.data.augment.PairAugment``, seeded per
   sample), as a ratio in alternating epochs, and the CPU time per sample of the two alone in one process;
3. the training stream (``sipl.data.loader.TrainStream``, one process, patch 96, every task of ``params.yaml``)
   reading the shards' stored lq next to degrading every clean crop afresh (``train.fresh_degradations``), as a ratio.

Run: ``.venv/bin/python benchmarks/synthesis.py [--pairs 600] [--epochs 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import degradations  # noqa: E402
from sipl.data.shards import Sample, decode_sample, sample_key, write_task_shards  # noqa: E402

CROP = 128


def _clean_images(count: int, size: int = 256) -> list[np.ndarray]:
    """Crops of the embedded photos (so content is natural, not noise)."""
    from sipl.config.sections import SourceConfig
    from sipl.data.sources import load_sources

    photos, _ = load_sources([SourceConfig()])
    rng = np.random.default_rng(0)
    out = []
    while len(out) < count:
        photo = photos[len(out) % len(photos)].image
        top = rng.integers(0, photo.shape[0] - size + 1)
        left = rng.integers(0, photo.shape[1] - size + 1)
        out.append(np.ascontiguousarray(photo[top:top + size, left:left + size]))
    return out


def bench_degradations(images: list[np.ndarray], seconds: float = 1.0) -> list[tuple[str, float]]:
    rows = []
    steps = {name: name for name in sorted(degradations.REGISTRY)}
    steps.update({f"cdd11:{name}": degradations.CDD11[name] for name in ("low_haze_rain", "low_haze_snow")})
    for label, step in steps.items():
        rng = np.random.default_rng(0)
        degradations.apply(step, images[0], rng)  # warm-up (kernels, caches)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            degradations.apply(step, images[count % len(images)], rng)
            count += 1
        rows.append((label, count / (time.perf_counter() - started)))
    return rows


def _random_crop(lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    top = rng.integers(0, lq.shape[0] - CROP + 1)
    left = rng.integers(0, lq.shape[1] - CROP + 1)
    window = (slice(top, top + CROP), slice(left, left + CROP))
    return (torch.from_numpy(np.ascontiguousarray(lq[window])).permute(2, 0, 1),
            torch.from_numpy(np.ascontiguousarray(gt[window])).permute(2, 0, 1))


class _ShardCrops:
    def __init__(self):
        self.rng = np.random.default_rng(0)

    def __call__(self, sample: Sample):
        return _random_crop(sample.lq, sample.gt, self.rng)


class _HandwrittenPairCrops:
    """Paired crop + one of the 8 flips/rotations in NumPy from one generator (the loader before albumentations)."""

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def __call__(self, sample: Sample):
        top = int(self.rng.integers(0, sample.gt.shape[0] - CROP + 1))
        left = int(self.rng.integers(0, sample.gt.shape[1] - CROP + 1))
        rotation, flip = int(self.rng.integers(0, 4)), bool(self.rng.integers(0, 2))
        out = []
        for image in (sample.lq, sample.gt):
            image = image[top:top + CROP, left:left + CROP]
            image = np.ascontiguousarray(np.rot90(image[:, ::-1] if flip else image, rotation))
            out.append(torch.from_numpy(image).permute(2, 0, 1))
        return out[0], out[1]


class _PipelineCrops:
    """The training loader's paired augmentation (albumentations), seeded by a running sample count."""

    def __init__(self):
        from sipl.data.augment import PairAugment

        self.augment, self.count = PairAugment(CROP), 0

    def __call__(self, sample: Sample):
        self.count += 1
        lq, gt, _, _ = self.augment(sample.lq, sample.gt, sample.task, self.count, sample.key)
        return torch.from_numpy(lq).permute(2, 0, 1), torch.from_numpy(gt).permute(2, 0, 1)


class FolderDataset(torch.utils.data.Dataset):
    """The PromptIR-style baseline: PNG decode with PIL, noise added on the fly (field recipe), random crop."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        rng = np.random.default_rng(index)
        gt = np.asarray(Image.open(self.paths[index]).convert("RGB"))
        lq = np.clip(gt.astype(np.float32) + rng.normal(0, 25, gt.shape).astype(np.float32), 0, 255).astype(np.uint8)
        return _random_crop(lq, gt, rng)


def _throughput(loader, epochs: int) -> float:
    return _alternating([loader], epochs)[0]


def _alternating(loaders: list, epochs: int) -> list[float]:
    """Best samples/s of each loader over ``epochs`` epochs, the loaders taking turns epoch by epoch (so a change in
    the machine's load does not favour the one measured first)."""
    best = [0.0] * len(loaders)
    for _ in range(epochs):
        for index, loader in enumerate(loaders):
            count, started = 0, time.perf_counter()
            for lq, _ in loader:
                count += lq.shape[0]
            best[index] = max(best[index], count / (time.perf_counter() - started))
    return best


def bench_loading(images: list[np.ndarray], epochs: int, workers: int = 2) -> tuple[float, float, float, float]:
    """samples/s of shards + NumPy crop, shards + hand-written paired crop/flip, shards + albumentations pair
    pipeline, folder of PNGs."""
    import webdataset as wds

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "folder")
        folder.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
        rng = np.random.default_rng(1)
        samples = []
        for i, image in enumerate(images):
            lq, _ = degradations.apply({"name": "gaussian_noise", "sigma": 25}, image, rng)
            samples.append(Sample(sample_key("denoise_25", f"img-{i}", 0), "denoise_25", lq, image, {"i": i}))
        # enough shards for 2 workers to split them evenly
        entries = write_task_shards(tmp, "train", "denoise_25", samples, "npy", maxcount=max(1, len(samples) // 8))
        urls = [str(Path(tmp, "train", entry["name"])) for entry in entries]
        loaders = []
        for crops in (_ShardCrops(), _HandwrittenPairCrops(), _PipelineCrops()):
            shard_set = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=None,
                                        workersplitter=wds.split_by_worker).map(decode_sample).map(crops))
            loaders.append(torch.utils.data.DataLoader(shard_set, batch_size=32, num_workers=workers))
        rates = [_throughput(loaders[0], epochs), *_alternating(loaders[1:], epochs)]
        folder_loader = torch.utils.data.DataLoader(FolderDataset(sorted(folder.glob("*.png"))), batch_size=32,
                                                    num_workers=workers, shuffle=True)
        return rates[0], rates[1], rates[2], _throughput(folder_loader, epochs)


def bench_pair_crops(images: list[np.ndarray], rounds: int = 5) -> tuple[float, float]:
    """CPU µs per sample (one process, ``time.process_time``, so other users of the machine count less) of the
    paired crop + flip/rotation: (hand-written NumPy, albumentations pipeline), the two taking turns each round;
    the best round of each."""
    samples = [Sample(sample_key("denoise_25", f"img-{i}", 0), "denoise_25", image, image, {}) for i, image in
               enumerate(images)]
    variants = [_HandwrittenPairCrops(), _PipelineCrops()]
    best = [float("inf")] * len(variants)
    for _ in range(rounds):
        for index, crops in enumerate(variants):
            started = time.process_time()
            for sample in samples:
                crops(sample)
            best[index] = min(best[index], (time.process_time() - started) / len(samples) * 1e6)
    return best[0], best[1]


def bench_stream(images: list[np.ndarray], count: int = 1500, patch: int = 96) -> tuple[float, float]:
    """samples/s of ``TrainStream`` over shards of 128² crops of ``images`` for every task of params.yaml: (stored
    lq, fresh degradations)."""
    from sipl.config import load_params
    from sipl.data.loader import StreamConfig, TrainStream, task_weights

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        urls = {}
        for task, config in params.tasks.items():
            rng = np.random.default_rng(2)
            samples = []
            for i, image in enumerate(images[:96]):
                gt = np.ascontiguousarray(image[:CROP, :CROP])
                lq, _ = degradations.apply(config.steps, gt, rng)
                samples.append(Sample(sample_key(task, f"img-{i}", 0), task, lq, gt, {"i": i}))
            entries = write_task_shards(tmp, "train", task, samples, "npy", maxcount=48)
            urls[task] = [str(Path(tmp, "train", entry["name"])) for entry in entries]
        weights = task_weights({task: config.family for task, config in params.tasks.items()})
        steps = {task: config.model_dump(mode="json")["steps"] for task, config in params.tasks.items()}
        for fresh in (None, steps):
            stream = iter(TrainStream(StreamConfig(task_urls=urls, weights=weights, patch=patch, seed=0,
                                                   task_steps=fresh)))
            for _ in range(200):  # fill the shuffle buffers
                next(stream)
            started = time.perf_counter()
            for _ in range(count):
                next(stream)
            rates.append(count / (time.perf_counter() - started))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per degradation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = _clean_images(args.pairs)
    print(f"degradations on 256x256 uint8 (1 process, {args.seconds:.1f}s each)")
    print(f"  {'degradation':<24}{'samples/s':>12}{'ms/sample':>12}")
    for name, rate in bench_degradations(images[:32], args.seconds):
        print(f"  {name:<24}{rate:>12.1f}{1000 / rate:>12.2f}")
    shards, handwritten, pipeline, folder = bench_loading(images, args.epochs)
    print(f"\ntraining read, {args.pairs} pairs of 256x256, random {CROP} crops, batch 32, 2 DataLoader workers "
          f"(best of {args.epochs} epochs)")
    print(f"  webdataset npy shards      {shards:>10.0f} samples/s   (NumPy crop)")
    print(f"  folder of PNGs + noise     {folder:>10.0f} samples/s")
    print(f"  ratio shards / folder      {shards / folder:>10.2f}x   (goal >= 2x)")
    print(f"  shards + paired crop and flip/rotation (alternating epochs): hand-written {handwritten:.0f}, "
          f"albumentations pipeline {pipeline:.0f} samples/s, ratio {pipeline / handwritten:.2f}x")
    handwritten_us, pipeline_us = bench_pair_crops(images)
    print(f"  paired crop and flip/rotation alone, CPU per sample (1 process): hand-written {handwritten_us:.0f} us, "
          f"albumentations pipeline {pipeline_us:.0f} us")
    stored, fresh = bench_stream(images)
    print("\ntraining stream (TrainStream, 1 process, patch 96, every task of params.yaml)")
    print(f"  stored lq                  {stored:>10.0f} samples/s")
    print(f"  fresh degradation per read {fresh:>10.0f} samples/s")
    print(f"  ratio fresh / stored       {fresh / stored:>10.2f}x   (the training step consumes ~26 samples/s)")


if __name__ == "__main__":
    main()
