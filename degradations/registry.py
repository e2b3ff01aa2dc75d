"""The explicit registry of degradations, step-list validation, composites and the CDD-11 presets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from degradations._core import DegradationError, check_params, from_working, to_working
from degradations.blur import motion_blur
from degradations.haze import haze
from degradations.jpeg import jpeg
from degradations.lowlight import low_light
from degradations.noise import gaussian_noise
from degradations.rain import rain
from degradations.snow import snow

REGISTRY: dict[str, Callable[..., tuple[np.ndarray, dict]]] = {
    "gaussian_noise": gaussian_noise,
    "rain": rain,
    "haze": haze,
    "motion_blur": motion_blur,
    "low_light": low_light,
    "snow": snow,
    "jpeg": jpeg,
}

# CDD-11 (OneRestore) composites, applied low light -> rain -> snow -> haze. Where a parameter maps onto the
# CDD-11 synthesis it takes that range: haze β ~ U(1, 2) over normalised depth capped at 0.7 (t ≥ exp(−0.7β)),
# grey A ~ U(0.6, 0.9); low light γ ~ U(2, 3).
_LOW = {"name": "low_light", "gamma": [2.0, 3.0]}
_RAIN = {"name": "rain"}
_SNOW = {"name": "snow"}
_HAZE = {"name": "haze", "beta": [1.0, 2.0], "airlight": [0.6, 0.9], "near": 0.0, "far": 0.7}

CDD11: dict[str, list[dict[str, Any]]] = {
    "low": [_LOW],
    "haze": [_HAZE],
    "rain": [_RAIN],
    "snow": [_SNOW],
    "low_haze": [_LOW, _HAZE],
    "low_rain": [_LOW, _RAIN],
    "low_snow": [_LOW, _SNOW],
    "haze_rain": [_RAIN, _HAZE],
    "haze_snow": [_SNOW, _HAZE],
    "low_haze_rain": [_LOW, _RAIN, _HAZE],
    "low_haze_snow": [_LOW, _SNOW, _HAZE],
}


def validate(steps: Any) -> list[dict[str, Any]]:
    """Normalise ``steps`` (a registry name, a dict ``{"name": ..., **params}`` or a list of them) to a list of
    step dicts, checking every name and parameter name. Parameter values are checked when drawn."""
    if isinstance(steps, (str, Mapping)):
        items = [steps]
    elif isinstance(steps, (list, tuple)):
        items = list(steps)
    else:
        raise DegradationError(f"degradation steps must be a name, a {{name: ...}} mapping or a list of them, "
                               f"got {type(steps).__name__}")
    if not items:
        raise DegradationError("degradation steps: empty list; give at least one step")
    out = []
    for i, item in enumerate(items):
        step = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, Mapping) else None
        if step is None or "name" not in step:
            raise DegradationError(f"degradation step {i}: expected a name or a mapping with 'name', got {item!r}")
        name = step["name"]
        if name not in REGISTRY:
            raise DegradationError(f"degradation step {i}: unknown degradation {name!r}; known: {sorted(REGISTRY)}")
        params = {k: v for k, v in step.items() if k != "name"}
        check_params(name, params, REGISTRY[name].allowed_params)
        out.append(step)
    return out


def apply(steps: Any, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Apply one degradation or an ordered composite.

    A composite runs in float32 and converts to the input dtype once at the end (no 8-bit rounding between
    steps, except where a step quantises by design: gaussian_noise, low_light).

    Args:
        steps: a registry name, a dict ``{"name": ..., **params}`` or a list of them, applied in order.
        image: H×W×3 uint8, or float in [0, 1].
        rng: ``np.random.Generator``; every step draws from it in turn.

    Returns:
        (degraded image of the input's dtype and shape, one record per step with "name" and every drawn value).
    """
    plan = validate(steps)
    work, dtype = to_working(image, plan[0]["name"])
    applied = []
    for step in plan:
        params = {k: v for k, v in step.items() if k != "name"}
        work, record = REGISTRY[step["name"]](work, rng, **params)
        applied.append(record)
    return from_working(work, dtype), applied
