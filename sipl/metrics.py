"""The public path of ``psnr`` and ``ssim`` (README: ``sipl.metrics.psnr``), defined in ``sipl.evaluation.metrics``."""

from sipl.evaluation.metrics import psnr, ssim

__all__ = ["psnr", "ssim"]
