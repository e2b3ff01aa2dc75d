"""The SIPL wrapper: any backbone + one Proxy Fusion module per fused decoder level (or none: plain mode).

Forward passes are split so that an input's encoder runs once however many decoder passes restore it:
``state = model.encode(x)``; ``model.decode(state, privileged=None)`` (dictionary-only when ``privileged`` is None).
Privileged features are the backbone's own encoder maps ``[enc level 2, enc level 3, latent]`` of a clean-ish image
(``model.encode_privileged(image)``); they only enter the decoder, through the fusion modules.

With ``degradation_classes`` (names, e.g. ``["clean", "denoise_25", ...]``) the model also carries a
``DegradationHead``: every decoder pass of an input is conditioned on the predicted degradation of that input and, with
``global_affine``, corrected by a predicted per-channel gain and bias (``sipl.models.degradation_head``).
"""

from __future__ import annotations

import dataclasses

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sipl.models.common import Backbone, EncoderState
from sipl.models.degradation_head import Conditioning, DegradationHead, modulate
from sipl.models.proxy_fusion import ProxyFusion

# SIPL arguments per backbone and size live next to each backbone's PRESETS (SIPL_PRESETS); the heads per fusion
# level (0: decoder level 2, 1: decoder level 3, 2: latent) are the official ones there:
# p1_cross 1 / cross_p1 1, p2_cross 2 / cross_p2 2, p3_cross 1 / cross_p3 4.
OFFICIAL_HEADS = {"absorb_heads": (1, 2, 1), "read_heads": (1, 2, 4)}

PRIVILEGED_SOURCES = ("restoration", "ground_truth")

PixelLoss = Callable[[Tensor, Tensor], Tensor]
Privileged = Tensor | Sequence[Tensor] | None


class SIPLModel(nn.Module):
    """Restoration model ``y = model(x, privileged=None)``: x N×3×H×W float in [0,1] (any H, W), y the same shape,
    unclipped. With ``sipl=False`` there are no fusion modules and ``privileged`` is ignored (plain backbone)."""

    def __init__(self, backbone: Backbone, sipl: bool = True, dict_sizes: Sequence[int] = (8, 8, 8),
                 absorb_heads: Sequence[int] = (1, 2, 1), read_heads: Sequence[int] = (1, 2, 4),
                 fusion_ffn: float = 2.0, dict_init: str = "normal", degradation_classes: Sequence[str] = (),
                 global_affine: bool = False, affine_min_confidence: float = 0.0,
                 config: dict[str, Any] | None = None) -> None:
        """``degradation_classes``: class names of the degradation head (empty: no head); ``global_affine``: the head
        also predicts an output gain and bias (needs ``degradation_classes``), applied at test time only to inputs
        classified with at least ``affine_min_confidence``."""
        super().__init__()
        self.backbone = backbone
        self.sipl = bool(sipl)
        self.multiple = backbone.multiple
        self.config: dict[str, Any] = dict(config or {})
        if self.sipl:
            for name, value in (("dict_sizes", dict_sizes), ("absorb_heads", absorb_heads),
                                ("read_heads", read_heads)):
                if len(value) != 3:
                    raise ValueError(f"{name} needs 3 entries (fusion levels: dec level 2, dec level 3, latent)")
            self.fusion = nn.ModuleList([
                ProxyFusion(c, s, a, r, fusion_ffn, dict_init)
                for c, s, a, r in zip(backbone.fusion_channels, dict_sizes, absorb_heads, read_heads)
            ])
        else:
            self.fusion = None
        self.degradation_classes = [str(name) for name in degradation_classes]
        if global_affine and not self.degradation_classes:
            raise ValueError("global_affine needs degradation_classes (the head that predicts the gain and bias)")
        self.head = (DegradationHead(backbone.fusion_channels, len(self.degradation_classes),
                                     global_affine=global_affine, affine_min_confidence=affine_min_confidence)
                     if self.degradation_classes else None)

    # ---------------------------------------------------------------------------------------------- passes

    def encode(self, x: Tensor) -> EncoderState:
        """Encoder state of N×3×H×W ``x``; reuse it for every decoder pass restoring ``x``."""
        return self.backbone.encode(x)

    def encode_privileged(self, image: Tensor) -> list[Tensor]:
        """Privileged features of N×3×H×W ``image``: ``[enc level 2, enc level 3, latent]`` (grad is the caller's)."""
        return self.backbone.privileged_features(self.backbone.encode(image))

    def _as_features(self, privileged: Privileged) -> list[Tensor] | None:
        if privileged is None or not self.sipl:
            return None
        if isinstance(privileged, Tensor):
            with torch.no_grad():
                return self.encode_privileged(privileged)
        features = list(privileged)
        if len(features) != 3:
            raise ValueError(f"privileged features: expected 3 maps (enc2, enc3, latent), got {len(features)}")
        return features

    def condition(self, state: EncoderState, labels: Tensor | None = None) -> Conditioning | None:
        """The degradation head's prediction for an encoder state (None without a head). ``labels`` (N class
        indices, training): condition on the known classes instead of the predicted ones (teacher forcing)."""
        if self.head is None:
            return None
        h, w = state.size
        weights = None
        if labels is not None:
            weights = nn.functional.one_hot(labels.to(state.image.device), len(self.degradation_classes)).float()
        return self.head(state.image[..., :h, :w], weights)

    def classify(self, x: Tensor) -> Tensor:
        """Degradation class probabilities N×K of N×3×H×W inputs (order: ``degradation_classes``)."""
        if self.head is None:
            raise ValueError("this model has no degradation head (built without degradation_classes)")
        return self.condition(self.encode(x)).logits.softmax(dim=1)

    def _finish(self, state: EncoderState, out: Tensor, condition: Conditioning | None) -> Tensor:
        # The gain and bias enter the output detached: they are trained only by their own loss (the affine-only
        # output against the target, ``affine_loss``), never by the restoration loss. Trained jointly, affine and
        # residual are not identifiable (the affine flattens contrast, the residual puts it back on the training
        # photos) and on unseen photos the pair left a colour cast that cost the mild tasks 2-4 dB.
        if condition is None or condition.gain is None:
            return out
        h, w = state.size
        x = state.image[..., :h, :w]
        return out + x * condition.gain.detach().to(out.dtype) + condition.bias.detach().to(out.dtype)

    @staticmethod
    def affine_loss(lq: Tensor, gt: Tensor, condition: Conditioning | None, pixel_loss: PixelLoss) -> Tensor | None:
        """Pixel loss of the head's global affine alone, ``lq + lq·gain + bias`` against ``gt`` (None without one)."""
        if condition is None or condition.gain is None:
            return None
        return pixel_loss(lq + lq * condition.gain + condition.bias, gt)

    def decode(self, state: EncoderState, privileged: Privileged = None, mix: Tensor | None = None,
               dictionary_only: int = 0, condition: Conditioning | None = None) -> Tensor:
        """Restore from an encoder state. ``privileged``: None (dictionary-only path), 3 feature maps, or an
        M×3×H×W image (its features are computed under no_grad). ``dictionary_only``: the first that many samples
        of the batch take the dictionary-only path and ``privileged`` covers the remaining M. ``mix``: optional
        per-sample weights M in [0,1] blending each level's ensemble with the raw dictionary (the official random
        proxy). ``condition``: the head's prediction for ``state`` when the caller already has it (computed here
        otherwise)."""
        if condition is None:
            condition = self.condition(state)
        film = condition.film if condition is not None else [None, None, None]
        if not self.sipl:
            hooks = [None if f is None else (lambda feature, f=f: modulate(feature, f)) for f in film]
            return self._finish(state, self.backbone.decode(state, hooks), condition)
        features = self._as_features(privileged)
        batch = state.image.shape[0]
        hooks = []
        for level, fusion in enumerate(self.fusion):
            ensemble = fusion.ensemble(None if features is None else features[level], batch, mix, dictionary_only)
            if film[level] is None:
                hooks.append(lambda feature, fusion=fusion, ensemble=ensemble: fusion(feature, ensemble))
            else:
                hooks.append(lambda feature, fusion=fusion, ensemble=ensemble, f=film[level]:
                             fusion(modulate(feature, f), ensemble))
        return self._finish(state, self.backbone.decode(state, hooks), condition)

    def forward(self, x: Tensor, privileged: Privileged = None) -> Tensor:
        return self.decode(self.encode(x), privileged)

    # -------------------------------------------------------------------------------------------- training

    def training_step(self, lq: Tensor, gt: Tensor, pixel_loss: PixelLoss, preliminary_weight: float = 0.5,
                      random_proxy: bool = False, generator: torch.Generator | None = None,
                      self_privileged: float = 0.0, privileged_source: str = "restoration",
                      preliminary_share: float | None = None, labels: Tensor | None = None,
                      degradation_weight: float = 0.0, affine_weight: float = 1.0) -> dict[str, Tensor]:
        """One SIPL training forward. lq, gt: N×3×H×W in [0,1]. Returns {"loss", "main"} plus "preliminary" when
        ``preliminary_weight > 0`` (SIPL mode only); "loss" is the total to backprop.

        Official recipe (``privileged_source="restoration"``), without gradients: restore ``gt`` on the
        dictionary-only path, clip, take the encoder features of that restoration; then restore ``lq`` with them
        ("main"). ``"ground_truth"`` takes the encoder features of ``gt`` itself and skips that no-grad restoration
        (about 1.1 forward passes a step; the public material leaves open which of the two the paper trained with).

        Ours in addition: the dictionary-only restoration of ``lq`` is trained too (weight ``preliminary_weight``).
        ``preliminary_share=None``: on every sample, one more decoder pass with gradients (lq's encoder state is
        reused). A share in (0, 1): that share of the batch (at least one sample, at least one left; a random subset
        drawn from ``generator``) takes the dictionary-only path inside the same decoder pass and its loss is the
        preliminary loss, so the step costs no more than the official one; each path sees part of the batch.

        ``random_proxy`` mixes ensemble and raw dictionary with w ~ U(0,1) per sample (drawn from ``generator``).
        ``self_privileged``: the fraction of batches (drawn from ``generator``) whose privileged features come from the
        model's own preliminary restoration of ``lq`` instead. That is exactly what a refinement step sees at test
        time, so it teaches the fused path to improve on the preliminary output rather than to trust near-clean
        features it never gets after training; it also skips the no-grad GT restoration.

        ``labels`` (N class indices into ``degradation_classes``) with ``degradation_weight > 0``: adds the
        cross-entropy of the degradation head ("degradation") to the loss, and the head's FiLM and affine take the
        known classes (teacher forcing). With a global affine, ``affine_weight`` × its own loss ("affine", see
        ``affine_loss``) is added: the only loss that trains the gain and bias."""
        if not self.sipl:
            state = self.encode(lq)
            condition = self.condition(state, labels)
            main = pixel_loss(self.decode(state, condition=condition), gt)
            out = {"main": main}
            out["loss"] = main + self._head_losses(lq, gt, condition, labels, degradation_weight, affine_weight,
                                                   pixel_loss, out)
            return out
        if privileged_source not in PRIVILEGED_SOURCES:
            raise ValueError(f"privileged_source {privileged_source!r} is not one of {PRIVILEGED_SOURCES}")
        use_own = self_privileged > 0 and float(torch.rand((), generator=generator)) < self_privileged
        split = preliminary_weight > 0 and preliminary_share is not None
        n_dict = 0
        if split:
            n_dict = dictionary_only_count(lq.shape[0], preliminary_share, generator)
            order = torch.randperm(lq.shape[0], generator=generator).to(lq.device)
            lq, gt = lq[order], gt[order]
            labels = labels[order.to(labels.device)] if labels is not None else None
        state = self.encode(lq)
        condition = self.condition(state, labels)
        preliminary = (self.decode(state, condition=condition) if preliminary_weight > 0 and not split else None)
        with torch.no_grad():
            if use_own:
                source = (preliminary.detach() if preliminary is not None
                          else self.decode(rows(state, n_dict), condition=rows_condition(condition, n_dict)))
            elif privileged_source == "restoration":
                source = self.decode(self.encode(gt[n_dict:]))
            else:
                source = gt[n_dict:]
            privileged = self.encode_privileged(source.clamp(0, 1))
        mix = None
        if random_proxy:
            mix = torch.rand(lq.shape[0] - n_dict, generator=generator).to(lq.device)
        restored = self.decode(state, privileged, mix, dictionary_only=n_dict, condition=condition)
        main = pixel_loss(restored[n_dict:], gt[n_dict:])
        out = {"main": main}
        loss = main
        if preliminary_weight > 0:
            out["preliminary"] = (pixel_loss(restored[:n_dict], gt[:n_dict]) if split
                                  else pixel_loss(preliminary, gt))
            loss = loss + preliminary_weight * out["preliminary"]
        out["loss"] = loss + self._head_losses(lq, gt, condition, labels, degradation_weight, affine_weight,
                                               pixel_loss, out)
        return out

    def _head_losses(self, lq: Tensor, gt: Tensor, condition: Conditioning | None, labels: Tensor | None,
                     degradation_weight: float, affine_weight: float, pixel_loss: PixelLoss,
                     out: dict[str, Tensor]) -> Tensor | float:
        """The degradation head's loss terms on the main batch (recorded in ``out``)."""
        total = self._degradation_loss(condition, labels, degradation_weight, out)
        affine = self.affine_loss(lq, gt, condition, pixel_loss) if affine_weight > 0 else None
        if affine is not None:
            out["affine"] = affine
            total = total + affine_weight * affine
        return total

    def head_step(self, lq: Tensor, gt: Tensor, labels: Tensor, pixel_loss: PixelLoss, degradation_weight: float,
                  affine_weight: float) -> dict[str, Tensor]:
        """Loss terms that train only the degradation head on extra crops: ``head_degradation`` (cross-entropy against
        ``labels``) and, with a global affine and ``affine_weight > 0``, ``head_affine`` (pixel loss of
        ``lq + lq·gain + bias`` against ``gt``). lq, gt: M×3×h×w in [0, 1]. ``head_loss`` is their weighted sum."""
        if self.head is None:
            raise ValueError("head_step needs a degradation head (build with degradation_classes)")
        weights = nn.functional.one_hot(labels.to(lq.device), len(self.degradation_classes)).float()
        condition = self.head(lq, weights)
        out = {"head_degradation": nn.functional.cross_entropy(condition.logits.float(), labels.to(lq.device))}
        loss = degradation_weight * out["head_degradation"]
        if condition.gain is not None and affine_weight > 0:
            out["head_affine"] = self.affine_loss(lq, gt, condition, pixel_loss)
            loss = loss + affine_weight * out["head_affine"]
        out["head_loss"] = loss
        return out

    @staticmethod
    def _degradation_loss(condition: Conditioning | None, labels: Tensor | None, weight: float,
                          out: dict[str, Tensor]) -> Tensor | float:
        """``weight`` × cross-entropy of the head's logits against ``labels`` (recorded as ``out["degradation"]``);
        0 without a head, labels or weight."""
        if condition is None or labels is None or weight <= 0:
            return 0.0
        out["degradation"] = nn.functional.cross_entropy(condition.logits.float(), labels.to(condition.logits.device))
        return weight * out["degradation"]


def dictionary_only_count(batch: int, share: float, generator: torch.Generator | None = None) -> int:
    """How many of ``batch`` samples take the dictionary-only path for ``preliminary_share=share``: ``batch·share``
    rounded stochastically (so the expected share is exact), kept within [1, batch - 1]."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"preliminary_share must lie strictly between 0 and 1, got {share}")
    if batch < 2:
        raise ValueError(f"preliminary_share={share} splits each batch between the dictionary-only and the fused "
                         f"path and needs at least 2 samples per worker batch, got {batch}: raise the batch size "
                         "or set preliminary_share to null")
    u = float(torch.rand((), generator=generator))
    return min(max(int(batch * share + u), 1), batch - 1)


def rows_condition(condition: Conditioning | None, start: int) -> Conditioning | None:
    """The head's prediction for samples ``start:`` of a batch."""
    if condition is None:
        return None
    return Conditioning(condition.logits[start:], [(s[start:], b[start:]) for s, b in condition.film],
                        None if condition.gain is None else condition.gain[start:],
                        None if condition.bias is None else condition.bias[start:])


def rows(state: EncoderState, start: int) -> EncoderState:
    """The encoder state of samples ``start:`` of a batch."""
    return dataclasses.replace(state, image=state.image[start:], skips=[s[start:] for s in state.skips],
                               latent=state.latent[start:])
