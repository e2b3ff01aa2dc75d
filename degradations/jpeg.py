"""JPEG compression artefacts (blocking, ringing, colour bleeding), as photos carry them after saving.

The codec is albumentations' ``ImageCompression`` (OpenCV's libjpeg: IJG quantisation tables scaled by the quality,
4:2:0 chroma subsampling), called with the quality this step drew from the sample's generator, so the draw is
recorded and seeded like every other step. albumentations hands the array to OpenCV as it is, and OpenCV reads
3-channel arrays as BGR; the image is therefore passed in BGR order and turned back, so luma and chroma are those of
the RGB photo (with RGB as given, red and blue would swap roles in the luma and chroma planes).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from degradations._core import degradation, draw_int


@functools.lru_cache(maxsize=None)
def _codec(quality: int):
    """albumentations' JPEG round trip at one fixed ``quality`` (1–100), built once per quality."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no registry check on import (no network at run time)
    import albumentations as A

    return A.ImageCompression(compression_type="jpeg", quality_range=(quality, quality), p=1.0)


@degradation("jpeg")
def jpeg(image: np.ndarray, rng: np.random.Generator, quality=(10, 40)):
    """Encode the image as a baseline JPEG of ``quality`` and decode it again.

    The image is taken on the 0–255 grid (``round(x * 255)``), so a float image and its uint8 twin give identical
    results; the output lies on the k/255 grid. Quality 10–40 is the range of the JPEG-artefact removal benchmarks
    (LIVE1, Classic5); 90 and above leave little to see.

    Args:
        image: H×W×3 float32 in [0, 1] (the decorator's working copy).
        rng: the sample's generator.
        quality: JPEG quality 1–100, or an inclusive integer range [low, high] drawn per sample.

    Returns:
        (H×W×3 float32 in [0, 1], {"quality"}).
    """
    q = draw_int(rng, "jpeg", "quality", quality, lo=1, hi=100)
    bgr = np.ascontiguousarray(np.rint(image[..., ::-1] * 255.0).astype(np.uint8))
    decoded = _codec(q)(image=bgr)["image"]
    return decoded[..., ::-1].astype(np.float32) * np.float32(1.0 / 255.0), {"quality": q}
