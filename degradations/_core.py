"""Shared plumbing of the degradation functions: image dtype handling, parameter draws, sRGB transfer, kernels.

Every degradation works internally on a float32 H×W×3 copy in [0, 1]; the ``degradation`` decorator converts the
caller's image (uint8 or float in [0, 1]) to that form and back, so the physics modules never see uint8 and never
touch the caller's array.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import cv2
import numpy as np
from scipy import fft as sfft

from sipl.errors import SiplError


class DegradationError(SiplError, ValueError):
    """A degradation step or image that cannot be used; the message names the step, the key and what to do."""


# ------------------------------------------------------------------------------------------- parameter draws

def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def draw_float(rng: np.random.Generator, step: str, key: str, value: Any,
               lo: float = -math.inf, hi: float = math.inf) -> float:
    """A number, or a uniform draw from a two-element ``[low, high]`` range; checked against ``[lo, hi]``."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or not all(_is_number(v) for v in value):
            raise DegradationError(f"{step}.{key}: a range must be two numbers [low, high], got {value!r}")
        a, b = float(value[0]), float(value[1])
        if a > b:
            raise DegradationError(f"{step}.{key}: range [{a}, {b}] has low > high; swap the two values")
        _check_bounds(step, key, a, lo, hi)
        _check_bounds(step, key, b, lo, hi)
        return float(rng.uniform(a, b))
    if not _is_number(value):
        raise DegradationError(f"{step}.{key}: expected a number or a [low, high] range, got {value!r}")
    _check_bounds(step, key, float(value), lo, hi)
    return float(value)


def draw_int(rng: np.random.Generator, step: str, key: str, value: Any, lo: int = 0, hi: int = 2**31) -> int:
    """An integer, or a uniform draw from the inclusive integer range ``[low, high]``."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            raise DegradationError(f"{step}.{key}: a range must be two integers [low, high], got {value!r}")
        a, b = int(value[0]), int(value[1])
        if a > b:
            raise DegradationError(f"{step}.{key}: range [{a}, {b}] has low > high; swap the two values")
        _check_bounds(step, key, a, lo, hi)
        _check_bounds(step, key, b, lo, hi)
        return int(rng.integers(a, b + 1))
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise DegradationError(f"{step}.{key}: expected an integer or an integer range [low, high], got {value!r}")
    _check_bounds(step, key, int(value), lo, hi)
    return int(value)


def draw_choice(rng: np.random.Generator, step: str, key: str, value: Any, choices: Sequence[str]) -> str:
    """One of ``choices``; a list of names is a uniform choice among them."""
    options = list(value) if isinstance(value, (list, tuple)) else [value]
    if not options:
        raise DegradationError(f"{step}.{key}: empty list; give one of {list(choices)} or a list of them")
    for option in options:
        if option not in choices:
            raise DegradationError(f"{step}.{key}: unknown value {option!r}; allowed: {list(choices)}")
    if len(options) == 1:
        return str(options[0])
    return str(options[int(rng.integers(len(options)))])


def _check_bounds(step: str, key: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise DegradationError(f"{step}.{key}: {value} is outside the allowed interval [{lo}, {hi}]")


# ------------------------------------------------------------------------------------------- image handling

def to_working(image: Any, step: str) -> tuple[np.ndarray, np.dtype]:
    """Validate an H×W×3 uint8 / float image and return a fresh float32 copy in [0, 1] plus the input dtype."""
    if not isinstance(image, np.ndarray):
        raise DegradationError(f"{step}: expected a NumPy array H×W×3, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise DegradationError(f"{step}: expected an RGB image of shape H×W×3, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0), image.dtype
    if np.issubdtype(image.dtype, np.floating):
        lo, hi = float(image.min()), float(image.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-3 or hi > 1.0 + 1e-3:
            raise DegradationError(f"{step}: a float image must hold finite values in [0, 1], got [{lo}, {hi}]; "
                                   "divide 8-bit data by 255 or pass it as uint8")
        return np.clip(image, 0.0, 1.0).astype(np.float32), image.dtype
    raise DegradationError(f"{step}: unsupported dtype {image.dtype}; pass uint8 or float32 in [0, 1]")


def from_working(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Clip a float working image to [0, 1] and return it as ``dtype`` (uint8: rounded to nearest)."""
    image = np.clip(image, 0.0, 1.0)
    if dtype == np.uint8:
        return np.rint(image * 255.0).astype(np.uint8)
    return image.astype(dtype, copy=False)


def quantize8(image: np.ndarray) -> np.ndarray:
    """Round a float image in [0, 1] to the 8-bit grid (k/255), staying float32."""
    return (np.rint(np.clip(image, 0.0, 1.0) * 255.0) * (1.0 / 255.0)).astype(np.float32)


Degradation = Callable[..., tuple[np.ndarray, dict]]


def degradation(name: str) -> Callable[[Degradation], Degradation]:
    """Wrap a float32 core ``core(image, rng, **params) -> (image, drawn)`` into the public degradation form.

    The wrapper validates the image, the generator and the parameter names, hands the core a float32 copy in
    [0, 1], converts the result back to the caller's dtype and prefixes the record with ``"name"``.
    """

    def wrap(core: Degradation) -> Degradation:
        allowed = tuple(p for p in inspect.signature(core).parameters if p not in ("image", "rng"))

        @functools.wraps(core)
        def fn(image: np.ndarray, rng: np.random.Generator, **params: Any) -> tuple[np.ndarray, dict]:
            check_params(name, params, allowed)
            if not isinstance(rng, np.random.Generator):
                raise DegradationError(f"{name}: rng must be a numpy.random.Generator "
                                       f"(e.g. np.random.default_rng(seed)), got {type(rng).__name__}")
            work, dtype = to_working(image, name)
            out, drawn = core(work, rng, **params)
            return from_working(out, dtype), {"name": name, **drawn}

        fn.degradation_name = name  # type: ignore[attr-defined]
        fn.allowed_params = allowed  # type: ignore[attr-defined]
        return fn

    return wrap


def check_params(name: str, params: dict, allowed: Sequence[str]) -> None:
    """Fail naming the step and its allowed parameters when ``params`` holds an unknown key."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise DegradationError(f"degradation {name!r}: unknown parameter(s) {unknown}; "
                               f"allowed: {sorted(allowed)}")


# ----------------------------------------------------------------------------------------- colour transfer

def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB decoding: float in [0, 1] -> linear light in [0, 1] (float32)."""
    x = np.asarray(image, dtype=np.float32)
    # cv2.pow is several times faster than np.power; the linear toe is patched in afterwards (few pixels)
    out = cv2.pow((x + np.float32(0.055)) * np.float32(1 / 1.055), 2.4)
    toe = x <= 0.04045
    out[toe] = x[toe] * np.float32(1 / 12.92)
    return out


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    """sRGB encoding: linear light (clipped to [0, 1]) -> sRGB values in [0, 1] (float32)."""
    x = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    out = cv2.pow(np.maximum(x, np.float32(1e-6)), 1 / 2.4)  # no subnormal inputs (slow); the toe is patched below
    out *= np.float32(1.055)
    out -= np.float32(0.055)
    toe = x <= 0.0031308
    out[toe] = x[toe] * np.float32(12.92)
    return out


LUMA_709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def luminance(linear: np.ndarray) -> np.ndarray:
    """Relative luminance (Rec. 709 weights) of a linear-light H×W×3 image -> H×W float32."""
    return np.asarray(linear, dtype=np.float32) @ LUMA_709


# ------------------------------------------------------------------------------------------------- kernels

FFT_MIN_KERNEL = 12  # OpenCV's direct filter2D beats an FFT below roughly this kernel side


def convolve(image: np.ndarray, kernel: np.ndarray, border: str = "reflect") -> np.ndarray:
    """2-D convolution (not correlation) of an H×W or H×W×C float32 image with a K×K kernel, same-size output.

    ``border``: "reflect" (OpenCV's BORDER_REFLECT_101, keeps the mean) or "constant" (zeros outside). Large
    kernels go through a real FFT (scipy.fft), which is several times faster than OpenCV's direct filter2D."""
    mode = cv2.BORDER_REFLECT_101 if border == "reflect" else cv2.BORDER_CONSTANT
    kernel = np.asarray(kernel, dtype=np.float32)
    image = np.asarray(image, dtype=np.float32)
    kh, kw = kernel.shape
    if max(kh, kw) < FFT_MIN_KERNEL:
        return cv2.filter2D(image, -1, cv2.flip(kernel, -1), borderType=mode)
    ry, rx = kh // 2, kw // 2
    padded = cv2.copyMakeBorder(image, ry, kh - 1 - ry, rx, kw - 1 - rx, mode, value=0)
    planes = padded[None] if padded.ndim == 2 else np.ascontiguousarray(padded.transpose(2, 0, 1))
    shape = (sfft.next_fast_len(planes.shape[1] + kh - 1, real=True),
             sfft.next_fast_len(planes.shape[2] + kw - 1, real=True))
    spectrum = sfft.rfft2(planes, s=shape)
    spectrum *= sfft.rfft2(kernel, s=shape)
    full = sfft.irfft2(spectrum, s=shape)
    h, w = image.shape[:2]
    out = full[:, kh - 1:kh - 1 + h, kw - 1:kw - 1 + w]
    return np.ascontiguousarray(out[0] if image.ndim == 2 else out.transpose(1, 2, 0), dtype=np.float32)

def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Anti-aliased straight line of ``length`` px through the kernel centre, ``angle_deg`` from vertical
    (positive leans the top to the right). Weights ≈ 1 along the line, so a point becomes a streak of its own
    brightness; K×K float32 with K odd."""
    length = max(float(length), 1.0)
    half = length / 2.0
    size = 2 * int(math.ceil(half)) + 3
    c = size // 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx -= c
    yy -= c
    theta = math.radians(angle_deg)
    dx, dy = math.sin(theta), -math.cos(theta)  # unit direction; image y grows downwards
    along = xx * dx + yy * dy
    across = np.abs(xx * dy - yy * dx)
    # distance to the segment [-half, half] along the direction, then a one-pixel tent profile
    beyond = np.maximum(np.abs(along) - half, 0.0)
    dist = np.sqrt(across * across + beyond * beyond)
    return np.clip(1.0 - dist, 0.0, 1.0).astype(np.float32)


def smooth_field(rng: np.random.Generator, height: int, width: int, scale: float, octaves: int = 3) -> np.ndarray:
    """Smooth random field H×W float32 with zero mean and unit standard deviation.

    Sum of ``octaves`` bicubically upsampled white-noise grids, the coarsest with cells of ``scale`` px and each
    finer one at half the cell size and half the amplitude (a plasma-like 1/f field)."""
    field = np.zeros((height, width), dtype=np.float32)
    cell, amp = max(float(scale), 2.0), 1.0
    for _ in range(octaves):
        gh, gw = int(math.ceil(height / cell)) + 2, int(math.ceil(width / cell)) + 2
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        up = cv2.resize(grid, (int(round(gw * cell)), int(round(gh * cell))), interpolation=cv2.INTER_CUBIC)
        field += amp * up[:height, :width]
        cell, amp = max(cell / 2.0, 2.0), amp / 2.0
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field
