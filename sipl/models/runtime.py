"""Choosing how a model runs at test time: the engine (ONNX Runtime or eager PyTorch) and the device.

``for_inference(model, engine, device)`` returns an object with the test-time interface ``sipl.models.refine`` uses
(``encode``, ``decode(state, privileged_image=None)``, ``classify``, ``sipl``, ``multiple``, ``degradation_classes``):

- ``engine="onnx"`` (CPU): the exported graphs run by ONNX Runtime (``sipl.models.onnx_engine``), ~4× faster than
  eager on this U-Net; outputs within ~1e-6 of eager.
- ``engine="eager"``: the PyTorch module itself.
- ``engine="auto"``: ONNX Runtime on CPU, eager on CUDA.
- ``device="cuda"``: the module on the GPU, under bf16 autocast where the GPU supports it (outputs then differ from
  fp32 by bf16 rounding, ~1e-2 at most per pixel); results come back as float32 CPU tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sipl.errors import SiplError

ENGINES = ("auto", "onnx", "eager")
DEVICES = ("cpu", "cuda")


class DeviceModel:
    """A model on an accelerator behind the CPU test-time interface: inputs and outputs are CPU float32 tensors,
    N×3×H×W in [0, 1]; the encoder state stays on the device."""

    def __init__(self, model: nn.Module, device: str, dtype: torch.dtype | None) -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.sipl = bool(getattr(model, "sipl", False))
        self.multiple = model.multiple
        self.degradation_classes = list(getattr(model, "degradation_classes", []))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def encode(self, x: Tensor) -> Any:
        with self._autocast():
            return self.model.encode(x.to(self.device))

    def decode(self, state: Any, privileged: Tensor | None = None) -> Tensor:
        image = None if privileged is None else privileged.to(self.device)
        with self._autocast():
            out = self.model.decode(state, image)
        return out.float().cpu()

    def classify(self, x: Tensor) -> Tensor:
        with self._autocast():
            return self.model.classify(x.to(self.device)).float().cpu()

    def eval(self) -> "DeviceModel":
        return self


def for_inference(model: nn.Module, engine: str = "auto", device: str = "cpu") -> Any:
    """The model ready for ``sipl.models.refine``: see the module docstring for ``engine`` and ``device``."""
    if engine not in ENGINES:
        raise SiplError(f"unknown engine {engine!r}; use one of {list(ENGINES)}")
    if device not in DEVICES:
        raise SiplError(f"unknown device {device!r}; use one of {list(DEVICES)}")
    model.eval()
    if device == "cuda":
        if engine == "onnx":
            raise SiplError("the onnx engine runs on the CPU; with --device cuda use --engine auto or eager")
        if not torch.cuda.is_available():
            raise SiplError("--device cuda: PyTorch sees no CUDA device here (torch.cuda.is_available() is False); "
                            "install a CUDA build of torch on a GPU machine, or use --device cpu")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return DeviceModel(model, "cuda", dtype)
    if engine == "eager":
        return model
    from sipl.models.onnx_engine import OnnxModel

    return OnnxModel(model)
