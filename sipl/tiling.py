"""Tiled inference with blended seams for images too large for one pass.

Tiles of side ``tile`` (rounded down to a multiple of ``align``, the model's downsampling factor) overlap by at least
``overlap`` pixels; their starts are multiples of ``align`` (so every tile sees the same pixel grid as the whole
image) and the last tile of a row/column extends to the image edge. Each tile's output is weighted by a separable
window that is 0 on the outer quarter of the overlap at interior tile edges (where missing context corrupts a tile's
output most), ramps linearly over the middle half and is 1 elsewhere (and at image borders). So for a model whose
receptive-field radius is at most ``overlap // 4`` pixels, the blended result equals the untiled one; models with
global operations (channel-attention pooling, attention over the whole image) only approximate it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sipl.errors import SiplError


def tile_spans(length: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(length)``; consecutive spans overlap by at least ``overlap``."""
    if length <= tile:
        return [(0, length)]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile + 1, stride))
    last = (length - tile) // align * align
    if last > starts[-1]:
        starts.append(last)
    return [(s, s + tile) for s in starts[:-1]] + [(starts[-1], length)]


def _window(start: int, end: int, length: int, overlap: int) -> Tensor:
    """1-D blend weights (end-start,) float32 in [0, 1] for one span."""
    dead = overlap // 4
    ramp = max(overlap - 2 * dead, 1)
    pos = torch.arange(end - start, dtype=torch.float32)
    big = torch.full_like(pos, float(length))
    dist = torch.minimum(pos if start > 0 else big, (end - start - 1 - pos) if end < length else big)
    return ((dist - dead + 1) / (ramp + 1)).clamp(0, 1)


def tiled_map(fn: Callable[[Tensor], list[Tensor]], x: Tensor, tile: int, overlap: int = 16,
              align: int = 1) -> list[Tensor]:
    """Apply ``fn`` (N×C×h×w -> list of N×C'×h×w) tile by tile to N×C×H×W ``x`` and blend each output.

    ``tile`` is rounded down to a multiple of ``align``. Returns the list of blended N×C'×H×W outputs (same length
    and order as ``fn``'s)."""
    tile = tile // align * align
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise SiplError(f"tiling needs tile > overlap >= 0 with tile a multiple of {align} "
                        f"(got tile={tile}, overlap={overlap}); use a larger tile or a smaller overlap")
    height, width = x.shape[-2:]
    rows, cols = tile_spans(height, tile, overlap, align), tile_spans(width, tile, overlap, align)
    sums: list[Tensor] | None = None
    norm = torch.zeros(1, 1, height, width, dtype=torch.float32, device=x.device)
    for y0, y1 in rows:
        wy = _window(y0, y1, height, overlap).to(x.device)
        for x0, x1 in cols:
            weight = (wy[:, None] * _window(x0, x1, width, overlap).to(x.device)[None, :])[None, None]
            outputs = fn(x[..., y0:y1, x0:x1])
            if sums is None:
                sums = [torch.zeros(*o.shape[:-2], height, width, dtype=torch.float32, device=x.device)
                        for o in outputs]
            for acc, out in zip(sums, outputs):
                acc[..., y0:y1, x0:x1] += out.float() * weight
            norm[..., y0:y1, x0:x1] += weight
    return [(acc / norm).to(x.dtype) for acc in sums]
