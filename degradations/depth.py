"""Depth proxies for haze synthesis when no depth map is available.

Each proxy is ``proxy(image, rng) -> (depth, drawn)`` with ``image`` H×W×3 float32 sRGB in [0, 1] and ``depth``
H×W float32 relative depth in [0, 1] (0 = nearest, 1 = farthest); ``drawn`` records its random choices.
"""

from __future__ import annotations

import cv2
import numpy as np

from degradations._core import DegradationError, smooth_field

# Zhu, Mai & Shao, "A fast single image haze removal algorithm using colour attenuation prior" (TIP 2015)
CAP_THETA = (0.121779, 0.959710, -0.780245)
CAP_SIGMA = 0.041337


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """Map a depth map of any units to [0, 1] by its finite min and max; non-finite values count as farthest.

    A constant map gives all zeros (uniform, homogeneous haze)."""
    depth = np.asarray(depth, dtype=np.float64)
    finite = np.isfinite(depth)
    if not finite.any():
        raise DegradationError("haze: the depth map has no finite value")
    lo, hi = float(depth[finite].min()), float(depth[finite].max())
    out = np.ones(depth.shape, dtype=np.float32)
    out[finite] = (depth[finite] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of ``src`` (H×W float32) steered by the grey ``guide`` (He et al. 2010)."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(src)
    cov_ip = box(guide * src) - mean_i * mean_p
    var_i = box(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def ground_plane(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Outdoor-scene prior: a ground plane below a random, slightly tilted horizon and sky (farthest) above it.

    Below the horizon the distance falls off as 1/(y − y_h) (a flat ground seen in perspective), reaching 0.1 of
    the far depth at the bottom row; a smooth random field (±15 %, log scale) breaks up the bands."""
    h, w = image.shape[:2]
    horizon = float(rng.uniform(0.15, 0.6))
    tilt = float(rng.uniform(-0.15, 0.15))
    ys = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    xs = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    y_h = horizon + tilt * (xs - 0.5)
    below = np.maximum(ys - y_h, 1e-6)
    depth = np.minimum(0.1 * (1.0 - horizon) / below, 1.0)
    field = smooth_field(rng, h, w, scale=max(h, w) / 4.0)
    depth = np.clip(depth * np.exp(0.15 * field), 0.0, 1.0)
    sigma = max(h, w) / 100.0
    depth = cv2.GaussianBlur(depth.astype(np.float32), (0, 0), sigma)
    return depth.astype(np.float32), {"horizon": horizon, "tilt": tilt}


def colour_attenuation(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Colour Attenuation Prior: depth ≈ θ0 + θ1·V + θ2·S + ε (bright and desaturated = far).

    Then a local minimum filter (removes white-object outliers) and a guided filter against the grey image, then
    min-max normalisation. The prior was fitted on hazy images; on clean ones it is a heuristic, good for skies."""
    h, w = image.shape[:2]
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    value, saturation = hsv[..., 2], hsv[..., 1]
    noise = rng.standard_normal((h, w)).astype(np.float32) * np.float32(CAP_SIGMA)
    depth = CAP_THETA[0] + CAP_THETA[1] * value + CAP_THETA[2] * saturation + noise
    radius = max(1, min(h, w) // 64)
    depth = cv2.erode(depth.astype(np.float32), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8),
                      borderType=cv2.BORDER_REFLECT)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    depth = guided_filter(grey, depth, radius=max(2, min(h, w) // 32), eps=1e-3)
    return normalise_depth(depth), {"min_radius": int(radius)}


def random_field(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Density without geometry: a smooth plasma-like random field scaled to [0, 1] (patchy fog)."""
    h, w = image.shape[:2]
    scale = float(rng.uniform(0.25, 1.0)) * max(h, w)
    field = smooth_field(rng, h, w, scale=scale)
    return normalise_depth(field), {"scale": scale / max(h, w)}


DEPTH_PROXIES = {
    "ground_plane": ground_plane,
    "colour_attenuation": colour_attenuation,
    "random_field": random_field,
}
