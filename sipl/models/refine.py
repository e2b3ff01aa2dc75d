"""Test-time self-refinement: ``refine(model, x, steps)`` yields ``(step, output)`` for step 0..steps.

Step 0 is the dictionary-only (preliminary) restoration. Each later step feeds the encoder features of the previous
step's output to the fusion modules as pseudo-privileged features:

- ``official``: step k restores the previous refined output (the official test loop): preliminary of the current
  input -> its encoder features -> restore the current input with them; the result is the next input. Step 1 reuses
  step 0's encoder state and output; each later step re-encodes its input and runs two decoder passes.
- ``anchored``: step k restores the ORIGINAL input with the features of step k-1's output. The input's encoder state
  is computed once; each step costs one encoder pass (privileged) and one decoder pass.

Costs for steps 0..K in full-pass units (encoder + decoder): anchored K+1, official 2K (K >= 1).
Outputs are clipped to [0, 1]; the chain runs under ``torch.inference_mode`` (only while computing, so the caller's
code between steps is unaffected). With ``tile`` set, the whole chain runs per tile and the tiles are blended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from sipl.errors import SiplError
from sipl.models.tiling import tiled_map

SCHEMES = ("official", "anchored")
# The degradation head classifies a centre crop of at most this side: cropping (unlike resizing) keeps the noise
# and texture statistics it reads, and bounds its cost on large photos.
CLASSIFY_SIDE = 512


def degradation_probabilities(model, image) -> dict[str, float]:
    """The head's probability for each degradation class (``model.degradation_classes``, in that order) of a uint8
    H×W×3 image (NumPy array), read on its centre crop of at most ``CLASSIFY_SIDE`` pixels."""
    height, width = image.shape[:2]
    top, left = max(0, (height - CLASSIFY_SIDE) // 2), max(0, (width - CLASSIFY_SIDE) // 2)
    crop = image[top:top + CLASSIFY_SIDE, left:left + CLASSIFY_SIDE]
    x = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float().div(255.0)
    with torch.inference_mode():
        probabilities = model.classify(x)[0].float()
    return {name: float(p) for name, p in zip(model.degradation_classes, probabilities)}


def predict_degradation(model, image) -> str:
    """The degradation class (a name of ``model.degradation_classes``) that the model's head predicts for a uint8
    H×W×3 image (NumPy array): the most probable one of ``degradation_probabilities``."""
    probabilities = degradation_probabilities(model, image)
    return max(probabilities, key=probabilities.__getitem__)


def _chain(model, x: Tensor, steps: int, scheme: str) -> Iterator[tuple[int, Tensor]]:
    with torch.inference_mode():
        state = model.encode(x)
        out = model.decode(state).clamp(0, 1)
    yield 0, out
    if not getattr(model, "sipl", False):
        # A plain backbone has no privileged path: every step is the same restoration.
        for step in range(1, steps + 1):
            yield step, out
        return
    for step in range(1, steps + 1):
        with torch.inference_mode():
            if scheme == "official" and step > 1:
                state = model.encode(out)  # the previous refined output is the new input
                preliminary = model.decode(state).clamp(0, 1)
            else:
                preliminary = out
            out = model.decode(state, preliminary).clamp(0, 1)  # the preliminary's encoder features
        yield step, out


def refine(model, x: Tensor, steps: int, scheme: str = "anchored", tile: int | None = None,
           tile_overlap: int = 16, last_only: bool = False,
           on_tile: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(step, output)`` for step 0..``steps``; x and outputs N×3×H×W float in [0,1] (outputs clipped).

    ``model`` is a ``sipl.models.SIPLModel`` or what ``sipl.models.runtime.for_inference`` made of one (plain models
    yield the same restoration at every step).
    ``tile``: run the chain per tile of that side (overlap ``tile_overlap``, blended seams) for large images;
    outputs of all steps are then produced together once every tile has run, and ``on_tile(done, total)`` is called
    after each tile. ``last_only``: yield only ``(steps, output)`` (a tiled run then blends one output, not
    ``steps + 1``: the memory of a large image's restore stays at one image's worth)."""
    if scheme not in SCHEMES:
        raise SiplError(f"unknown refinement scheme {scheme!r}; use one of {list(SCHEMES)}")
    if not isinstance(steps, int) or steps < 0:
        raise SiplError(f"refinement steps must be an integer >= 0, got {steps!r}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise SiplError(f"refine expects an N×3×H×W image batch, got shape {tuple(x.shape)}")
    if tile is None or (x.shape[-2] <= tile and x.shape[-1] <= tile):
        for step, out in _chain(model, x, steps, scheme):
            if not last_only or step == steps:
                yield step, out
        if on_tile is not None:
            on_tile(1, 1)
        return

    def run_tile(patch: Tensor) -> list[Tensor]:
        outputs = [out for _, out in _chain(model, patch, steps, scheme)]
        return outputs[-1:] if last_only else outputs

    with torch.inference_mode():
        outputs = tiled_map(run_tile, x, tile, tile_overlap, align=getattr(model, "multiple", 1), on_tile=on_tile)
    yield from ([(steps, outputs[0])] if last_only else enumerate(outputs))
