"""Seeded, pure NumPy/OpenCV degradations that turn clean images into degraded ones (JPEG through albumentations'
codec; the physics is written here).

Every function has the form ``fn(image, rng, **params) -> (image, applied)``: ``image`` is H×W×3 uint8 or float in
[0, 1] and the result has the same dtype and shape; ``rng`` is a ``numpy.random.Generator`` (no global RNG state);
a parameter given as a two-element list ``[low, high]`` is drawn uniformly (integers inclusive; a list of names is
a uniform choice); ``applied`` is a JSON-serialisable dict with ``"name"`` and every drawn value.

    >>> import numpy as np, degradations
    >>> img = np.full((64, 64, 3), 128, np.uint8)
    >>> out, applied = degradations.apply([{"name": "low_light"}, {"name": "haze"}], img, np.random.default_rng(0))

``REGISTRY`` maps names to functions, ``CDD11`` the 11 CDD-11 composite names to step lists, ``validate`` checks a
step list without running it.
"""

from degradations._core import DegradationError
from degradations.blur import motion_blur
from degradations.haze import haze
from degradations.jpeg import jpeg
from degradations.lowlight import low_light
from degradations.noise import gaussian_noise
from degradations.rain import rain
from degradations.registry import CDD11, REGISTRY, apply, validate
from degradations.snow import snow

__all__ = ["CDD11", "REGISTRY", "DegradationError", "apply", "validate", "gaussian_noise", "rain", "haze",
           "motion_blur", "low_light", "snow", "jpeg"]
