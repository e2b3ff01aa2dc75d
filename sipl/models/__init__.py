"""Restoration models: backbones (``nafnet``, ``promptir``, ``restormer``) and the SIPL wrapper.

``build_model(backbone="nafnet", size="tiny", sipl=True, **overrides)`` is the one entry point; see
``sipl.models.registry``. Parameters are initialised from torch's global generator: call ``torch.manual_seed`` first
for a reproducible initialisation.
"""

from sipl.models.common import EncoderState
from sipl.models.registry import BACKBONES, SIZES, build_model
from sipl.models.sipl import SIPLModel

__all__ = ["BACKBONES", "SIZES", "EncoderState", "SIPLModel", "build_model"]
