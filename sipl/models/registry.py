"""Explicit backbone registry and ``build_model``: presets per backbone and size, overrides = constructor arguments."""

from __future__ import annotations

import inspect
from typing import Any

from sipl.models import nafnet, promptir, restormer
from sipl.models.sipl import SIPLModel

# name -> (constructor, {size: constructor arguments}, {size: SIPL arguments})
BACKBONES = {
    "nafnet": (nafnet.NAFNet, nafnet.PRESETS, nafnet.SIPL_PRESETS),
    "promptir": (promptir.PromptIR, promptir.PRESETS, promptir.SIPL_PRESETS),
    "restormer": (restormer.Restormer, restormer.PRESETS, restormer.SIPL_PRESETS),
}
SIZES = ("tiny", "small", "paper")
# Degradation-head arguments of SIPLModel, accepted for every backbone and size (default: no head).
HEAD_KEYS = {"degradation_classes", "global_affine", "affine_min_confidence"}


def _plain(value: Any) -> Any:
    """Tuples -> lists so that the config round-trips through JSON unchanged."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_arguments(backbone: str, size: str, overrides: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Check backbone, size and override names without building anything.

    Returns:
        (backbone constructor argument names, SIPL argument names). Raises ValueError naming what is unknown."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; available: {sorted(BACKBONES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; available: {list(SIZES)}")
    constructor, _, sipl_presets = BACKBONES[backbone]
    backbone_keys = set(inspect.signature(constructor).parameters)
    sipl_keys = set(sipl_presets[size]) | HEAD_KEYS
    unknown = sorted(set(overrides) - backbone_keys - sipl_keys)
    if unknown:
        raise ValueError(f"unknown model override(s) {unknown} for backbone {backbone!r}; allowed: "
                         f"{sorted(backbone_keys)} (backbone) and {sorted(sipl_keys)} (SIPL)")
    return backbone_keys, sipl_keys


def build_model(backbone: str = "nafnet", size: str = "tiny", sipl: bool = True, **overrides: Any) -> SIPLModel:
    """Build a restoration model. ``overrides`` are backbone constructor arguments (e.g. ``width``, ``dim``,
    ``num_blocks``) or SIPL arguments (``dict_sizes``, ``absorb_heads``, ``read_heads``, ``fusion_ffn``,
    ``dict_init``). ``model.config`` holds these arguments, so ``build_model(**model.config)`` rebuilds it."""
    backbone_keys, sipl_keys = check_arguments(backbone, size, overrides)
    constructor, presets, sipl_presets = BACKBONES[backbone]
    backbone_args = {**presets[size], **{k: v for k, v in overrides.items() if k in backbone_keys}}
    sipl_args = {**sipl_presets[size], **{k: v for k, v in overrides.items() if k in sipl_keys}}
    config = {"backbone": backbone, "size": size, "sipl": bool(sipl), **_plain(overrides)}
    return SIPLModel(constructor(**backbone_args), sipl=sipl, config=config, **sipl_args)
