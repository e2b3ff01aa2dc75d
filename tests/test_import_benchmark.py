import numpy as np
import pytest
from PIL import Image

from sipl.data.benchmark_import import import_benchmark
from sipl.data.shards import iter_samples, read_manifest, shard_urls
from sipl.errors import SiplError


def _save(path, seed, size=(37, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def test_sots_pairs_share_clear_images_and_are_mod16_cropped(tmp_path):
    root = tmp_path / "SOTS"
    _save(root / "clear" / "0001.png", 1)
    _save(root / "hazy" / "0001_0.8_0.2.jpg", 2)
    _save(root / "hazy" / "0001_0.9_0.1.jpg", 3)
    out = tmp_path / "shards"
    manifest = import_benchmark("sots", root, str(out))
    assert manifest["splits"]["test"]["dehaze"]["samples"] == 2
    samples = list(iter_samples(shard_urls(str(out), "test", "dehaze")))
    assert all(s.gt.shape == (32, 48, 3) and s.lq.shape == (32, 48, 3) for s in samples)
    assert np.array_equal(samples[0].gt, samples[1].gt)
    assert read_manifest(str(out)) == manifest


def test_missing_partners_are_reported_in_one_list(tmp_path):
    root = tmp_path / "LOL"
    for name in ("1", "2", "3"):
        _save(root / "low" / f"{name}.png", int(name))
    _save(root / "high" / "1.png", 9)
    _save(root / "high" / "4.png", 9)
    with pytest.raises(SiplError) as info:
        import_benchmark("lol", root, str(tmp_path / "out"))
    message = str(info.value)
    assert "3 problem(s)" in message and "2.png" in message and "3.png" in message and "4.png" in message
    assert not (tmp_path / "out").exists(), "nothing is written when pairs are missing"
    manifest = import_benchmark("lol", root, str(tmp_path / "out"), skip_unpaired=True)
    assert manifest["splits"]["test"]["lowlight"]["samples"] == 1 and manifest["skipped"] == 3


def test_rain100l_naming_and_size_mismatch(tmp_path):
    root = tmp_path / "Rain100L"
    _save(root / "rainy" / "rain-001.png", 1)
    _save(root / "norain-001.png", 2)
    _save(root / "rainy" / "rain-002.png", 3)
    _save(root / "norain-002.png", 4, size=(40, 50))
    with pytest.raises(SiplError, match="differs from"):
        import_benchmark("rain100l", root, str(tmp_path / "out"))


def test_cdd11_and_gopro_layouts(tmp_path):
    cdd = tmp_path / "CDD"
    for folder in ("clear", "low_haze", "haze_rain"):
        _save(cdd / folder / "001.png", 1)
    manifest = import_benchmark("cdd11", cdd, str(tmp_path / "cdd_out"))
    assert set(manifest["splits"]["test"]) == {"low_haze", "haze_rain"}
    assert manifest["splits"]["test"]["low_haze"]["family"] == "composite"
    gopro = tmp_path / "GOPRO"
    for seq in ("GOPR0384_11_00", "GOPR0385_11_01"):
        _save(gopro / seq / "blur" / "000001.png", 1)
        _save(gopro / seq / "sharp" / "000001.png", 2)
    manifest = import_benchmark("gopro", gopro, str(tmp_path / "gopro_out"))
    assert manifest["splits"]["test"]["deblur"]["samples"] == 2


def test_clean_folder_gets_seeded_noise_per_sigma(tmp_path):
    root = tmp_path / "CBSD68"
    _save(root / "0001.png", 1, size=(48, 64))
    first = import_benchmark("cbsd68", root, str(tmp_path / "a"), sigmas=[15, 50])
    second = import_benchmark("cbsd68", root, str(tmp_path / "b"), sigmas=[15, 50])
    assert set(first["splits"]["test"]) == {"denoise_15", "denoise_50"}
    assert first["splits"] == second["splits"], "fixed seed: identical shards"
    noisy = next(iter_samples(shard_urls(str(tmp_path / "a"), "test", "denoise_50")))
    residual = noisy.lq.astype(float) - noisy.gt.astype(float)
    assert 30 < residual.std() < 55 and noisy.meta["applied"][0]["name"] == "gaussian_noise"
