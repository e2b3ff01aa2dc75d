import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sipl.config import parse_params
from sipl.data.shards import iter_samples, read_manifest, shard_urls
from sipl.data.sources import assign_splits
from sipl.data.synthesize import crop_boxes, synthesize
from sipl.errors import SiplError


def _photo(seed: int, size=(72, 88)) -> np.ndarray:
    """A smooth, photo-like test image (gradients + blobs), uint8 H×W×3."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / max(size)
    channels = [np.sin(6 * (xx * rng.uniform(0.5, 2) + yy * rng.uniform(0.5, 2)) + rng.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(channels, -1) * 0.4 + 0.5) * 255).astype(np.uint8)


def _folder(tmp_path: Path, count: int = 6) -> Path:
    folder = tmp_path / "clean"
    folder.mkdir()
    for i in range(count):
        Image.fromarray(_photo(i)).save(folder / f"photo_{i}.png")
    return folder


def _params(folder: Path, root: Path | str, **changes):
    raw = {
        "seed": 3,
        "sources": [{"kind": "folder", "path": str(folder), "name": "mine"}],
        "splits": {"val_fraction": 0.25, "test_fraction": 0.25},
        "crops": {"train": {"size": 32, "per_image": 3}, "val": {"size": 32, "per_image": 1},
                  "test": {"size": None, "max_side": 48}},
        "tasks": {"denoise_25": {"family": "noise", "steps": [{"name": "gaussian_noise", "sigma": 25}]},
                  "low_haze": {"family": "composite", "steps": [{"name": "low_light"}, {"name": "haze"}]}},
        "shards": {"root": str(root), "maxcount": 4, "encoding": "npy"},
        "profiles": {"tiny": {"train": {"patch": 32}}},  # the patch fits the 32² train crops
    }
    raw.update(changes)
    return parse_params(raw)


def _digests(manifest: dict) -> dict:
    return {(split, task): [s["sha256"] for s in entry["shards"]]
            for split, tasks in manifest["splits"].items() for task, entry in tasks.items()}


def test_same_params_give_byte_identical_shards(tmp_path):
    folder = _folder(tmp_path)
    first = synthesize(_params(folder, tmp_path / "a"), workers=2, progress=False)
    second = synthesize(_params(folder, tmp_path / "b"), workers=1, progress=False)
    assert first == second
    for split in ("train", "val", "test"):
        for path in sorted((tmp_path / "a" / split).glob("*.tar")):
            twin = tmp_path / "b" / split / path.name
            assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(twin.read_bytes()).hexdigest()
    other_seed = synthesize(_params(folder, tmp_path / "c", seed=4), workers=1, progress=False)
    assert _digests(other_seed) != _digests(first)


def test_splits_are_disjoint_by_source_and_samples_carry_their_parameters(tmp_path):
    folder = _folder(tmp_path)
    root = tmp_path / "shards"
    manifest = synthesize(_params(folder, root), progress=False)
    sources = {split: set(ids) for split, ids in manifest["sources"].items()}
    assert sources["train"] and sources["val"] and sources["test"]
    assert not (sources["train"] & sources["val"]) and not (sources["train"] & sources["test"])
    assert not (sources["val"] & sources["test"])
    for split in ("train", "val", "test"):
        seen = {s.meta["source_id"] for s in iter_samples(shard_urls(str(root), split))}
        assert seen == sources[split]
    test_samples = list(iter_samples(shard_urls(str(root), "test", "low_haze")))
    assert all(s.gt.shape[0] % 16 == 0 and s.gt.shape[1] % 16 == 0 and max(s.gt.shape) <= 48 for s in test_samples)
    sample = next(iter_samples(shard_urls(str(root), "val", "low_haze")))
    assert [step["name"] for step in sample.meta["applied"]] == ["low_light", "haze"]
    assert sample.meta["seed"] and sample.meta["crop_box"][2:] == [32, 32]
    assert not np.array_equal(sample.lq, sample.gt)
    # the default train split stores each clean crop once; training degrades it afresh per read
    assert manifest["train_pairs"] is False and list(manifest["splits"]["train"]) == ["clean"]
    assert manifest["splits"]["train"]["clean"]["samples"] == 3 * len(sources["train"])


def test_clean_only_train_split_stores_each_crop_once_and_paired_mode_keeps_every_task(tmp_path):
    folder = _folder(tmp_path)
    clean = synthesize(_params(folder, tmp_path / "clean_only"), progress=False)
    paired = synthesize(_params(folder, tmp_path / "paired", shards={"root": str(tmp_path / "paired"), "maxcount": 4,
                                                                   "encoding": "npy", "train_pairs": True}),
                        progress=False)
    # the same crop boxes, stored once without an input instead of once per task with one
    clean_samples = list(iter_samples(shard_urls(str(tmp_path / "clean_only"), "train", "low_haze")))
    assert all(s.key.startswith("clean__") and s.lq is s.gt for s in clean_samples)
    paired_samples = list(iter_samples(shard_urls(str(tmp_path / "paired"), "train", "low_haze")))
    assert [s.meta["crop_box"] for s in paired_samples] == [s.meta["crop_box"] for s in clean_samples]
    assert [step["name"] for step in paired_samples[0].meta["applied"]] == ["low_light", "haze"]
    assert sorted(paired["splits"]["train"]) == ["denoise_25", "low_haze"]
    size = {name: sum(p.stat().st_size for p in (tmp_path / name / "train").glob("*.tar"))
            for name in ("clean_only", "paired")}
    assert size["clean_only"] < size["paired"] / 2  # gt once against 2 tasks × (lq + gt); tar headers weigh at 32²
    # val and test are the same in both modes
    assert {k: v for k, v in clean["splits"].items() if k != "train"} == \
        {k: v for k, v in paired["splits"].items() if k != "train"}


def test_bad_files_are_skipped_listed_and_left_untouched(tmp_path, capsys):
    folder = _folder(tmp_path, 4)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    good = (folder / "photo_0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    Image.fromarray(_photo(9)).convert("L").save(folder / "grey.png")
    Image.fromarray(_photo(8)).convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(_photo(7)[:8, :8]).save(folder / "tiny.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    root = tmp_path / "shards"
    synthesize(_params(folder, root), progress=False)
    skipped = {Path(item["uri"]).name: item["reason"] for item in json.loads((root / "skipped.json").read_text())}
    assert set(skipped) >= {"empty.png", "notes.txt", "truncated.png"}
    assert "empty" in skipped["empty.png"] and "not a readable image" in skipped["notes.txt"]
    assert "grey.png" not in skipped and "alpha.png" not in skipped
    assert "smaller than" in skipped.get("tiny.png", "smaller than")  # too small for a crop wherever it landed
    assert "L converted to RGB" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "sources must never be modified"


def test_source_without_usable_images_fails_clearly(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    with pytest.raises(SiplError, match="no usable image"):
        synthesize(_params(folder, tmp_path / "out"), progress=False)
    with pytest.raises(SiplError, match="does not exist"):
        synthesize(_params(tmp_path / "missing", tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_unknown_degradation_fails_at_load_naming_the_task(tmp_path):
    from sipl.config import ConfigError

    folder = _folder(tmp_path, 2)
    with pytest.raises(ConfigError, match="tasks.x.steps: .*fog_machine.*known: .*gaussian_noise"):
        _params(folder, tmp_path / "out", tasks={"x": {"family": "noise", "steps": [{"name": "fog_machine"}]}})
    with pytest.raises(ConfigError, match="tasks.y.steps: .*unknown parameter.*sigmaa"):
        _params(folder, tmp_path / "out",
                tasks={"y": {"family": "noise", "steps": [{"name": "gaussian_noise", "sigmaa": 3}]}})


def test_split_assignment_is_stable_and_per_group():
    groups = [f"img-{i}" for i in range(200)]
    first = assign_splits(groups, 0.2, 0.1)
    assert first == assign_splits(list(reversed(groups)), 0.2, 0.1)
    counts = {s: list(first.values()).count(s) for s in ("train", "val", "test")}
    assert 20 <= counts["val"] <= 60 and 5 <= counts["test"] <= 35
    small = assign_splits(["a", "b", "c"], 0.1, 0.1)
    assert set(small.values()) == {"train", "val", "test"}


def test_crop_boxes_follow_the_field_convention():
    from sipl.config.sections import SplitCropConfig

    assert crop_boxes((481, 321, 3), SplitCropConfig(size=None, multiple=16), None) == [(0, 0, 480, 320)]
    assert crop_boxes((600, 900, 3), SplitCropConfig(size=None, max_side=256), None) == [(172, 322, 256, 256)]
    rng = np.random.default_rng(0)
    boxes = crop_boxes((100, 120, 3), SplitCropConfig(size=64, per_image=5), rng)
    assert len(boxes) == 5 and all(t + 64 <= 100 and l + 64 <= 120 for t, l, _, _ in boxes)


@pytest.mark.slow
def test_s3_sources_and_shards_round_trip(tmp_path, s3_endpoint, monkeypatch):
    """Sources read from and shards written to a real S3 endpoint give the same bytes as local folders."""
    import fsspec

    monkeypatch.chdir(tmp_path)  # the local mirror of the manifest goes to ./data/shards

    from tests.services import create_bucket

    create_bucket(s3_endpoint, "clean")
    create_bucket(s3_endpoint, "shards")
    folder = _folder(tmp_path, 5)
    fs = fsspec.filesystem("s3")
    for path in sorted(folder.iterdir()):
        fs.pipe_file(f"clean/photos/{path.name}", path.read_bytes())
    local = synthesize(_params(folder, tmp_path / "local"), progress=False)
    params = _params(folder, "s3://shards/run1",
                     sources=[{"kind": "s3", "path": "s3://clean/photos", "name": "mine"}])
    remote = synthesize(params, progress=False)
    assert _digests(remote) == _digests(local)
    assert read_manifest("s3://shards/run1") == remote
    assert json.loads((tmp_path / "data" / "shards" / "manifest.json").read_text()) == remote
    samples = list(iter_samples(shard_urls("s3://shards/run1", "train", "denoise_25")))
    assert len(samples) == remote["splits"]["train"]["clean"]["samples"]
