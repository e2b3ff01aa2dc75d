"""Training data: task weights, shard checks, shard splitting, paired augmentation, the mixed stream.

Also home of ``make_shards`` / ``tiny_params`` used by the other training tests (small synthetic shards in the
real format, written with sipl.data.shards)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sipl.config import parse_params
from sipl.data.augment import PairAugment, dead_leaves, fresh_degradation
from sipl.data.loader import StreamConfig, TrainStream, check_shards, slot_shards, task_weights
from sipl.errors import SiplError

torch.set_num_threads(1)

TASKS = {
    "denoise": {"family": "noise", "steps": [{"name": "gaussian_noise", "sigma": 25}]},
    "lowlight": {"family": "lowlight", "steps": [{"name": "low_light"}]},
}


def _clean(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour image: a few random sinusoids, uint8 size×size×3."""
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size, 3))
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.28)]
        out[..., c] = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def _degrade(task: str, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if task == "denoise":
        return np.clip(gt + rng.normal(0, 25, gt.shape), 0, 255).astype(np.uint8)
    return (gt.astype(np.float64) * 0.35).astype(np.uint8)


def make_shards(root: Path, samples: dict[str, int] | None = None, size: int = 32, per_shard: int = 8,
                val: int = 4, seed: int = 0, tasks: dict | None = None) -> Path:
    """Write train/val shards + manifest under ``root`` (``samples``: train samples per task)."""
    from sipl.data.shards import Sample, join, sample_key, write_json, write_task_shards

    tasks = tasks or TASKS
    samples = samples or {t: 16 for t in tasks}
    rng = np.random.default_rng(seed)
    manifest = {"encoding": "npy", "splits": {}}
    for split, counts in (("train", samples), ("val", {t: val for t in tasks})):
        manifest["splits"][split] = {}
        for task, count in counts.items():
            items = []
            for i in range(count):
                gt = _clean(rng, size)
                meta = {"task": task, "family": tasks[task]["family"], "split": split, "source_id": f"img{i}"}
                items.append(Sample(sample_key(task, f"{split}{i}", 0), task, _degrade(task, gt, rng), gt, meta))
            entries = write_task_shards(str(root), split, task, items, "npy", per_shard)
            manifest["splits"][split][task] = {"samples": count, "family": tasks[task]["family"], "shards": entries}
    write_json(join(str(root), "manifest.json"), manifest)
    return root


def tiny_params(shard_root: Path, **train_overrides) -> "Params":  # noqa: F821
    """The tiny profile shrunk for tests: 2 tasks, patch 32, a handful of steps."""
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["tasks"] = TASKS
    raw["shards"]["root"] = str(shard_root)
    train = raw["profiles"]["tiny"]["train"]
    train.update({"steps": 6, "global_batch": 4, "patch": 32, "warmup_steps": 2, "val_every": 3, "log_every": 2,
                  "checkpoint_every": 3, "val_max_samples": 2, "loader_workers": 0, "shuffle_buffer": 8,
                  "lr": 2e-3, "init_weights": None,  # 2 tasks: the shipped 11-task model does not fit
                  # the mechanics tests compare loss values over a few steps: pin a plain L1 whatever the recipe
                  "loss": {"l1": 1.0, "charbonnier": 0.0, "fft": 0.0, "psnr": 0.0, "preliminary": 0.5}})
    train.update(train_overrides)
    raw["profile"] = "tiny"
    return parse_params(raw, source="test params")


@pytest.fixture
def shards(tmp_path):
    return make_shards(tmp_path / "shards")


# ------------------------------------------------------------------------------------------------- weights

def test_default_weights_are_equal_per_family():
    weights = task_weights({"n15": "noise", "n25": "noise", "n50": "noise", "rain": "rain", "haze": "haze"})
    assert weights["rain"] == pytest.approx(1 / 3)
    assert weights["n15"] == pytest.approx(1 / 9)
    assert sum(weights.values()) == pytest.approx(1.0)


def test_task_weights_override_and_errors():
    weights = task_weights({"a": "noise", "b": "rain"}, {"a": 3.0})
    assert weights["a"] == pytest.approx(3.0 / 3.5)
    with pytest.raises(SiplError, match="not a task"):
        task_weights({"a": "noise"}, {"zzz": 1.0})
    with pytest.raises(SiplError, match="weight 0"):
        task_weights({"a": "noise"}, {"a": 0.0})


# ------------------------------------------------------------------------------------------ shard checks

def test_check_shards_lists_urls(shards):
    urls = check_shards(str(shards), ["denoise", "lowlight"], "train")
    assert [Path(u).name for u in urls["denoise"]] == ["denoise-000000.tar", "denoise-000001.tar"]


def test_check_shards_names_task_without_shards(shards):
    with pytest.raises(SiplError, match="task 'derain' has no train shards"):
        check_shards(str(shards), ["denoise", "derain"], "train")
    assert "derain" not in check_shards(str(shards), ["denoise", "derain"], "val", required=False)


def test_check_shards_missing_and_truncated(shards):
    shard = shards / "train" / "lowlight-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(SiplError, match=r"lowlight-000001.tar \(task 'lowlight', split 'train'\) is corrupt"):
        check_shards(str(shards), ["lowlight"], "train")
    shard.unlink()
    with pytest.raises(SiplError, match="lowlight-000001.tar.*missing"):
        check_shards(str(shards), ["lowlight"], "train")


def test_check_shards_without_manifest(tmp_path):
    with pytest.raises(SiplError, match="sipl synthesize"):
        check_shards(str(tmp_path), ["denoise"], "train")


# --------------------------------------------------------------------------------------------- splitting

@pytest.mark.parametrize("n_shards,slots", [(8, 4), (5, 2), (3, 4)])
def test_slot_shards_partition(n_shards, slots):
    urls = [f"s{i}.tar" for i in range(n_shards)]
    parts = [slot_shards(urls, slot, slots, epoch=1, seed=3) for slot in range(slots)]
    if n_shards >= slots:
        flat = [u for part, stride in parts for u in part]
        assert sorted(flat) == sorted(urls) and all(stride == 1 for _, stride in parts)
    else:
        assert all(stride == slots and sorted(part) == sorted(urls) for part, stride in parts)
    assert slot_shards(urls, 0, slots, 1, 3) == slot_shards(urls, 0, slots, 1, 3)
    assert slot_shards(urls, 0, 1, 1, 3)[0] != slot_shards(urls, 0, 1, 2, 3)[0] or n_shards < 3


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
    """The 8 flips / 90° rotations of ``image``."""
    return [np.rot90(flipped, k) for flipped in (image, image[:, ::-1]) for k in range(4)]


def _locate(image: np.ndarray, patch: np.ndarray) -> list[tuple[int, tuple[int, ...]]]:
    """Every (orientation, channel order) that turns ``patch`` back into a window of ``image`` (random pixels: one)."""
    side = patch.shape[0]
    found = []
    for k, view in enumerate(_dihedral(patch)):
        for order in itertools.permutations(range(3)):
            candidate = view[..., list(order)]
            corner = np.all(image[:image.shape[0] - side + 1, :image.shape[1] - side + 1] == candidate[0, 0], axis=-1)
            if any(np.array_equal(image[t:t + side, u:u + side], candidate) for t, u in zip(*np.nonzero(corner))):
                found.append((k, order))
    return found


def test_pair_augment_gives_lq_and_gt_the_same_geometry_and_the_same_pixels_for_the_same_seed():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 200, (40, 48, 3), dtype=np.uint8)
    augment = PairAugment(16, channel_shuffle=0.5)
    orientations, orders = set(), set()
    for seed in range(64):
        lq_patch, gt_patch, applied, source = augment(gt + 7, gt, "denoise", seed)
        assert source is gt
        assert lq_patch.shape == gt_patch.shape == (16, 16, 3) and lq_patch.flags.c_contiguous
        np.testing.assert_array_equal(lq_patch, gt_patch + 7)  # one crop, orientation and channel order for both
        again = augment(gt + 7, gt, "denoise", seed)
        assert np.array_equal(again[0], lq_patch) and np.array_equal(again[1], gt_patch) and again[2] == applied
        # the patch is a window of gt in one of the 8 orientations, channels in one of the 6 orders
        found = _locate(gt, gt_patch)
        assert len(found) == 1, seed
        orientations.add(found[0][0])
        orders.add(found[0][1])
        if found[0][1] != (0, 1, 2):
            assert "channels" in applied
    assert len(orientations) == 8 and len(orders) == 6
    other = PairAugment(16, channel_shuffle=0.5)(gt + 7, gt, "denoise", 1)  # another instance, the same seed
    assert np.array_equal(other[1], augment(gt + 7, gt, "denoise", 1)[1])
    with pytest.raises(SiplError, match="sample k1 is 40x48, smaller than train.patch=64"):
        PairAugment(64)(gt, gt, "denoise", 0, key="k1")
    with pytest.raises(SiplError, match=r"sample k2: input \(40, 40, 3\) and ground truth \(40, 48, 3\)"):
        augment(gt[:, :40], gt, "denoise", 0, key="k2")


def test_pair_augment_degrades_the_augmented_crop_afresh_and_leaves_global_rng_alone():
    import random

    gt = _clean(np.random.default_rng(1), 48)
    steps = {task: config["steps"] for task, config in TASKS.items()}
    augment = PairAugment(32, steps, photometric=0.5, synthetic_share=0.5)
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    noise, stages = [], set()
    for seed in range(30):
        lq, out_gt, applied, source = augment(None, gt, "denoise", seed)
        # the content stage replaces the whole clean image, and the call hands it back for further crops
        assert (source is gt) == ("content" not in applied) and source.shape == gt.shape
        again = augment(None, gt, "denoise", seed)
        assert np.array_equal(again[0], lq) and np.array_equal(again[1], out_gt)
        assert "degradation" in applied
        stages.update(applied)
        noise.append(lq.astype(float) - out_gt)
        clean_lq, clean_gt, clean_applied, clean_source = augment(None, gt, None, seed)  # no task: identity pair
        assert np.array_equal(clean_lq, clean_gt) and np.array_equal(clean_gt, out_gt)
        assert np.array_equal(clean_source, source)
        assert clean_applied == tuple(stage for stage in applied if stage != "degradation")
    assert {"content", "tone"} <= stages
    assert 20 < np.concatenate([n.ravel() for n in noise]).std() < 30
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state and torch.equal(torch.get_rng_state(), torch_state)


# ------------------------------------------------------------------------------------------------ stream

def _stream(shards, **kw):
    urls = check_shards(str(shards), ["denoise", "lowlight"], "train", verify_sha256=False)
    config = dict(task_urls=urls, weights={"denoise": 0.5, "lowlight": 0.5}, patch=16, seed=1, shuffle_buffer=4)
    config.update(kw)
    return TrainStream(StreamConfig(**config))


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_stream_is_deterministic_and_rank_split(shards):
    first = [i["key"] for i in _take(_stream(shards, world=2, rank=0), 24)]
    again = [i["key"] for i in _take(_stream(shards, world=2, rank=0), 24)]
    other = [i["key"] for i in _take(_stream(shards, world=2, rank=1), 24)]
    assert first == again
    assert {k.split("__")[0] for k in first} == {"denoise", "lowlight"}
    # one epoch of a rank covers only its own shards: the two ranks read disjoint samples
    assert not set(first[:8]) & set(other[:8])
    assert set(first) & set(other) == set() or len(set(first)) > 8


def test_stream_respects_weights(shards):
    items = _take(_stream(shards, weights={"denoise": 0.9, "lowlight": 0.1}), 200)
    share = sum(i["task"] == "denoise" for i in items) / len(items)
    assert 0.8 < share < 0.97


def test_stream_identity_share_gives_clean_pairs_without_changing_the_rest(shards):
    plain = _take(_stream(shards), 200)
    mixed = _take(_stream(shards, identity_share=0.25), 200)
    clean = [i for i in mixed if i["key"].endswith("#clean")]
    assert 0.15 < len(clean) / len(mixed) < 0.35
    assert all(np.array_equal(i["lq"], i["gt"]) for i in clean)
    # the identity draw has its own generator: tasks, samples and crops are those of the plain stream
    for a, b in zip(plain, mixed):
        assert (a["task"], a["key"]) == (b["task"], b["key"].removesuffix("#clean"))
        assert np.array_equal(a["gt"], b["gt"])
        if not b["key"].endswith("#clean"):
            assert np.array_equal(a["lq"], b["lq"])
    assert not any(i["key"].endswith("#clean") for i in plain)


def test_stream_channel_shuffle_reorders_input_and_target_alike(shards):
    plain = _take(_stream(shards, identity_share=0.25), 120)
    shuffled = _take(_stream(shards, identity_share=0.25, channel_shuffle=1.0), 120)
    orders = set()
    for a, b in zip(plain, shuffled):
        # the order has its own generator: tasks, samples, crops and identity draws are the plain stream's
        assert (a["task"], a["key"]) == (b["task"], b["key"])
        found = [order for order in itertools.permutations(range(3))
                 if np.array_equal(b["gt"], a["gt"][..., list(order)])
                 and np.array_equal(b["lq"], a["lq"][..., list(order)])]
        assert found, a["key"]
        orders.update(found)
        assert b["lq"].flags.c_contiguous and b["gt"].flags.c_contiguous
    assert len(orders) == 6
    half = _take(_stream(shards, channel_shuffle=0.5), 240)
    plain = _take(_stream(shards), 240)
    reordered = sum(not np.array_equal(a["gt"], b["gt"]) for a, b in zip(plain, half))
    assert 0.3 < reordered / len(half) < 0.55  # half the pairs drawn, 5 of their 6 orders differ from RGB


def test_fresh_degradations_draw_anew_at_every_read_and_repeat_for_the_same_seed(shards):
    steps = {task: config["steps"] for task, config in TASKS.items()}
    first = _take(_stream(shards, patch=32, task_steps=steps), 400)
    again = _take(_stream(shards, patch=32, task_steps=steps), 400)
    later = _take(_stream(shards, patch=32, task_steps=steps, start_step=5), 400)
    # the same (seed, start step) gives the same pixels
    assert all(np.array_equal(a["lq"], b["lq"]) and a["key"] == b["key"] for a, b in zip(first, again))
    assert any(not np.array_equal(a["lq"], b["lq"]) for a, b in zip(first, later))
    # the same crop in the same orientation, read twice, gets two different noise draws
    seen: dict[tuple[str, bytes], np.ndarray] = {}
    repeats = 0
    for item in first:
        if item["task"] != "denoise":
            continue
        marker = (item["key"], item["gt"].tobytes())
        if marker in seen:
            repeats += 1
            assert not np.array_equal(seen[marker], item["lq"]), item["key"]
        seen[marker] = item["lq"]
    assert repeats > 0
    # the shards' own lq is not used: the input is the task's degradation of the clean crop
    noise = np.concatenate([(i["lq"].astype(float) - i["gt"]).ravel() for i in first if i["task"] == "denoise"])
    assert 20 < noise.std() < 30


@pytest.mark.parametrize("fresh", [False, True], ids=["stored-lq", "fresh"])
def test_a_sample_read_gets_the_same_pixels_on_any_number_of_ranks_and_workers(shards, fresh):
    steps = {task: config["steps"] for task, config in TASKS.items()} if fresh else None
    options = dict(weights={"denoise": 1.0, "lowlight": 0.0}, patch=16, task_steps=steps, channel_shuffle=0.5,
                   identity_share=0.2, photometric=0.5 if fresh else 0.0, synthetic_share=0.3 if fresh else 0.0)
    epochs = {}
    # 16 denoise samples in 2 shards: 1 slot reads both, 2 slots one each, 4 slots every 4th sample of both
    for world in (1, 2, 4):
        items = [item for rank in range(world)
                 for item in _take(_stream(shards, world=world, rank=rank, **options), 16 // world)]
        epochs[world] = {item["key"].split("#")[0]: item for item in items}
        assert len(epochs[world]) == 16  # one epoch: every sample read once
    for key, item in epochs[1].items():
        for world in (2, 4):
            other = epochs[world][key]
            assert other["key"] == item["key"]
            assert np.array_equal(other["lq"], item["lq"]) and np.array_equal(other["gt"], item["gt"]), (world, key)
    assert any(item["key"].endswith("#clean") for item in epochs[1].values())


def test_fresh_degradation_names_the_task_on_bad_steps():
    gt = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(SiplError, match="tasks.broken"):
        fresh_degradation(gt, [{"name": "gaussian_noise", "sigma": "loud"}], [0, 1], "broken", "k")


def test_stream_skips_corrupt_samples(shards):
    # replace one sample's lq member with garbage bytes inside an otherwise valid tar
    import io
    import tarfile

    path = shards / "train" / "denoise-000000.tar"
    members = []
    with tarfile.open(path) as tar:
        for info in tar:
            data = tar.extractfile(info).read()
            if info.name.endswith(".lq.npy") and not members:
                data = b"not an array"
            members.append((info, data))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    items = _take(_stream(shards, weights={"denoise": 1.0, "lowlight": 0.0}), 40)
    assert sum(i["skipped"] for i in items) >= 1
    with pytest.raises(SiplError, match="task 'denoise': corrupt"):
        _take(_stream(shards, weights={"denoise": 1.0, "lowlight": 0.0}, corrupt_samples="fail"), 40)


def test_manifest_written_by_helper_is_valid(shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["splits"]["train"]["denoise"]["samples"] == 16


def test_head_samples_are_labelled_degradations_of_the_same_clean_image(shards):
    from sipl.data.loader import collate

    steps = {task: config["steps"] for task, config in TASKS.items()}
    items = _take(_stream(shards, patch=16, task_steps=steps, head_samples=3), 60)
    labels = [label for item in items for label in item["head_labels"]]
    assert set(labels) == {"clean", "denoise", "lowlight"}
    for item in items:
        assert item["head_lq"].shape == (3, 16, 16, 3) == item["head_gt"].shape
        for lq, gt, label in zip(item["head_lq"], item["head_gt"], item["head_labels"]):
            if label == "clean":
                assert np.array_equal(lq, gt)
            elif label == "lowlight":
                assert lq.mean() < gt.mean()
    batch = collate(items[:4])
    assert batch["head_lq"].shape == (12, 16, 16, 3) and len(batch["head_labels"]) == 12
    # the extra crops have their own generator: the main stream is unchanged
    plain = _take(_stream(shards, patch=16, task_steps=steps), 60)
    assert all(np.array_equal(a["lq"], b["lq"]) for a, b in zip(plain, items))


def test_photometric_jitter_changes_the_clean_pair_alike(shards):
    steps = {task: config["steps"] for task, config in TASKS.items()}
    plain = _take(_stream(shards, patch=32, task_steps=steps), 40)
    jittered = _take(_stream(shards, patch=32, task_steps=steps, photometric=1.0), 40)
    changed = 0
    for a, b in zip(plain, jittered):
        assert (a["key"], a["task"]) == (b["key"], b["task"])
        changed += not np.array_equal(a["gt"], b["gt"])
        if b["task"] == "denoise":  # the input is the degradation of the jittered clean image, not of the original
            assert abs((b["lq"].astype(float) - b["gt"]).std() - 25) < 6
    assert changed > 30


def test_dead_leaves_take_the_photo_colours_and_replace_a_share_of_crops(shards):
    photo = _clean(np.random.default_rng(3), 32)
    leaves = dead_leaves(photo, np.random.default_rng(0))
    assert leaves.shape == photo.shape and leaves.dtype == np.uint8 and leaves.std() > 5
    assert np.array_equal(leaves, dead_leaves(photo, np.random.default_rng(0)))
    steps = {task: config["steps"] for task, config in TASKS.items()}
    items = _take(_stream(shards, patch=32, task_steps=steps, synthetic_share=0.5), 100)
    synthetic = [i for i in items if i["key"].endswith("#leaves")]
    assert 0.3 < len(synthetic) / len(items) < 0.7


def test_clean_only_train_shards_feed_every_task_with_fresh_degradations(tmp_path):
    """`shards.train_pairs: false` stores each clean crop once; the stream still yields every task, each degraded
    afresh, and a crop read for two tasks gets two different inputs."""
    from PIL import Image

    from sipl.data.synthesize import synthesize

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(_clean(rng, 64)).save(folder / f"p{i}.png")
    params = parse_params({
        "sources": [{"kind": "folder", "path": str(folder)}],
        "splits": {"val_fraction": 0.2, "test_fraction": 0.0},
        "crops": {"train": {"size": 48, "per_image": 2}, "val": {"size": 32}},
        "tasks": TASKS, "shards": {"root": str(tmp_path / "shards")},
        "profiles": {"tiny": {"train": {"patch": 32}}},
    })
    manifest = synthesize(params, workers=1, progress=False)
    assert list(manifest["splits"]["train"]) == ["clean"]
    urls = check_shards(str(tmp_path / "shards"), list(TASKS), "train", manifest=manifest)
    assert urls["denoise"] == urls["lowlight"]  # both read the one clean set
    steps = {task: config["steps"] for task, config in TASKS.items()}
    stream = TrainStream(StreamConfig(task_urls=urls, weights={"denoise": 0.5, "lowlight": 0.5}, patch=32, seed=1,
                                      shuffle_buffer=4, task_steps=steps))
    items = _take(stream, 60)
    assert {item["task"] for item in items} == set(TASKS)
    for item in items:
        assert item["lq"].shape == item["gt"].shape == (32, 32, 3)
        assert not np.array_equal(item["lq"], item["gt"]), item["key"]
    dark = [item for item in items if item["task"] == "lowlight"]
    assert all(item["lq"].mean() < item["gt"].mean() for item in dark)


def test_clean_only_train_shards_refuse_training_without_fresh_degradations(tmp_path):
    from sipl.data.shards import join, read_manifest, write_json
    from sipl.training.launcher import make_spec

    root = make_shards(tmp_path / "shards")
    manifest = read_manifest(str(root))
    manifest["train_pairs"] = False
    manifest["splits"]["train"] = {"clean": manifest["splits"]["train"]["denoise"]}
    write_json(join(str(root), "manifest.json"), manifest)
    with pytest.raises(SiplError, match="fresh_degradations is false"):
        make_spec(tiny_params(root, fresh_degradations=False))
