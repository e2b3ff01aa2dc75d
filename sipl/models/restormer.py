"""Restormer-style 4-level U-Net: transformer blocks of transposed (channel) attention (MDTA) and a gated-dconv FFN
(GDFN), pixel-unshuffle down, pixel-shuffle up, bias-free convs, global residual.

The blocks here are shared with ``promptir.py``. ``paper`` size is Restormer's published configuration (C=48, blocks
[4,6,6,8], 4 refinement blocks, heads [1,2,4,8], FFN 2.66).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sipl.models.common import Backbone, Hook, LayerNorm2d, apply_hook
from sipl.models.sipl import OFFICIAL_HEADS

PRESETS = {
    "tiny": {"dim": 16, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1, "heads": (1, 1, 2, 2),
             "ffn_expansion_factor": 2.0},
    "small": {"dim": 24, "num_blocks": (2, 2, 2, 4), "num_refinement_blocks": 2, "heads": (1, 2, 4, 8),
              "ffn_expansion_factor": 2.66},
    "paper": {"dim": 48, "num_blocks": (4, 6, 6, 8), "num_refinement_blocks": 4, "heads": (1, 2, 4, 8),
              "ffn_expansion_factor": 2.66},
}
# paper: the official dictionaries (64², 32², 16² atoms at decoder level 2, decoder level 3, latent).
SIPL_PRESETS = {
    "tiny": {"dict_sizes": (8, 8, 8), "fusion_ffn": 2.0, "dict_init": "normal", **OFFICIAL_HEADS},
    "small": {"dict_sizes": (32, 16, 8), "fusion_ffn": 2.0, "dict_init": "normal", **OFFICIAL_HEADS},
    "paper": {"dict_sizes": (64, 32, 16), "fusion_ffn": 2.0, "dict_init": "normal", **OFFICIAL_HEADS},
}


class MDTA(nn.Module):
    """Multi-Dconv head Transposed Attention: attention across channels (C/heads × C/heads per head)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = (t.reshape(n, self.heads, c // self.heads, h * w)
                   for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(n, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward: gelu(a)·b over a depthwise-conv expansion."""

    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_expansion_factor: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = MDTA(dim, heads)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = GDFN(dim, ffn_expansion_factor)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def blocks(dim: int, count: int, heads: int, ffn: float) -> nn.Sequential:
    return nn.Sequential(*[TransformerBlock(dim, heads, ffn) for _ in range(count)])


def downsample(channels: int) -> nn.Sequential:
    """C×H×W -> 2C×H/2×W/2."""
    return nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


def upsample(channels: int) -> nn.Sequential:
    """C×H×W -> C/2×2H×2W."""
    return nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


class RestormerEncoder(Backbone):
    """Shared encoder half (patch embed, levels 1-3, latent) of Restormer and PromptIR."""

    multiple = 8

    def _build_encoder(self, dim: int, num_blocks: Sequence[int], heads: Sequence[int], ffn: float) -> None:
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError("num_blocks and heads need 4 entries (levels 1, 2, 3, latent)")
        self.fusion_channels = (2 * dim, 4 * dim, 8 * dim)
        self.patch_embed = nn.Conv2d(3, dim, 3, padding=1, bias=False)
        self.encoder_level1 = blocks(dim, num_blocks[0], heads[0], ffn)
        self.down1_2 = downsample(dim)
        self.encoder_level2 = blocks(2 * dim, num_blocks[1], heads[1], ffn)
        self.down2_3 = downsample(2 * dim)
        self.encoder_level3 = blocks(4 * dim, num_blocks[2], heads[2], ffn)
        self.down3_4 = downsample(4 * dim)
        self.latent = blocks(8 * dim, num_blocks[3], heads[3], ffn)

    def _encode(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        enc1 = self.encoder_level1(self.patch_embed(image))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        return [enc1, enc2, enc3], self.latent(self.down3_4(enc3))


class Restormer(RestormerEncoder):
    """Restormer U-Net. Input/output N×3×H×W in [0,1] (any H, W; output unclipped)."""

    def __init__(self, dim: int = 48, num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66) -> None:
        super().__init__()
        ffn = ffn_expansion_factor
        self._build_encoder(dim, num_blocks, heads, ffn)
        self.up4_3 = upsample(8 * dim)
        self.reduce_chan_level3 = nn.Conv2d(8 * dim, 4 * dim, 1, bias=False)
        self.decoder_level3 = blocks(4 * dim, num_blocks[2], heads[2], ffn)
        self.up3_2 = upsample(4 * dim)
        self.reduce_chan_level2 = nn.Conv2d(4 * dim, 2 * dim, 1, bias=False)
        self.decoder_level2 = blocks(2 * dim, num_blocks[1], heads[1], ffn)
        self.up2_1 = upsample(2 * dim)
        self.decoder_level1 = blocks(2 * dim, num_blocks[0], heads[0], ffn)
        self.refinement = blocks(2 * dim, num_refinement_blocks, heads[0], ffn)
        self.output = nn.Conv2d(2 * dim, 3, 3, padding=1, bias=False)

    def _decode(self, skips: list[Tensor], latent: Tensor, hooks: Sequence[Hook]) -> Tensor:
        enc1, enc2, enc3 = skips
        latent = apply_hook(hooks, 2, latent)
        # Level 4 -> 3
        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
        dec3 = apply_hook(hooks, 1, dec3)
        # Level 3 -> 2
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec2 = apply_hook(hooks, 0, dec2)
        # Level 2 -> 1 (no channel reduction: C + C)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        return self.output(self.refinement(dec1))
