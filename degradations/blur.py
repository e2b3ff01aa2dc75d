"""Camera-shake motion blur from random trajectories, applied in linear light.

The trajectory follows Boracchi & Foi (2012) as used by DeblurGAN: a point moves at constant speed while its
velocity is perturbed by Gaussian shake, pulled back toward the start (centripetal inertia) and, rarely, jerked
into a near reversal. Written here rather than taken from albumentations / kornia, whose motion blur is a straight
line only. The kernel is the trajectory rasterised with bilinear (sub-pixel) weights and normalised to sum 1, never
min-max, so blur keeps the image's mean radiance.
"""

from __future__ import annotations

import math

import numpy as np

from degradations._core import convolve, degradation, draw_float, linear_to_srgb, srgb_to_linear

TRAJECTORY_POINTS = 128


def trajectory(rng: np.random.Generator, length: float, shake: float, inertia: float, jerk: float,
               points: int = TRAJECTORY_POINTS) -> np.ndarray:
    """Random camera path of ``points`` positions (complex x + iy, px) and total arc length ``length``.

    Args:
        length: path length in px.
        shake: rms change of direction over the whole exposure (radians) from Gaussian shake.
        inertia: strength of the pull back toward the starting point (0 = none, ~1 = curls around).
        jerk: probability per sample point of an abrupt near-reversal (a "big shake").

    Returns:
        complex128 array (points,), starting at 0.
    """
    n = points - 1
    # every random number is drawn up front, in a fixed order, so the count never depends on the values
    angle0 = rng.uniform(0.0, 2.0 * math.pi)
    gauss = rng.standard_normal((n, 2))
    jumps = rng.random(n) < jerk
    turn = rng.uniform(-0.5, 0.5, n)
    step = length / n
    per_step_shake = shake / math.sqrt(n)
    pull = inertia * 8.0 / max(length, 1e-6) / n  # per-step turning gain toward the start
    x = np.zeros(points, dtype=np.complex128)
    v = complex(math.cos(angle0), math.sin(angle0))
    pos = 0j
    for t in range(n):
        if jumps[t]:
            v = -v * complex(math.cos(turn[t]), math.sin(turn[t]))
        v = v + per_step_shake * complex(gauss[t, 0], gauss[t, 1]) - pull * pos
        v = v / abs(v) if abs(v) > 0 else complex(1.0, 0.0)
        pos = pos + step * v
        x[t + 1] = pos
    return x


def rasterise(path: np.ndarray) -> np.ndarray:
    """Splat a trajectory with bilinear weights onto an odd K×K grid centred on its time-average position.

    Centring on the centroid keeps the blurred image registered with the sharp one (no net shift).

    Returns:
        K×K float32 kernel, non-negative, sums to 1.
    """
    centred = path - path.mean()
    radius = float(np.max(np.abs(np.concatenate([centred.real, centred.imag]))))
    half = int(math.ceil(radius)) + 1
    size = 2 * half + 1
    px, py = centred.real + half, centred.imag + half
    x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    fx, fy = px - x0, py - y0
    kernel = np.zeros(size * size, dtype=np.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy) * size + (x0 + dx), w)
    kernel = kernel.reshape(size, size)
    return (kernel / kernel.sum()).astype(np.float32)


def blur_linear(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve an sRGB image (H×W×3 float32 in [0, 1]) with ``kernel`` in linear light; returns sRGB float32.

    Borders are reflected (OpenCV's BORDER_REFLECT_101), which keeps the mean close to the input's."""
    linear = srgb_to_linear(image)
    blurred = convolve(linear, kernel, border="reflect")
    return linear_to_srgb(blurred)


@degradation("motion_blur")
def motion_blur(image: np.ndarray, rng: np.random.Generator, length=(5.0, 25.0), shake=(0.0, 2.0),
                inertia=(0.0, 0.7), jerk=(0.0, 0.02), noise=0.0):
    """Blur with a random camera-shake kernel in linear light (inverse sRGB -> convolve -> sRGB), then
    optionally add mild Gaussian noise in sRGB.

    Linear light makes highlights bloom as in frame-averaged blur datasets (GoPro). Defaults give kernels of
    about 5–25 px path length, from straight lines to curls and jerks.

    Args:
        image: H×W×3 float32 in [0, 1].
        rng: the sample's generator.
        length: trajectory length in px.
        shake: rms direction change over the exposure, radians.
        inertia: centripetal pull toward the start (0 = none).
        jerk: probability per trajectory sample of an abrupt reversal.
        noise: standard deviation of the noise added after blurring, 0–255 scale (0 = none).

    Returns:
        (H×W×3 float32 in [0, 1], {"length", "shake", "inertia", "jerk", "noise", "kernel_size"}).
    """
    name = "motion_blur"
    drawn = {
        "length": draw_float(rng, name, "length", length, lo=1.0, hi=512.0),
        "shake": draw_float(rng, name, "shake", shake, lo=0.0, hi=20.0),
        "inertia": draw_float(rng, name, "inertia", inertia, lo=0.0, hi=10.0),
        "jerk": draw_float(rng, name, "jerk", jerk, lo=0.0, hi=1.0),
        "noise": draw_float(rng, name, "noise", noise, lo=0.0, hi=255.0),
    }
    kernel = rasterise(trajectory(rng, drawn["length"], drawn["shake"], drawn["inertia"], drawn["jerk"]))
    out = blur_linear(image, kernel)
    if drawn["noise"] > 0:
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(drawn["noise"] / 255.0)
    drawn["kernel_size"] = int(kernel.shape[0])
    return out, drawn
