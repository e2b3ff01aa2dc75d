"""Metric parity with scikit-image (the field's reference implementation) on random and real images."""

import numpy as np
import pytest
import torch
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sipl.evaluation import metrics

torch.set_num_threads(1)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _reference(gt: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """scikit-image numbers for one HxWx3 float64 pair (out clipped as the convention says)."""
    out = np.clip(out, 0.0, 1.0)
    y_gt, y_out = color.rgb2ycbcr(gt)[..., 0], color.rgb2ycbcr(out)[..., 0]
    return {
        "psnr": peak_signal_noise_ratio(gt, out, data_range=1.0),
        "ssim": structural_similarity(gt, out, data_range=1.0, channel_axis=-1),
        "psnr_y": peak_signal_noise_ratio(y_gt, y_out, data_range=255.0),
        "ssim_y": structural_similarity(y_gt, y_out, data_range=255.0),
    }


def _pairs_random(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    gts, outs = [], []
    for sigma in (0.02, 0.1, 0.3):
        gt = rng.random((37, 53, 3))
        gts.append(gt)
        outs.append(gt + rng.normal(0, sigma, gt.shape))  # leaves [0,1]: exercises the clipping
    return gts, outs


def _pairs_real(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    gts, outs = [], []
    for image in (data.astronaut()[100:228, 150:278], data.chelsea()[:128, 100:228]):
        gt = image.astype(np.float64) / 255.0
        noisy = np.clip(gt + rng.normal(0, 25 / 255, gt.shape), 0, 1)
        gts.append(gt)
        outs.append(np.round(noisy * 255) / 255)
    return gts, outs


@pytest.mark.parametrize("make_pairs", [_pairs_random, _pairs_real])
def test_parity_with_scikit_image(make_pairs):
    gts, outs = make_pairs(np.random.default_rng(3))
    scores = metrics.score(_to_tensor(outs), _to_tensor(gts))
    for i, (gt, out) in enumerate(zip(gts, outs)):
        ref = _reference(gt, out)
        assert scores["psnr"][i].item() == pytest.approx(ref["psnr"], abs=1e-4)
        assert scores["psnr_y"][i].item() == pytest.approx(ref["psnr_y"], abs=1e-4)
        assert scores["ssim"][i].item() == pytest.approx(ref["ssim"], abs=1e-4)
        assert scores["ssim_y"][i].item() == pytest.approx(ref["ssim_y"], abs=1e-4)


def test_float32_input_and_per_image_shape():
    rng = np.random.default_rng(0)
    gt = rng.random((2, 3, 16, 24)).astype(np.float32)
    out = gt + rng.normal(0, 0.05, gt.shape).astype(np.float32)
    value = metrics.psnr(torch.from_numpy(out), torch.from_numpy(gt))
    assert value.shape == (2,) and value.dtype == torch.float64
    ref = peak_signal_noise_ratio(gt[1].transpose(1, 2, 0).astype(np.float64),
                                  np.clip(out[1], 0, 1).transpose(1, 2, 0).astype(np.float64), data_range=1.0)
    assert value[1].item() == pytest.approx(ref, abs=1e-4)


def test_y_is_studio_range_and_above_rgb_for_noise():
    rng = np.random.default_rng(1)
    gt = data.astronaut()[:96, :96].astype(np.float64) / 255
    out = gt + rng.normal(0, 15 / 255, gt.shape)
    x, y = _to_tensor([out]), _to_tensor([gt])
    y_white = metrics.rgb_to_y(torch.ones(1, 3, 1, 1, dtype=torch.float64))
    assert y_white.item() == pytest.approx(235.0, abs=1e-3)
    assert metrics.psnr(x, y, y_channel=True).item() > metrics.psnr(x, y).item() + 1.0


def test_identical_images_are_capped_not_infinite():
    image = torch.rand(1, 3, 8, 8)
    assert metrics.psnr(image, image).item() == pytest.approx(metrics.PSNR_CAP_DB)
    assert metrics.ssim(image, image).item() == pytest.approx(1.0)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        metrics.psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="at least 7x7"):
        metrics.ssim(torch.rand(1, 3, 5, 8), torch.rand(1, 3, 5, 8))


def test_convention_and_versions_are_recorded():
    assert "7x7" in metrics.CONVENTION["ssim"] and "BT.601" in metrics.CONVENTION["y"]
    versions = metrics.library_versions()
    assert set(versions) >= {"torch", "scikit-image", "numpy"}
