"""Low light: darkening and sensor noise in linear RGB (Lv et al. 2021 darkening, Brooks et al. 2019 noise).

inverse sRGB -> β·(α·I)^γ -> Poisson–Gaussian noise -> sRGB -> 8-bit quantisation (shadow banding is part of
the look). Written here: no library offers this chain (albumentations' ``RandomGamma`` / ``RandomBrightnessContrast``
work in sRGB and add no signal-dependent noise).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from degradations._core import (DegradationError, degradation, draw_float, linear_to_srgb, quantize8,
                                srgb_to_linear)

# unprocessing's fit of read-noise against shot-noise level (natural logs): ln(read) = 2.18 ln(shot) + 1.20 + N(0, 0.26)
READ_SLOPE, READ_INTERCEPT, READ_SPREAD = 2.18, 1.20, 0.26


def darken(linear: np.ndarray, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """β·(α·I)^γ on a linear-light image (float32 in [0, 1])."""
    # flooring the base keeps the power's results >= 1e-20: subnormal floats make pow and later ops ~10x slower,
    # and anything under the floor is far below one 8-bit level
    base = np.maximum(np.float32(alpha) * linear, np.float32(10.0 ** (-20.0 / gamma)))
    return (np.float32(beta) * cv2.pow(base, float(gamma))).astype(np.float32)


def poisson_gaussian(rng: np.random.Generator, linear: np.ndarray, shot: float, read: float) -> np.ndarray:
    """Heteroscedastic Gaussian approximation of Poisson–Gaussian sensor noise: variance = shot·x + read.

    Returns the noisy linear image clipped to [0, 1] (float32)."""
    noise = rng.standard_normal(linear.shape, dtype=np.float32)
    variance = linear * np.float32(shot)
    variance += np.float32(read)
    np.maximum(variance, 0.0, out=variance)
    noise *= np.sqrt(variance, out=variance)
    noise += linear
    return np.clip(noise, 0.0, 1.0, out=noise)


@degradation("low_light")
def low_light(image: np.ndarray, rng: np.random.Generator, alpha=(0.9, 1.0), beta=(0.5, 1.0), gamma=(1.5, 5.0),
              shot_log10=(-4.0, -1.92), read_log10=None, quantize=True):
    """Darken an image as a short exposure would and add sensor noise, in linear light.

    Because the power law commutes with the sRGB curve (≈ gamma 2.2), γ acts on the sRGB values much as in Lv et
    al.; β scales the linear radiance, i.e. the mean linear luminance of the noise-free result is β·mean((α·Y)^γ).
    Shot level is log-uniform in [1e-4, 1.2e-2] (variance per unit signal); the read variance follows
    unprocessing's fit unless ``read_log10`` is given.

    Args:
        image: H×W×3 float32 in [0, 1].
        rng: the sample's generator.
        alpha, beta, gamma: darkening β·(α·I)^γ.
        shot_log10: log10 of the shot-noise variance factor.
        read_log10: log10 of the read-noise variance; null = derived from the shot level.
        quantize: round the result to 8-bit levels even for float output.

    Returns:
        (H×W×3 float32 in [0, 1], {"alpha", "beta", "gamma", "shot_log10", "read_log10", "quantize"}).
    """
    name = "low_light"
    drawn: dict = {
        "alpha": draw_float(rng, name, "alpha", alpha, lo=0.0, hi=1.0),
        "beta": draw_float(rng, name, "beta", beta, lo=0.0, hi=1.0),
        "gamma": draw_float(rng, name, "gamma", gamma, lo=0.1, hi=10.0),
        "shot_log10": draw_float(rng, name, "shot_log10", shot_log10, lo=-12.0, hi=0.0),
    }
    if read_log10 is None:
        ln_read = READ_SLOPE * math.log(10.0 ** drawn["shot_log10"]) + READ_INTERCEPT + rng.normal(0.0, READ_SPREAD)
        drawn["read_log10"] = float(ln_read / math.log(10.0))
    else:
        drawn["read_log10"] = draw_float(rng, name, "read_log10", read_log10, lo=-16.0, hi=0.0)
    if not isinstance(quantize, bool):
        raise DegradationError(f"low_light.quantize: expected true or false, got {quantize!r}")
    drawn["quantize"] = quantize
    dark = darken(srgb_to_linear(image), drawn["alpha"], drawn["beta"], drawn["gamma"])
    noisy = poisson_gaussian(rng, dark, 10.0 ** drawn["shot_log10"], 10.0 ** drawn["read_log10"])
    out = linear_to_srgb(noisy)
    return (quantize8(out) if quantize else out), drawn
