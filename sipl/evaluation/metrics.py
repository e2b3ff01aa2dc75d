"""PSNR and SSIM with the all-in-one restoration field's conventions, in torch, one value per image.

RGB (the default): the restored image and the ground truth are clipped to [0, 1] and scored with data range 1,
exactly as ``skimage.metrics.peak_signal_noise_ratio(gt, out, data_range=1)`` and
``skimage.metrics.structural_similarity(gt, out, data_range=1, channel_axis=-1)`` (uniform 7x7 window, sample
covariance, K1=0.01, K2=0.03, mean over the window-valid region, then over channels): the convention of AirNet,
PromptIR, AdaIR and OneRestore. The restored output is not quantised to 8 bits before scoring.

Y (``y_channel=True``): BT.601 studio-range luma from RGB as BasicSR and scikit-image's ``rgb2ycbcr`` define it,
Y = 16 + 65.481 R + 128.553 G + 24.966 B (0-255 scale, 16-235), scored with data range 255 (PSNR) and the same
7x7 uniform SSIM on Y. Y numbers sit above RGB ones (about +1.3 dB from the studio range alone) and are only
comparable with papers that report Y (single-task deraining).

Computed in float64; identical images give PSNR capped at ``PSNR_CAP_DB`` (scikit-image returns inf, which JSON
cannot hold). Averages over a set are plain means of the per-image values (never pooled MSE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
PSNR_CAP_DB = 100.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0

CONVENTION = {
    "color": "RGB, output and ground truth clipped to [0,1], data_range=1; output not quantised",
    "psnr": "per image 10*log10(1/MSE) over all pixels and channels, float64 (= skimage peak_signal_noise_ratio, "
            f"data_range=1), capped at {PSNR_CAP_DB:g} dB; set value = mean of per-image PSNR",
    "ssim": "skimage structural_similarity(data_range=1, channel_axis=-1) defaults: uniform 7x7 window, "
            "gaussian_weights=False, use_sample_covariance=True, K1=0.01, K2=0.03, mean over the valid region "
            "then over channels (AirNet/PromptIR/AdaIR/OneRestore convention)",
    "y": "BT.601 studio range from RGB (BasicSR rgb2ycbcr / skimage rgb2ycbcr): Y=16+65.481R+128.553G+24.966B "
         "on the 0-255 scale; psnr_y with data_range=255, ssim_y = the same 7x7 uniform SSIM on Y (data_range=255)",
    "crop": "none at scoring time; evaluation images are already centre-cropped to multiples of 16 when sharded",
    "averaging": "per image, then mean per task; groups are plain means of task means",
}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that define the numbers (recorded in every metrics file)."""
    import cv2
    import numpy
    import skimage

    return {"torch": torch.__version__, "numpy": numpy.__version__, "scikit-image": skimage.__version__,
            "opencv": cv2.__version__}


def _check_pair(x: torch.Tensor, y: torch.Tensor, min_side: int = 1) -> None:
    if x.shape != y.shape:
        raise ValueError(f"restored and ground-truth shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected N x 3 x H x W tensors, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < min_side:
        raise ValueError(f"images must be at least {min_side}x{min_side} pixels for this metric, "
                         f"got {tuple(x.shape[-2:])}")


def _prepare(x: torch.Tensor, y: torch.Tensor, y_channel: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Clip to [0, 1] in float64; optionally convert to BT.601 Y (N x 1 x H x W, 0-255). Returns (x, y, range)."""
    x = x.detach().to(torch.float64).clamp(0.0, 1.0)
    y = y.detach().to(torch.float64).clamp(0.0, 1.0)
    if not y_channel:
        return x, y, 1.0
    return rgb_to_y(x), rgb_to_y(y), 255.0


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """BT.601 studio-range luma.

    Args:
        image: N x 3 x H x W, RGB in [0, 1].

    Returns:
        N x 1 x H x W, Y on the 0-255 scale (16-235 for inputs in [0, 1]), same dtype.
    """
    weights = torch.tensor(_Y_WEIGHTS, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * weights).sum(dim=1, keepdim=True) + _Y_OFFSET


def psnr(x: torch.Tensor, y: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    Args:
        x: restored images, N x 3 x H x W, float, nominally [0, 1] (clipped here).
        y: ground truth, same shape, [0, 1].
        y_channel: score BT.601 Y (0-255, data range 255) instead of RGB (data range 1).

    Returns:
        float64 tensor of shape (N,), capped at ``PSNR_CAP_DB``.
    """
    _check_pair(x, y)
    x, y, data_range = _prepare(x, y, y_channel)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    floor = data_range**2 * 10 ** (-PSNR_CAP_DB / 10)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(floor))


def ssim(x: torch.Tensor, y: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """Structural similarity per image with scikit-image's default (uniform 7x7) convention.

    Args:
        x: restored images, N x 3 x H x W, float, nominally [0, 1] (clipped here); H, W >= 7.
        y: ground truth, same shape, [0, 1].
        y_channel: score BT.601 Y (data range 255) instead of the mean over R, G, B (data range 1).

    Returns:
        float64 tensor of shape (N,), in [-1, 1].
    """
    _check_pair(x, y, min_side=SSIM_WINDOW)
    x, y, data_range = _prepare(x, y, y_channel)
    n_px = SSIM_WINDOW**2
    cov_norm = n_px / (n_px - 1)

    channels = x.shape[1]
    # One separable, stride-1, unpadded box filter over the five moment maps: it yields exactly the region
    # scikit-image keeps after cropping the window radius.
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    moments = F.avg_pool2d(F.avg_pool2d(moments, (SSIM_WINDOW, 1), stride=1), (1, SSIM_WINDOW), stride=1)
    ux, uy, uxx, uyy, uxy = moments.split(channels, dim=1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    # skimage averages each channel's map, then the channel means: equal to one mean over (C, H', W').
    return s_map.flatten(1).mean(dim=1)


def score(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """All four per-image numbers at once: {"psnr", "ssim", "psnr_y", "ssim_y"}, each a float64 tensor (N,)."""
    return {"psnr": psnr(x, y), "ssim": ssim(x, y), "psnr_y": psnr(x, y, y_channel=True),
            "ssim_y": ssim(x, y, y_channel=True)}

