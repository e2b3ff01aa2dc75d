"""Classical CPU baselines, one per degradation family where a standard method exists.

- noise: OpenCV non-local means (``cv2.fastNlMeansDenoisingColored``), filter strength from the noise level
  recorded in the sample's ``applied`` parameters (an oracle the learned model does not get), else estimated with
  ``skimage.restoration.estimate_sigma``.
- haze: dark channel prior (He, Sun, Tang 2009) with the transmission refined by a guided filter (He et al. 2010).
- lowlight: adaptive gamma (mean luminance to 0.4) followed by CLAHE on the L channel of Lab.

Other families (rain, blur, snow, composite) have no baseline: ``restore`` returns None for them.
All functions take and return uint8 H x W x 3 RGB arrays.
"""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np

NLM_STRENGTH = 0.7          # h = 0.7 * sigma (0-255 scale): a usual setting for colour NLM at sigma 15-50
DCP_OMEGA = 0.95            # keep a trace of haze for depth perception, as in the paper
DCP_T0 = 0.1
LOWLIGHT_TARGET_MEAN = 0.4


def _noise_sigma(image: np.ndarray, applied: list[dict[str, Any]] | None) -> float:
    for step in applied or []:
        if "sigma" in step and "noise" in str(step.get("name", "")):
            return float(step["sigma"])
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(image, channel_axis=-1, average_sigmas=True))


def denoise_nlm(image: np.ndarray, applied: list[dict[str, Any]] | None = None) -> np.ndarray:
    """Non-local means on uint8 H x W x 3 RGB; returns uint8 H x W x 3."""
    sigma = _noise_sigma(image, applied)
    h = max(1.0, NLM_STRENGTH * sigma)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def _box(image: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(image, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Grey guided filter (He et al. 2010). guide, src: float32 H x W in [0, 1]; returns float32 H x W."""
    mean_i, mean_p = _box(guide, radius), _box(src, radius)
    cov_ip = _box(guide * src, radius) - mean_i * mean_p
    var_i = _box(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, radius) * guide + _box(b, radius)


def dehaze_dcp(image: np.ndarray, applied: list[dict[str, Any]] | None = None) -> np.ndarray:
    """Dark channel prior dehazing on uint8 H x W x 3 RGB; returns uint8 H x W x 3."""
    hazy = image.astype(np.float32) / 255.0
    height, width = hazy.shape[:2]
    # The paper's 15 px patch is for ~600 px images; scale it down for small crops.
    patch = int(np.clip(min(height, width) // 20, 3, 15)) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    dark = cv2.erode(hazy.min(axis=2), kernel)
    n_top = max(1, dark.size // 1000)
    top = np.argpartition(dark.ravel(), -n_top)[-n_top:]
    airlight = np.maximum(hazy.reshape(-1, 3)[top].max(axis=0), 1e-3)
    normalised_dark = cv2.erode((hazy / airlight).min(axis=2), kernel)
    transmission = 1.0 - DCP_OMEGA * normalised_dark
    grey = cv2.cvtColor(hazy, cv2.COLOR_RGB2GRAY)
    radius = max(4, min(height, width) // 10)
    transmission = guided_filter(grey, transmission.astype(np.float32), radius, 1e-3)
    transmission = np.maximum(transmission, DCP_T0)[..., None]
    clear = (hazy - airlight) / transmission + airlight
    return (np.clip(clear, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def enhance_lowlight(image: np.ndarray, applied: list[dict[str, Any]] | None = None) -> np.ndarray:
    """Adaptive gamma then CLAHE on uint8 H x W x 3 RGB; returns uint8 H x W x 3."""
    x = image.astype(np.float32) / 255.0
    mean = float(np.clip(x.mean(), 1e-3, 0.99))
    gamma = float(np.clip(np.log(LOWLIGHT_TARGET_MEAN) / np.log(mean), 0.1, 1.0))
    brightened = (np.power(x, gamma) * 255.0 + 0.5).astype(np.uint8)
    lab = cv2.cvtColor(brightened, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=1.5, tileGridSize=(8, 8))
    lab[..., 0] = clahe.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


BASELINES: dict[str, tuple[str, Callable[..., np.ndarray]]] = {
    "noise": ("opencv fastNlMeansDenoisingColored (h=0.7*sigma, 7/21)", denoise_nlm),
    "haze": ("dark channel prior + guided filter", dehaze_dcp),
    "lowlight": ("adaptive gamma + CLAHE (Lab L)", enhance_lowlight),
}


def method_name(family: str) -> str | None:
    """Human-readable name of the baseline for ``family``, or None when the family has none."""
    entry = BASELINES.get(family)
    return entry[0] if entry else None


def restore(image: np.ndarray, family: str, applied: list[dict[str, Any]] | None = None) -> np.ndarray | None:
    """Run the family's classical baseline.

    Args:
        image: degraded uint8 H x W x 3 RGB.
        family: task family (``noise``, ``haze``, ``lowlight``, ...).
        applied: the sample's recorded degradation parameters (used for the noise level).

    Returns:
        uint8 H x W x 3 RGB, or None when the family has no baseline.
    """
    entry = BASELINES.get(family)
    if entry is None:
        return None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"classical baselines take uint8 HxWx3 RGB, got {image.dtype} {image.shape}")
    return entry[1](np.ascontiguousarray(image), applied)
