"""Proxy Fusion with a Privileged Dictionary (one module per fused decoder level).

(A) ``absorb``: the dictionary's S×S tokens attend to the privileged feature tokens of the level -> the "ensemble"
(S×S, same channels); with no privileged features the ensemble is the raw dictionary.
(B) ``read``: the decoder feature tokens attend to the ensemble tokens; the block's output replaces the feature.

Both are the same cross-attention block: LayerNorm on query and context, token-wise (spatial) multi-head attention with
q from a 1×1 + 3×3 depthwise conv and k/v likewise, cosine-normalised q/k times a learnable per-head temperature,
softmax over the context tokens, residual onto the *normalised* query, then LayerNorm + dual-gated GELU FFN (factor 2)
with a residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sipl.models.common import LayerNorm2d

DICT_INITS = ("zeros", "normal", "uniform")


class CrossAttention(nn.Module):
    """Spatial cross-attention: every query pixel attends to every context pixel. Query N×C×H×W, context N×C×h×w."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"cross-attention: {channels} channels are not divisible by {heads} heads")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Conv2d(channels, channels, 1, bias=False)
        self.q_dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.kv = nn.Conv2d(channels, 2 * channels, 1, bias=False)
        self.kv_dw = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)

    def _tokens(self, x: Tensor) -> Tensor:
        """N×C×H×W -> N×heads×(H·W)×(C/heads). From a map whose channels are its innermost axis (channels_last,
        or a channel slice of one) this is a view whose last axis is contiguous, which CPU attention needs for its
        fused kernel (otherwise it falls back to batched matmuls over a transposed copy)."""
        n, c, h, w = x.shape
        if x.stride(1) == 1:
            return x.permute(0, 2, 3, 1).reshape(n, h * w, self.heads, c // self.heads).transpose(1, 2)
        return x.reshape(n, self.heads, c // self.heads, h * w).transpose(-1, -2)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q = F.normalize(self._tokens(self.q_dw(self.q(x))), dim=-1) * self.temperature
        k, v = self.kv_dw(self.kv(context)).chunk(2, dim=1)
        k = F.normalize(self._tokens(k), dim=-1)
        # scale=1: the temperature already multiplies the cosine similarities (SDPA keeps memory linear in tokens).
        out = F.scaled_dot_product_attention(q, k, self._tokens(v), scale=1.0)
        if x.is_contiguous(memory_format=torch.channels_last):
            # back to a channels_last map without a copy, as the rest of the network runs in that layout
            return self.proj(out.transpose(1, 2).reshape(n, h, w, c).permute(0, 3, 1, 2))
        return self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class DualGateFFN(nn.Module):
    """1×1 expand to 2·hidden, 3×3 depthwise, gelu(a)·b + gelu(b)·a, 1×1 back."""

    def __init__(self, channels: int, expansion: float = 2.0) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b + F.gelu(b) * a)


class CrossBlock(nn.Module):
    """Query N×C×H×W, context N×C×h×w -> N×C×H×W."""

    def __init__(self, channels: int, heads: int, ffn_expansion: float = 2.0) -> None:
        super().__init__()
        self.norm_q = LayerNorm2d(channels)
        self.norm_kv = LayerNorm2d(channels)
        self.attn = CrossAttention(channels, heads)
        self.norm_ffn = LayerNorm2d(channels)
        self.ffn = DualGateFFN(channels, ffn_expansion)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.norm_q(x)
        x = x + self.attn(x, self.norm_kv(context))
        return x + self.ffn(self.norm_ffn(x))


def init_dictionary(tensor: Tensor, init: str) -> None:
    """Fill a dictionary in place: 'zeros' (the official code), 'normal' (std 0.02) or 'uniform' ([0, 1))."""
    if init == "zeros":
        nn.init.zeros_(tensor)
    elif init == "normal":
        nn.init.normal_(tensor, std=0.02)
    elif init == "uniform":
        nn.init.uniform_(tensor, 0.0, 1.0)
    else:
        raise ValueError(f"dict_init {init!r} is not one of {DICT_INITS}")


class ProxyFusion(nn.Module):
    """One fused level: a learnable S×S×C Privileged Dictionary, the absorb block (A) and the read block (B)."""

    def __init__(self, channels: int, dict_size: int, absorb_heads: int, read_heads: int,
                 ffn_expansion: float = 2.0, dict_init: str = "normal") -> None:
        super().__init__()
        self.dictionary = nn.Parameter(torch.empty(1, channels, dict_size, dict_size))
        init_dictionary(self.dictionary.data, dict_init)
        self.absorb = CrossBlock(channels, absorb_heads, ffn_expansion)
        self.read = CrossBlock(channels, read_heads, ffn_expansion)

    def ensemble(self, privileged: Tensor | None, batch: int, mix: Tensor | None = None,
                 dictionary_only: int = 0) -> Tensor:
        """N×C×S×S ensemble tokens. ``privileged``: M×C×h×w or None (-> the raw dictionary for every sample).
        ``dictionary_only``: the first that many samples get the raw dictionary and ``privileged`` covers the other
        M = N - dictionary_only. ``mix``: optional per-sample weights M (in [0,1]) blending ensemble and raw
        dictionary (``w·ensemble + (1-w)·dictionary``)."""
        raw = self.dictionary.expand(batch, -1, -1, -1)
        if not torch.is_grad_enabled():
            raw = raw.detach()  # a view made under no_grad still claims requires_grad; module hooks trip on it
        if privileged is None:
            return raw
        if privileged.shape[0] != batch - dictionary_only:
            raise ValueError(f"privileged features cover {privileged.shape[0]} samples; expected "
                             f"{batch - dictionary_only} ({batch} in the batch, {dictionary_only} dictionary-only)")
        fused_raw = raw[dictionary_only:]
        out = self.absorb(fused_raw, privileged)
        if mix is not None:
            w = mix.to(out.dtype).view(-1, 1, 1, 1)
            out = w * out + (1 - w) * fused_raw
        if dictionary_only:
            head = raw[:dictionary_only]
            if out.is_contiguous(memory_format=torch.channels_last):
                head = head.contiguous(memory_format=torch.channels_last)  # else cat returns N×C×H×W
            out = torch.cat([head, out])
        return out

    def forward(self, feature: Tensor, ensemble: Tensor) -> Tensor:
        """Decoder feature N×C×H×W reads the ensemble N×C×S×S -> N×C×H×W."""
        return self.read(feature, ensemble)


def dictionary_parameters(channels: tuple[int, ...], sizes: tuple[int, ...]) -> int:
    """Parameter count of the dictionaries alone (for documentation and tests)."""
    return sum(c * s * s for c, s in zip(channels, sizes))


__all__ = ["CrossAttention", "CrossBlock", "DualGateFFN", "ProxyFusion", "DICT_INITS", "dictionary_parameters",
           "init_dictionary"]
