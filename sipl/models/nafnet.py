"""NAFNet-style convolutional U-Net (activation-free blocks: simple gate, simplified channel attention, LayerNorm2d).

Four levels like the Restormer/PromptIR U-Net (widths w, 2w, 4w, 8w at H, H/2, H/4, H/8) so that SIPL's three
privileged maps (encoder level 2, encoder level 3, latent) sit at the same places for every backbone. Skips are added,
not concatenated; downsampling is a stride-2 2×2 conv, upsampling a 1×1 conv + pixel shuffle. Fast on CPU: no
attention, only 1×1 and depthwise 3×3 convs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sipl.models.common import Backbone, Hook, LayerNorm2d, apply_hook
from sipl.models.sipl import OFFICIAL_HEADS

PRESETS = {
    "tiny": {"width": 16, "enc_blocks": (1, 1, 2), "middle_blocks": 2, "dec_blocks": (1, 1, 1)},
    "small": {"width": 32, "enc_blocks": (1, 2, 2), "middle_blocks": 4, "dec_blocks": (1, 1, 1)},
    "paper": {"width": 32, "enc_blocks": (2, 2, 4), "middle_blocks": 12, "dec_blocks": (2, 2, 2)},
}
# Smaller dictionaries than PromptIR's 64²/32²/16²: per pixel this CNN is ~15× cheaper than PromptIR, and attention
# to 4096 atoms at H/2 would cost more than the whole backbone (docs/model.md).
SIPL_PRESETS = {
    "tiny": {"dict_sizes": (8, 8, 8), "fusion_ffn": 1.0, "dict_init": "normal", **OFFICIAL_HEADS},
    "small": {"dict_sizes": (16, 8, 8), "fusion_ffn": 2.0, "dict_init": "normal", **OFFICIAL_HEADS},
    "paper": {"dict_sizes": (16, 16, 8), "fusion_ffn": 2.0, "dict_init": "normal", **OFFICIAL_HEADS},
}


class SimpleGate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """x + β·SCA-conv branch, then + γ·gated FFN branch; β, γ start at zero so each block starts as the identity."""

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw = channels * dw_expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.gate = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = nn.Conv2d(dw // 2, channels, 1)
        ffn = channels * ffn_expand
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, inp: Tensor) -> Tensor:
        x = self.gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


def _stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[NAFBlock(channels) for _ in range(blocks)])


class NAFNet(Backbone):
    """NAFNet-style U-Net. Input/output N×3×H×W in [0,1] (any H, W; output unclipped, global residual)."""

    multiple = 8

    def __init__(self, width: int = 16, enc_blocks: Sequence[int] = (1, 1, 2), middle_blocks: int = 2,
                 dec_blocks: Sequence[int] = (1, 1, 1), output_init: float = 1.0, output_bias: bool = True) -> None:
        """``output_init`` scales the initial weights of the last conv (bias zeroed when < 1): small values start the
        network as almost the identity through its global residual, so short trainings begin at the input's PSNR
        instead of below it; gradients still reach every layer (unlike an exactly-zero init).

        ``output_bias=False`` builds the last conv without a bias. That bias adds one constant to every pixel of
        every image: it learns the training mix's average correction (haze, rain and snow removal all darken), which
        a blind all-in-one model then applies to clean and mildly degraded inputs as well."""
        super().__init__()
        if len(enc_blocks) != 3 or len(dec_blocks) != 3:
            raise ValueError("nafnet: enc_blocks and dec_blocks need 3 entries (levels 1, 2, 3)")
        w = width
        self.fusion_channels = (2 * w, 4 * w, 8 * w)
        self.intro = nn.Conv2d(3, w, 3, padding=1)
        self.encoders = nn.ModuleList([_stage(w * 2**i, n) for i, n in enumerate(enc_blocks)])
        self.downs = nn.ModuleList([nn.Conv2d(w * 2**i, w * 2 ** (i + 1), 2, stride=2) for i in range(3)])
        self.middle = _stage(8 * w, middle_blocks)
        # ups[i] goes from level i+1 to level i; decoders[i] runs at level i (index 0 = full resolution).
        self.ups = nn.ModuleList([
            nn.Sequential(nn.Conv2d(w * 2 ** (i + 1), w * 2 ** (i + 2), 1, bias=False), nn.PixelShuffle(2))
            for i in range(3)
        ])
        self.decoders = nn.ModuleList([_stage(w * 2**i, n) for i, n in enumerate(dec_blocks)])
        self.ending = nn.Conv2d(w, 3, 3, padding=1, bias=output_bias)
        if output_init != 1.0:
            with torch.no_grad():
                self.ending.weight.mul_(output_init)
                if output_bias:
                    self.ending.bias.zero_()

    def _encode(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        x = self.intro(image)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        return skips, self.middle(x)

    def _decode(self, skips: list[Tensor], latent: Tensor, hooks: Sequence[Hook]) -> Tensor:
        x = apply_hook(hooks, 2, latent)
        # Level 4 -> 3 -> 2 -> 1; fusion after decoder levels 3 and 2 (hook 1 and 0).
        for level in (2, 1, 0):
            x = self.decoders[level](self.ups[level](x) + skips[level])
            if level > 0:
                x = apply_hook(hooks, level - 1, x)
        return self.ending(x)
