"""Haze by the atmospheric scattering model I = J·t + A·(1 − t), t = exp(−β·d).

Defaults follow RESIDE OTS / SOTS-outdoor (β ∈ [0.04, 0.2], grey A ∈ [0.8, 1.0]) with depth in the same
arbitrary units, spanning ``near`` to ``far``. Written here, not with albumentations' ``RandomFog`` (white blobs
plus a whole-image blur, no depth, no scattering model). Like the benchmarks, scattering is applied to the sRGB
values directly.
"""

from __future__ import annotations

import numpy as np

from degradations._core import DegradationError, degradation, draw_choice, draw_float
from degradations.depth import DEPTH_PROXIES, normalise_depth


def transmission(depth: np.ndarray, beta: float) -> np.ndarray:
    """t = exp(−β·d): depth H×W (≥ 0, scene units) -> transmission H×W float32 in (0, 1]."""
    return np.exp(-float(beta) * np.asarray(depth, dtype=np.float32)).astype(np.float32)


def scatter(image: np.ndarray, t: np.ndarray, airlight: np.ndarray) -> np.ndarray:
    """I = J·t + A·(1 − t) for J H×W×3, t H×W, A of shape (3,) -> H×W×3 float32."""
    t3 = t[..., None]
    return (image * t3 + airlight.astype(np.float32) * (1.0 - t3)).astype(np.float32)


@degradation("haze")
def haze(image: np.ndarray, rng: np.random.Generator, beta=(0.04, 0.2), airlight=(0.8, 1.0),
         depth="ground_plane", depth_map=None, near=1.0, far=15.0, tint=0.0):
    """Add depth-dependent haze.

    Relative depth in [0, 1] comes from ``depth_map`` when given (any units; normalised by its finite min/max,
    non-finite values count as farthest — pass depth, not disparity), else from the proxy named by ``depth``;
    it is mapped linearly to ``near``..``far`` before t = exp(−β·d).

    Args:
        image: H×W×3 float32 in [0, 1].
        rng: the sample's generator.
        beta: scattering coefficient per depth unit.
        airlight: atmospheric light A (grey level).
        depth: proxy name, "ground_plane", "colour_attenuation" or "random_field" (a list = random choice).
        depth_map: optional H×W array of depth (Python API only; overrides ``depth``).
        near, far: depth of the nearest and farthest point in the units of ``beta``.
        tint: per-channel jitter of A, each channel drawn from A ± tint (0 = grey).

    Returns:
        (H×W×3 float32 in [0, 1], {"beta", "airlight", "airlight_rgb", "depth", "near", "far", "tint",
        "t_min", "t_max", "depth_<proxy field>"...}).
    """
    name = "haze"
    drawn: dict = {
        "beta": draw_float(rng, name, "beta", beta, lo=0.0, hi=100.0),
        "airlight": draw_float(rng, name, "airlight", airlight, lo=0.0, hi=1.0),
        "near": draw_float(rng, name, "near", near, lo=0.0),
        "far": draw_float(rng, name, "far", far, lo=0.0),
        "tint": draw_float(rng, name, "tint", tint, lo=0.0, hi=0.5),
    }
    if drawn["far"] < drawn["near"]:
        raise DegradationError(f"haze: far ({drawn['far']}) must be >= near ({drawn['near']})")
    a_rgb = np.clip(drawn["airlight"] + rng.uniform(-drawn["tint"], drawn["tint"], 3), 0.0, 1.0)
    if depth_map is not None:
        relative = _given_depth(depth_map, image.shape[:2])
        drawn["depth"] = "given"
    else:
        proxy = draw_choice(rng, name, "depth", depth, tuple(DEPTH_PROXIES))
        relative, proxy_drawn = DEPTH_PROXIES[proxy](image, rng)
        drawn["depth"] = proxy
        drawn.update({f"depth_{k}": v for k, v in proxy_drawn.items()})
    d = drawn["near"] + (drawn["far"] - drawn["near"]) * relative
    t = transmission(d, drawn["beta"])
    drawn["airlight_rgb"] = [float(v) for v in a_rgb]
    drawn["t_min"], drawn["t_max"] = float(t.min()), float(t.max())
    return scatter(image, t, a_rgb), drawn


def _given_depth(depth_map: object, shape: tuple[int, int]) -> np.ndarray:
    array = np.asarray(depth_map)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.shape != tuple(shape):
        raise DegradationError(f"haze: depth_map has shape {array.shape}, the image is {tuple(shape)}; "
                               "resize or crop the depth map to the image")
    if not np.issubdtype(array.dtype, np.number):
        raise DegradationError(f"haze: depth_map must be numeric, got dtype {array.dtype}")
    return normalise_depth(array)
