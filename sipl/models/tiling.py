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

import math

from collections.abc import Callable

import torch
from torch import Tensor

from sipl.errors import SiplError


def tile_spans(length: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(length)`` with as few spans of at most ``tile`` as the overlap
    allows, all of one size (the last one extends to the end) and evenly spread, starts multiples of ``align``;
    consecutive spans overlap by at least ``overlap``.

    Evenly spread spans keep the work close to the image itself: a 1024-pixel side in tiles of 512 runs 3 spans of
    360 (1080 pixels), where spans of the full tile side would run 3 of 512 (1536)."""
    if length <= tile:
        return [(0, length)]
    # Starts are rounded down to ``align``, which can shift a span by up to align - 1 pixels: budget for it.
    reach = tile - overlap - align
    if reach < 1:
        raise SiplError(f"tiling needs a tile ({tile}) larger than the overlap ({overlap}) plus the model's "
                        f"alignment ({align}); use a larger tile or a smaller overlap")
    count = max(2, math.ceil((length - overlap - align) / reach))
    size = min(tile, -(-math.ceil((length + (count - 1) * (overlap + align)) / count) // align) * align)
    starts = [int(round(i * (length - size) / (count - 1))) // align * align for i in range(count)]
    return [(start, start + size) for start in starts[:-1]] + [(starts[-1], length)]


def _window(start: int, end: int, length: int, overlap: int) -> Tensor:
    """1-D blend weights (end-start,) float32 in [0, 1] for one span."""
    dead = overlap // 4
    ramp = max(overlap - 2 * dead, 1)
    pos = torch.arange(end - start, dtype=torch.float32)
    big = torch.full_like(pos, float(length))
    dist = torch.minimum(pos if start > 0 else big, (end - start - 1 - pos) if end < length else big)
    return ((dist - dead + 1) / (ramp + 1)).clamp(0, 1)


def tile_count(height: int, width: int, tile: int, overlap: int = 16, align: int = 1) -> int:
    """Number of tiles ``tiled_map`` runs on an H×W image."""
    tile = tile // align * align
    return len(tile_spans(height, tile, overlap, align)) * len(tile_spans(width, tile, overlap, align))


def tiled_map(fn: Callable[[Tensor], list[Tensor]], x: Tensor, tile: int, overlap: int = 16,
              align: int = 1, on_tile: Callable[[int, int], None] | None = None) -> list[Tensor]:
    """Apply ``fn`` (N×C×h×w -> list of N×C'×h×w) tile by tile to N×C×H×W ``x`` and blend each output.

    ``tile`` is rounded down to a multiple of ``align``. ``on_tile(done, total)`` is called after each tile.
    Returns the list of blended N×C'×H×W outputs (same length and order as ``fn``'s)."""
    tile = tile // align * align
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise SiplError(f"tiling needs tile > overlap >= 0 with tile a multiple of {align} "
                        f"(got tile={tile}, overlap={overlap}); use a larger tile or a smaller overlap")
    height, width = x.shape[-2:]
    rows, cols = tile_spans(height, tile, overlap, align), tile_spans(width, tile, overlap, align)
    total, done = len(rows) * len(cols), 0
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
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    for acc in sums:
        acc.div_(norm)  # in place: a large image's outputs are not copied again
    return [acc.to(x.dtype) for acc in sums]
