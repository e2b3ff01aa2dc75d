"""Additive white Gaussian noise, the recipe of the all-in-one benchmarks (AirNet / PromptIR / AdaIR / MoCE-IR).

Written in NumPy rather than with albumentations' ``GaussNoise``: the benchmarks' truncating 8-bit quantisation
(a ≈ −0.5 DN bias that the published numbers include) is part of the recipe and albumentations rounds instead.
"""

from __future__ import annotations

import numpy as np

from degradations._core import degradation, draw_choice, draw_float

QUANTIZE_MODES = ("truncate", "round")


@degradation("gaussian_noise")
def gaussian_noise(image: np.ndarray, rng: np.random.Generator, sigma=25.0, quantize="truncate"):
    """Add white Gaussian noise of standard deviation ``sigma`` on the 0–255 scale, clip, quantise to 8 bits.

    The image is taken on the 0–255 grid: uint8 as is, float input as ``round(x * 255)``, so a float image and its
    uint8 twin give identical results. Noise is drawn per pixel and channel in float64 and added; the sum is
    clipped to [0, 255] and quantised. ``quantize="truncate"`` (the field's ``.astype(np.uint8)``, default) rounds
    toward zero, ``"round"`` to nearest (unbiased). Float output lies on the k/255 grid.

    Args:
        image: H×W×3 float32 in [0, 1] (the decorator's working copy).
        rng: the sample's generator.
        sigma: noise standard deviation in 0–255 units (e.g. 15, 25, 50), or a [low, high] range.
        quantize: "truncate" or "round".

    Returns:
        (H×W×3 float32 in [0, 1], {"sigma", "quantize"}).
    """
    s = draw_float(rng, "gaussian_noise", "sigma", sigma, lo=0.0, hi=255.0)
    mode = draw_choice(rng, "gaussian_noise", "quantize", quantize, QUANTIZE_MODES)
    base = np.rint(image.astype(np.float64) * 255.0)
    noisy = base + rng.standard_normal(base.shape) * s
    np.clip(noisy, 0.0, 255.0, out=noisy)
    # after clipping every value is >= 0, so floor equals truncation toward zero
    levels = np.floor(noisy) if mode == "truncate" else np.rint(noisy)
    return (levels * (1.0 / 255.0)).astype(np.float32), {"sigma": s, "quantize": mode}
