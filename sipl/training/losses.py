"""Pixel losses for training: L1, Charbonnier, a frequency-domain L1, a per-image RMSE and a per-image PSNR loss,
combined by the weights of ``LossConfig``.

All functions take ``pred`` and ``target`` float tensors N×C×H×W (any range; images are [0,1]) and return a scalar
tensor (mean over every element).
"""

from __future__ import annotations

from typing import Callable

import torch

PixelLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error."""
    return (pred - target).abs().mean()


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean of sqrt((pred - target)^2 + eps^2): a smooth L1 (eps sets the quadratic zone)."""
    return torch.sqrt((pred - target).square() + eps * eps).mean()


def fft_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the real 2-D spectra (real and imaginary parts), orthonormal so the scale matches pixel L1."""
    diff = torch.fft.rfft2(pred.float() - target.float(), norm="ortho")
    return torch.view_as_real(diff).abs().mean()


def rmse_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over images of sqrt(MSE), the per-image root-mean-square error.

    Its gradient with respect to one image's pixels is that image's error direction with unit norm whatever the error's
    size: every image pulls equally hard. A pooled L1 or MSE lets the large errors of low light and haze drown the
    mild tasks; ``psnr_loss`` (gradient norm 1/RMSE) does the reverse and starves them."""
    mse = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
    return torch.sqrt(mse + eps).mean()


def psnr_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over images of log10(MSE) (= -PSNR/10 for data range 1).

    Each image's error counts relative to its own size, so easy tasks (mild blur, light noise; input PSNR ~30 dB)
    are not traded away for the large absolute errors of hard ones (haze, low light) the way a pooled L1 does:
    it optimises the mean per-image PSNR the evaluation reports."""
    mse = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
    return torch.log10(mse + eps).mean()


def pixel_loss(l1_weight: float = 1.0, charbonnier_weight: float = 0.0, fft_weight: float = 0.0,
               psnr_weight: float = 0.0, rmse_weight: float = 0.0) -> PixelLoss:
    """A loss ``fn(pred, target) -> scalar`` summing the terms with non-zero weight.

    Raises ValueError when every weight is zero (the model would get no pixel supervision)."""
    terms: list[tuple[float, PixelLoss]] = [
        (w, fn) for w, fn in ((l1_weight, l1), (charbonnier_weight, charbonnier), (fft_weight, fft_l1),
                              (psnr_weight, psnr_loss), (rmse_weight, rmse_loss)) if w > 0
    ]
    if not terms:
        raise ValueError("train.loss: l1, charbonnier, fft, psnr and rmse are all 0; give at least one a positive "
                         "weight")

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = terms[0][0] * terms[0][1](pred, target)
        for weight, fn in terms[1:]:
            total = total + weight * fn(pred, target)
        return total

    return loss


def from_config(loss_cfg) -> PixelLoss:
    """``pixel_loss`` from a ``sipl.config.profiles.LossConfig``."""
    return pixel_loss(loss_cfg.l1, loss_cfg.charbonnier, loss_cfg.fft, loss_cfg.psnr, loss_cfg.rmse)
