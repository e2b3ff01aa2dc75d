import json

import numpy as np
import pytest

from sipl.data.shards import (Sample, encode_shard, iter_samples, read_manifest, sample_key, shard_urls, write_json,
                         write_task_shards)
from sipl.errors import SiplError


def _samples(count: int, shape=(8, 6, 3)) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(sample_key("denoise_25", f"img-{i}", i), "denoise_25",
               rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 256, shape, dtype=np.uint8),
               {"task": "denoise_25", "source_id": f"img-{i}", "applied": [{"name": "gaussian_noise", "sigma": 25.0}]})
        for i in range(count)
    ]


@pytest.mark.parametrize("encoding", ["npy", "png"])
def test_shard_roundtrip_is_lossless_and_byte_stable(tmp_path, encoding):
    samples = _samples(5)
    entries = write_task_shards(str(tmp_path), "train", "denoise_25", samples, encoding, maxcount=2)
    assert [e["samples"] for e in entries] == [2, 2, 1]
    assert [e["name"] for e in entries] == [f"denoise_25-00000{i}.tar" for i in range(3)]
    urls = [str(tmp_path / "train" / e["name"]) for e in entries]
    decoded = list(iter_samples(urls))
    assert [s.key for s in decoded] == [s.key for s in samples]
    for original, back in zip(samples, decoded):
        assert np.array_equal(original.lq, back.lq) and np.array_equal(original.gt, back.gt)
        assert back.meta == original.meta and back.task == "denoise_25"
    assert encode_shard(samples, encoding) == encode_shard(_samples(5), encoding)


def test_keys_reject_dots_and_separators():
    with pytest.raises(ValueError, match="may not contain"):
        sample_key("denoise_25", "photo.png", 0)
    with pytest.raises(ValueError):
        sample_key("a__b", "x", 0)


def test_manifest_errors_say_what_to_run(tmp_path):
    with pytest.raises(SiplError, match="sipl synthesize"):
        read_manifest(str(tmp_path))
    write_json(str(tmp_path / "manifest.json"), {"splits": {"train": {"derain": {"samples": 1, "shards": [
        {"name": "derain-000000.tar", "samples": 1, "sha256": "x"}]}}}})
    assert shard_urls(str(tmp_path), "train", "derain") == [str(tmp_path / "train" / "derain-000000.tar")]
    with pytest.raises(SiplError, match="task 'dehaze' has no shards in split 'train'"):
        shard_urls(str(tmp_path), "train", "dehaze")
    with pytest.raises(SiplError, match="split 'val' has no shards"):
        shard_urls(str(tmp_path), "val")


def test_truncated_shard_is_named(tmp_path):
    entries = write_task_shards(str(tmp_path), "val", "derain", _samples(3, (32, 32, 3)), "npy", maxcount=8)
    path = tmp_path / "val" / entries[0]["name"]
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(SiplError, match=f"{path.name}: corrupt shard"):
        list(iter_samples([str(path)]))


def test_webdataset_reads_our_shards(tmp_path):
    import webdataset as wds

    from sipl.data.shards import decode_sample

    write_task_shards(str(tmp_path), "train", "denoise_25", _samples(3), "npy", maxcount=8)
    dataset = wds.WebDataset([str(tmp_path / "train" / "denoise_25-000000.tar")], shardshuffle=False).map(decode_sample)
    keys = [sample.key for sample in dataset]
    assert keys == [s.key for s in _samples(3)]
    assert json.loads(json.dumps(next(iter(dataset)).meta))["task"] == "denoise_25"
