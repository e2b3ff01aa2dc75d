"""Falling snow: soft flakes of several sizes in depth layers, motion-streaked, alpha-composited toward white.

Written here (albumentations' ``RandomSnow`` only brightens pixels above a threshold: no flakes). The composite is
I·(1 − M) + c·M with a white flake colour, as CDD-11 (OneRestore) composites its Snow100K masks.
"""

from __future__ import annotations

import cv2
import numpy as np

from degradations._core import convolve, degradation, draw_float, draw_int, line_kernel

FLAKE_GAIN = 1.6  # > 1 flattens flake tops: solid cores with soft rims


def flake_kernel(radius: float, length: float, angle: float) -> np.ndarray:
    """The footprint of one flake of ``radius`` px moving ``length`` px at ``angle``° from vertical during the
    exposure: a line convolved with a Gaussian of σ = radius, scaled to peak 1 (K×K float32)."""
    pad = int(np.ceil(3 * radius)) + 1
    line = line_kernel(length, angle) if length >= 1.0 else np.ones((1, 1), np.float32)
    line = cv2.copyMakeBorder(line, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    kernel = cv2.GaussianBlur(line, (0, 0), max(radius, 0.3))
    return kernel / kernel.max()


@degradation("snow")
def snow(image: np.ndarray, rng: np.random.Generator, density=(0.001, 0.004), size=(1.5, 4.0), layers=3,
         angle=(-30.0, 30.0), length=(0.0, 8.0), opacity=(0.8, 1.0), colour=1.0):
    """Add falling snow.

    Layer k of n (far to near, f = (k+1)/n) has density·(1.2 − f) flakes per pixel, radius size·(0.2 + 0.8f),
    streak length length·f and opacity opacity·(0.6 + 0.4f); masks are merged as M = 1 − Π(1 − M_k).

    Args:
        image: H×W×3 float32 in [0, 1].
        rng: the sample's generator.
        density: flakes per pixel (farthest-layer scale).
        size: radius of the nearest flakes, px.
        layers: number of depth layers (integer).
        angle: fall direction from vertical, degrees.
        length: motion streak of the nearest flakes, px (0 = round flakes).
        opacity: opacity of the nearest flakes.
        colour: flake grey level (1 = white).

    Returns:
        (H×W×3 float32 in [0, 1], {drawn scalars..., "coverage"}) where coverage is the mean of M.
    """
    name = "snow"
    drawn: dict = {
        "density": draw_float(rng, name, "density", density, lo=0.0, hi=0.5),
        "size": draw_float(rng, name, "size", size, lo=0.1, hi=64.0),
        "layers": draw_int(rng, name, "layers", layers, lo=1, hi=8),
        "angle": draw_float(rng, name, "angle", angle, lo=-90.0, hi=90.0),
        "length": draw_float(rng, name, "length", length, lo=0.0, hi=256.0),
        "opacity": draw_float(rng, name, "opacity", opacity, lo=0.0, hi=1.0),
        "colour": draw_float(rng, name, "colour", colour, lo=0.0, hi=1.0),
    }
    h, w = image.shape[:2]
    n = drawn["layers"]
    clear = np.ones((h, w), dtype=np.float32)  # Π(1 − M_k)
    for k in range(n):
        f = (k + 1) / n
        p = drawn["density"] * (1.2 - f)
        r = rng.random((h, w), dtype=np.float32)
        seeds = np.where(r < p, 0.7 + 0.3 * r / np.float32(max(p, 1e-12)), 0.0).astype(np.float32)
        kernel = flake_kernel(drawn["size"] * (0.2 + 0.8 * f), drawn["length"] * f, drawn["angle"])
        mask = convolve(seeds, kernel, border="constant")
        mask = np.float32(drawn["opacity"] * (0.6 + 0.4 * f)) * np.clip(mask * np.float32(FLAKE_GAIN), 0.0, 1.0)
        clear *= 1.0 - mask
    m = (1.0 - clear)[..., None]
    drawn["coverage"] = float(m.mean())
    return (image * (1.0 - m) + np.float32(drawn["colour"]) * m).astype(np.float32), drawn
