"""SIPL: all-in-one image restoration with Self-Improved Privilege Learning.

Public API (see README): ``sipl.models.build_model``, ``sipl.refine.refine``, ``sipl.load_model``,
``sipl.metrics.psnr`` / ``sipl.metrics.ssim``.
"""

from sipl import env as _env  # noqa: F401  (analytics off before any tool is imported)

__version__ = "0.1.0"


def load_model(directory="models"):
    """Load an exported model: ``(model, meta)`` from ``directory/model.safetensors`` + ``model.json``.

    ``meta`` holds the backbone config, the training summary and, after ``sipl select``, the selected refinement
    setting. Never unpickles anything."""
    from sipl.models.files import load_model as _load

    return _load(directory)


__all__ = ["load_model", "__version__"]
