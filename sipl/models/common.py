"""Pieces every backbone shares: channel LayerNorm, pad-to-multiple with crop back, the encoder state, the base class.

A backbone is a 4-level U-Net split in two halves so that the SIPL wrapper can run them separately:

- ``encode(x) -> EncoderState``: reflect-pads ``x`` to a multiple of ``multiple`` and runs the encoder (levels 1-3
  and the latent blocks);
- ``decode(state, hooks=None) -> y``: runs the decoder on an encoder state; ``hooks[i]`` (a callable or None) replaces
  the decoder feature at fusion level ``i`` (0: decoder level 2, 1: decoder level 3, 2: latent), then adds the global
  residual and crops back to the input size.

``privileged_features(state)`` returns the three encoder maps SIPL uses: ``[enc level 2, enc level 3, latent]``, whose
channels equal the decoder features at the matching fusion level (``fusion_channels``).
"""

from __future__ import annotations

import abc

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Hook = Callable[[Tensor], Tensor] | None


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an N×C×H×W map, per pixel, with weight and bias (Restormer's 'WithBias').

    The output keeps the input's memory format: an input whose channels are its innermost axis (channels_last, or
    a broadcast view of a channels_last map) gives a channels_last output without a copy, so a network run in
    channels_last stays in it; any other input gives a contiguous N×C×H×W output."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        if dtype != torch.float32 and dtype != torch.float64:
            x = x.float()  # statistics in float32 under bf16/fp16 autocast
        # The fused layer_norm kernel on a channels-last view is ~2× faster on CPU than the composite of
        # mean/var/rsqrt ops (forward + backward).
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)
        if x.stride(1) != 1:
            # Converting a channels_last result back to N×C×H×W costs a copy per norm, and every following conv
            # then runs in the slower N×C×H×W layout; only callers that gave N×C×H×W get it back.
            y = y.contiguous()
        return y.to(dtype)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad N×C×H×W at the bottom/right to the next multiple of ``multiple`` (reflect; replicate where the image is
    too small to reflect). Crop back with ``x[..., :H, :W]``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


@dataclass
class EncoderState:
    """Encoder output of one input, reusable by any number of decoder passes.

    ``image``: the padded input N×3×Hp×Wp; ``skips``: encoder level 1..3 outputs; ``latent``: bottleneck output;
    ``size``: the unpadded (H, W)."""

    image: Tensor
    skips: list[Tensor]
    latent: Tensor
    size: tuple[int, int]


class Backbone(nn.Module, abc.ABC):
    """Abstract base: subclasses set ``multiple``, ``fusion_channels`` and implement ``_encode`` / ``_decode``."""

    multiple: int = 8
    fusion_channels: tuple[int, int, int]

    @abc.abstractmethod
    def _encode(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        """Padded N×3×Hp×Wp image -> (encoder level 1..3 outputs, bottleneck output)."""

    @abc.abstractmethod
    def _decode(self, skips: list[Tensor], latent: Tensor, hooks: Sequence[Hook]) -> Tensor:
        """Encoder outputs -> the N×3×Hp×Wp residual; ``hooks[i]`` replaces the feature at fusion level i."""

    def encode(self, x: Tensor) -> EncoderState:
        """Encode N×3×H×W (any H, W) into a reusable state."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N×3×H×W image batch, got shape {tuple(x.shape)}")
        image = pad_to_multiple(x, self.multiple)
        skips, latent = self._encode(image)
        return EncoderState(image=image, skips=skips, latent=latent, size=(x.shape[-2], x.shape[-1]))

    def decode(self, state: EncoderState, hooks: Sequence[Hook] | None = None) -> Tensor:
        """Decode a state to N×3×H×W (global residual added, unclipped); ``hooks`` as in the module docstring."""
        hooks = list(hooks) if hooks is not None else [None, None, None]
        out = self._decode(state.skips, state.latent, hooks) + state.image
        h, w = state.size
        return out[..., :h, :w]

    @staticmethod
    def privileged_features(state: EncoderState) -> list[Tensor]:
        """``[enc level 2, enc level 3, latent]`` of a state: the maps SIPL's fusion levels 0, 1, 2 absorb."""
        return [state.skips[1], state.skips[2], state.latent]

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def apply_hook(hooks: Sequence[Hook], level: int, feature: Tensor) -> Tensor:
    """Run ``hooks[level]`` on ``feature`` if set."""
    hook = hooks[level]
    return feature if hook is None else hook(feature)
