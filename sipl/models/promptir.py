"""PromptIR: the Restormer U-Net with three prompt blocks in the decoder (after the latent, after decoder levels 3
and 2). A prompt block = PGM (N learnable prompt components, softmax-weighted by a linear map of the pooled feature,
resized to the feature, 3×3 conv) + PIM (concatenate, one transformer block, 1×1 conv back).

Kept from the published network: after prompt blocks 3 and 2 the features are reduced to 4C before upsampling, so the
level-3 skip concat is 2C + 4C -> 4C and the level-2 one 2C + 2C -> 2C. The two groups of layers the published code
defines but never calls (``chnl_reduce*``, ``reduce_noise_channel_*``; 0.215 M parameters at paper size) are not built.
SIPL's Proxy Fusion goes immediately before each prompt block (hooks 2, 1, 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sipl.models.common import Hook, apply_hook
from sipl.models.restormer import SIPL_PRESETS  # noqa: F401  (same fusion presets as Restormer)
from sipl.models.restormer import RestormerEncoder, TransformerBlock, blocks, upsample

PRESETS = {
    "tiny": {"dim": 16, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1, "heads": (1, 1, 2, 2),
             "ffn_expansion_factor": 2.0, "prompt_len": 3, "prompt_dims": (16, 32, 64),
             "prompt_sizes": (32, 16, 8), "prompt_heads": 2},
    "small": {"dim": 24, "num_blocks": (2, 2, 2, 4), "num_refinement_blocks": 2, "heads": (1, 2, 4, 8),
              "ffn_expansion_factor": 2.66, "prompt_len": 5, "prompt_dims": (32, 64, 160),
              "prompt_sizes": (64, 32, 16), "prompt_heads": 4},
    "paper": {"dim": 48, "num_blocks": (4, 6, 6, 8), "num_refinement_blocks": 4, "heads": (1, 2, 4, 8),
              "ffn_expansion_factor": 2.66, "prompt_len": 5, "prompt_dims": (64, 128, 320),
              "prompt_sizes": (64, 32, 16), "prompt_heads": 4},
}


class PromptGen(nn.Module):
    """PGM: N×C×H×W feature -> N×P×H×W prompt."""

    def __init__(self, prompt_dim: int, prompt_len: int, prompt_size: int, feature_dim: int) -> None:
        super().__init__()
        self.prompt = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear = nn.Linear(feature_dim, prompt_len)
        self.conv = nn.Conv2d(prompt_dim, prompt_dim, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        weights = self.linear(x.mean(dim=(-2, -1))).softmax(dim=1)  # N, prompt_len
        prompt = (weights[:, :, None, None, None] * self.prompt).sum(dim=1)
        prompt = F.interpolate(prompt, size=x.shape[-2:], mode="bilinear")
        return self.conv(prompt)


class PromptBlock(nn.Module):
    """PGM + PIM: concat(feature C, prompt P) -> transformer block on C+P -> 1×1 conv to ``out_dim``."""

    def __init__(self, feature_dim: int, prompt_dim: int, prompt_len: int, prompt_size: int, heads: int,
                 ffn: float, out_dim: int) -> None:
        super().__init__()
        self.gen = PromptGen(prompt_dim, prompt_len, prompt_size, feature_dim)
        self.interact = TransformerBlock(feature_dim + prompt_dim, heads, ffn)
        self.reduce = nn.Conv2d(feature_dim + prompt_dim, out_dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(self.interact(torch.cat([x, self.gen(x)], 1)))


class PromptIR(RestormerEncoder):
    """PromptIR U-Net. Input/output N×3×H×W in [0,1] (any H, W; output unclipped)."""

    def __init__(self, dim: int = 48, num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66, prompt_len: int = 5,
                 prompt_dims: Sequence[int] = (64, 128, 320), prompt_sizes: Sequence[int] = (64, 32, 16),
                 prompt_heads: int = 4) -> None:
        super().__init__()
        ffn = ffn_expansion_factor
        self._build_encoder(dim, num_blocks, heads, ffn)
        p1, p2, p3 = prompt_dims
        s1, s2, s3 = prompt_sizes
        self.prompt3 = PromptBlock(8 * dim, p3, prompt_len, s3, prompt_heads, ffn, out_dim=4 * dim)
        self.up4_3 = upsample(4 * dim)
        self.reduce_chan_level3 = nn.Conv2d(6 * dim, 4 * dim, 1, bias=False)
        self.decoder_level3 = blocks(4 * dim, num_blocks[2], heads[2], ffn)
        self.prompt2 = PromptBlock(4 * dim, p2, prompt_len, s2, prompt_heads, ffn, out_dim=4 * dim)
        self.up3_2 = upsample(4 * dim)
        self.reduce_chan_level2 = nn.Conv2d(4 * dim, 2 * dim, 1, bias=False)
        self.decoder_level2 = blocks(2 * dim, num_blocks[1], heads[1], ffn)
        self.prompt1 = PromptBlock(2 * dim, p1, prompt_len, s1, prompt_heads, ffn, out_dim=2 * dim)
        self.up2_1 = upsample(2 * dim)
        self.decoder_level1 = blocks(2 * dim, num_blocks[0], heads[0], ffn)
        self.refinement = blocks(2 * dim, num_refinement_blocks, heads[0], ffn)
        self.output = nn.Conv2d(2 * dim, 3, 3, padding=1, bias=False)

    def _decode(self, skips: list[Tensor], latent: Tensor, hooks: Sequence[Hook]) -> Tensor:
        enc1, enc2, enc3 = skips
        # Level 4 -> 3 (fusion, then prompt block 3 reduces 8C -> 4C)
        x = self.prompt3(apply_hook(hooks, 2, latent))
        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(x), enc3], 1)))
        # Level 3 -> 2
        x = self.prompt2(apply_hook(hooks, 1, dec3))
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(x), enc2], 1)))
        # Level 2 -> 1
        x = self.prompt1(apply_hook(hooks, 0, dec2))
        dec1 = self.decoder_level1(torch.cat([self.up2_1(x), enc1], 1))
        return self.output(self.refinement(dec1))
