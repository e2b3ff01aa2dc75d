"""Degradation awareness for a blind all-in-one restorer: classify the input's degradation, condition the decoder on
it, and correct the global colour level.

One small head reads the input through its own little encoder (three stride-2 convolutions, pooled to the mean and
standard deviation of each channel: a degradation encoder as in AirNet, separate from the restorer so that its
features serve telling degradations apart) plus the input's per-channel mean, standard deviation and mean absolute
gradient (noise raises it, blur lowers it), layer-normalised, and predicts

- ``logits`` over the degradation classes the model was trained on (``"clean"`` plus one per task); trained with a
  cross-entropy loss on the known task of every training sample, the way AirNet and PromptIR tell degradations apart
  (there implicitly), and used at test time to pick per-family refinement settings;
- per-channel FiLM scales and shifts for the three fused decoder levels, one set per class, so the decoder behaves
  differently for different degradations (a blind model otherwise applies the mix's average correction everywhere:
  haze removal to blurred images, brightening to clean ones);
- a per-channel gain and bias added to the output as ``x·gain + bias`` next to the residual (the global affine of
  dehazing models such as DehazeFormer's ``K·I − B + I``), regressed per class, so large global level changes (haze,
  low light) need not be built pixel by pixel through the residual.

Both are mixed by class weights: in training the one-hot of the sample's known class (so each class's FiLM and
regressor learn only their own degradation and never the hedge "a bit of every correction" that a shared regressor
learns when the class is uncertain: measured, that hedge cost the mild tasks 2-4 dB), at test time the predicted
probabilities.

Everything that acts on the image or the features starts at exactly zero, so a new head is the identity. The gain
and bias are the affine layer's output times ``AFFINE_SCALE``: one weight of the layer then moves the gain by a tenth
of the learning rate per Adam step, so a gain shared by every pixel cannot jump between batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

AFFINE_SCALE = 0.1
IMAGE_STATS = 9  # per channel: mean, standard deviation, mean absolute gradient


@dataclass
class Conditioning:
    """Output of ``DegradationHead``: ``logits`` N×K; ``film`` per fused level (scale, shift), each N×C×1×1;
    ``gain``, ``bias`` N×3×1×1 (None when the head has no global affine)."""

    logits: Tensor
    film: list[tuple[Tensor, Tensor]]
    gain: Tensor | None
    bias: Tensor | None


class DegradationHead(nn.Module):
    """Degradation classifier + decoder FiLM + global affine from pooled features.

    ``level_channels``: channels of the three fused decoder levels;
    ``classes``: number of degradation classes (>= 2); ``global_affine``: predict the output gain and bias."""

    def __init__(self, level_channels: Sequence[int], classes: int, hidden: int = 64, width: int = 16,
                 global_affine: bool = True, affine_min_confidence: float = 0.0) -> None:
        """``affine_min_confidence``: at test time (no ``class_weights``) the gain and bias are applied only to
        inputs whose most probable class has at least this probability; a correction made for the wrong class
        (brightening a photo taken for low light) costs far more than a missed one."""
        super().__init__()
        if classes < 2:
            raise ValueError(f"degradation_classes needs at least 2 names (clean + one task), got {classes}")
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GELU())
        features = 8 * width + IMAGE_STATS
        self.body = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, hidden), nn.GELU(),
                                  nn.Linear(hidden, hidden), nn.GELU())
        self.classify = nn.Linear(hidden, classes)
        self.film = nn.ModuleList([nn.Linear(classes, 2 * c) for c in level_channels])
        self.classes = classes
        self.affine_min_confidence = float(affine_min_confidence)
        self.affine = nn.Linear(hidden, 6 * classes) if global_affine else None
        with torch.no_grad():
            for layer in [*self.film, *([self.affine] if self.affine is not None else [])]:
                layer.weight.zero_()
                layer.bias.zero_()

    def forward(self, image: Tensor, class_weights: Tensor | None = None) -> Conditioning:
        """``image``: N×3×H×W input in [0, 1] (H, W >= 8); ``class_weights``: N×K weights of the classes' FiLM and
        affine (e.g. the one-hot of known labels); None = the predicted probabilities."""
        image = image.float()
        latent = self.encoder(image)
        gradient = ((image[..., 1:, :] - image[..., :-1, :]).abs().mean(dim=(2, 3))
                    + (image[..., :, 1:] - image[..., :, :-1]).abs().mean(dim=(2, 3)))
        stats = torch.cat([latent.mean(dim=(2, 3)), latent.std(dim=(2, 3)), image.mean(dim=(2, 3)),
                           image.std(dim=(2, 3)), gradient], dim=1)
        hidden = self.body(stats)
        logits = self.classify(hidden)
        weights = logits.softmax(dim=1) if class_weights is None else class_weights.to(logits.dtype)
        film = []
        for layer in self.film:
            scale, shift = layer(weights)[..., None, None].chunk(2, dim=1)
            film.append((scale, shift))
        gain = bias = None
        if self.affine is not None:
            per_class = self.affine(hidden).view(hidden.shape[0], weights.shape[1], 6)
            affine = AFFINE_SCALE * torch.einsum("nk,nkc->nc", weights, per_class)
            if class_weights is None and self.affine_min_confidence > 0:
                confident = weights.max(dim=1, keepdim=True).values >= self.affine_min_confidence
                affine = affine * confident.to(affine.dtype)
            gain, bias = affine[..., None, None].chunk(2, dim=1)
        return Conditioning(logits, film, gain, bias)


def modulate(feature: Tensor, film: tuple[Tensor, Tensor]) -> Tensor:
    """``feature·(1 + scale) + shift`` (N×C×H×W with N×C×1×1 scale and shift)."""
    scale, shift = film
    return feature * (1 + scale.to(feature.dtype)) + shift.to(feature.dtype)
