"""Procedural rain streaks (the "noise -> motion blur" generator behind Rain100L-style data), in layers for depth.

Written here rather than with albumentations' ``RandomRain`` (polylines of one length, whole-image darkening, no
depth layers). Blending is additive in sRGB by default, as the benchmark datasets do; "screen" never saturates.
"""

from __future__ import annotations

import cv2
import numpy as np

from degradations._core import convolve, degradation, draw_choice, draw_float, draw_int, line_kernel

BLENDS = ("additive", "screen")
VEIL_LIGHT = 0.9  # grey level of the rain veil (accumulated drops scattering daylight)
CORE_THRESHOLD = 0.25  # "levels": keep only the bright cores of the smeared drops


def streak_layer(rng: np.random.Generator, shape: tuple[int, int], density: float, length: float,
                 angle: float, width: float, softness: float) -> np.ndarray:
    """One layer of streaks, H×W float32 in [0, 1].

    Sparse noise (a fraction ``density`` of pixels, brightness U(0.5, 1)) is drawn at 1/``width`` resolution,
    smeared along a line of ``length``/``width`` px at ``angle`` degrees from vertical, thresholded to its cores,
    upscaled (``width`` px thick streaks) and softened by a Gaussian of σ = ``softness`` px."""
    h, w = shape
    sh, sw = max(1, int(round(h / width))), max(1, int(round(w / width)))
    r = rng.random((sh, sw), dtype=np.float32)
    seeds = np.where(r < density, 0.5 + 0.5 * r / np.float32(max(density, 1e-12)), 0.0).astype(np.float32)
    streaks = convolve(seeds, line_kernel(length / width, angle), border="constant")
    streaks = np.clip((streaks - CORE_THRESHOLD) / (1.0 - CORE_THRESHOLD), 0.0, 1.0)
    if (sh, sw) != (h, w):
        streaks = cv2.resize(streaks, (w, h), interpolation=cv2.INTER_LINEAR)
    if softness > 0:
        streaks = cv2.GaussianBlur(streaks, (0, 0), softness)
    return streaks


@degradation("rain")
def rain(image: np.ndarray, rng: np.random.Generator, density=(0.002, 0.01), length=(10.0, 40.0),
         angle=(-30.0, 30.0), layers=(1, 3), opacity=(0.5, 0.9), width=(1.0, 2.0), blend="additive",
         veil=0.0, brightness=1.0):
    """Add rain streaks.

    Layers go from far to near: layer k of n (f = (k+1)/n) has density·(1.5 − f) seeds, length·(0.4 + 0.6f),
    thickness 1 + (width − 1)·f, opacity·(0.5 + 0.5f) and softness 0.4 + 0.4f px; the angle varies by a small
    per-layer jitter (N(0, 2°)). Heavy rain: ``veil`` mixes toward a grey 0.9 as I ← (1 − veil)·I + veil·0.9,
    ``brightness`` < 1 darkens the background first (overcast sky).

    Args:
        image: H×W×3 float32 in [0, 1].
        rng: the sample's generator.
        density: fraction of pixels seeding a streak (farthest layer scale).
        length: streak length of the nearest layer, px.
        angle: streak slant from vertical, degrees (positive: top to the right).
        layers: number of depth layers (integer).
        opacity: streak brightness of the nearest layer.
        width: streak thickness of the nearest layer, px.
        blend: "additive" (clip(B + R), benchmark parity) or "screen" (1 − (1 − B)(1 − R)).
        veil: amount of grey veil in [0, 1).
        brightness: background multiplier in (0, 1].

    Returns:
        (H×W×3 float32 in [0, 1], {drawn scalars..., "layer_angles"}).
    """
    name = "rain"
    drawn: dict = {
        "density": draw_float(rng, name, "density", density, lo=0.0, hi=0.5),
        "length": draw_float(rng, name, "length", length, lo=1.0, hi=1024.0),
        "angle": draw_float(rng, name, "angle", angle, lo=-90.0, hi=90.0),
        "layers": draw_int(rng, name, "layers", layers, lo=1, hi=8),
        "opacity": draw_float(rng, name, "opacity", opacity, lo=0.0, hi=1.0),
        "width": draw_float(rng, name, "width", width, lo=1.0, hi=8.0),
        "blend": draw_choice(rng, name, "blend", blend, BLENDS),
        "veil": draw_float(rng, name, "veil", veil, lo=0.0, hi=0.99),
        "brightness": draw_float(rng, name, "brightness", brightness, lo=0.01, hi=1.0),
    }
    h, w = image.shape[:2]
    n = drawn["layers"]
    jitter = rng.normal(0.0, 2.0, n)
    streaks = np.zeros((h, w), dtype=np.float32)
    for k in range(n):
        f = (k + 1) / n
        layer = streak_layer(rng, (h, w), drawn["density"] * (1.5 - f), drawn["length"] * (0.4 + 0.6 * f),
                             drawn["angle"] + float(jitter[k]), 1.0 + (drawn["width"] - 1.0) * f, 0.4 + 0.4 * f)
        streaks += np.float32(drawn["opacity"] * (0.5 + 0.5 * f)) * layer
    np.clip(streaks, 0.0, 1.0, out=streaks)
    background = image * np.float32(drawn["brightness"])
    r = streaks[..., None]
    out = background + r if drawn["blend"] == "additive" else 1.0 - (1.0 - background) * (1.0 - r)
    if drawn["veil"] > 0:
        out = (1.0 - drawn["veil"]) * np.clip(out, 0.0, 1.0) + drawn["veil"] * VEIL_LIGHT
    drawn["layer_angles"] = [float(drawn["angle"] + j) for j in jitter]
    return out.astype(np.float32), drawn
