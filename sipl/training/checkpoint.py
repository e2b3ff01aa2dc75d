"""Training-state checkpoints: safetensors for tensors, JSON for everything else.

Never pickles. Files are written under a temporary name and renamed, so a reader never sees a partial file.

- ``save_training_state`` / ``load_training_state``: a training checkpoint directory with ``state.safetensors``
  (model, EMA, optimiser tensors, torch RNG) and ``state.json`` (step, optimiser structure, schedule, history).
- ``export_weights``: the weights a final checkpoint exports (``sipl.models.files.save_model`` writes them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sipl.atomic_files import write_json_atomic
from sipl.errors import SiplError
from sipl.models.files import read_json, save_tensors_atomic

STATE_WEIGHTS = "state.safetensors"
STATE_JSON = "state.json"


def flatten_optimizer(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (named ``{prefix}{param}.{key}``) and a JSON structure."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    structure: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, entry in state["state"].items():
        flat = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                name = f"{prefix}{index}.{key}"
                tensors[name] = value
                flat[key] = {"tensor": name}
            else:
                flat[key] = {"value": value}
        structure["state"][str(index)] = flat
    return tensors, structure


def unflatten_optimizer(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    """Inverse of ``flatten_optimizer``: a dict for ``optimizer.load_state_dict``."""
    state = {}
    for index, entry in structure["state"].items():
        state[int(index)] = {key: tensors[v["tensor"]] if "tensor" in v else v["value"] for key, v in entry.items()}
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in structure["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_training_state(directory: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        ema: torch.nn.Module | None, info: dict[str, Any]) -> None:
    """Write a resumable training checkpoint into ``directory`` (created if needed).

    ``info`` (JSON) must hold at least ``step``; the torch RNG state is stored with the tensors."""
    directory = Path(directory)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optim_tensors, optim_structure = flatten_optimizer(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    save_tensors_atomic(directory / STATE_WEIGHTS, tensors)
    write_json_atomic(directory / STATE_JSON, {**info, "optimizer": optim_structure, "has_ema": ema is not None})


def read_training_state(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, info)`` of a training checkpoint directory."""
    directory = Path(directory)
    info = read_json(directory / STATE_JSON)
    try:
        tensors = load_file(str(directory / STATE_WEIGHTS))
    except Exception as error:
        raise SiplError(f"{directory / STATE_WEIGHTS}: unreadable checkpoint ({error})") from None
    return tensors, info


def _sub(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter optimiser tensor (AdamW's moments) its parameter's memory layout, in place.

    Checkpoints store tensors contiguous; restored for a channels_last model, the moments would otherwise have other
    strides than the parameters and gradients, which torch's fused AdamW kernel does not check: it would pair each
    moment with the wrong element of its parameter."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def load_training_state(directory: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        ema: torch.nn.Module | None) -> dict[str, Any]:
    """Restore model, optimiser, EMA and torch RNG in place from ``directory``; returns the JSON ``info``."""
    tensors, info = read_training_state(directory)
    model.load_state_dict(_sub(tensors, "model."))
    if ema is not None:
        ema.load_state_dict(_sub(tensors, "ema.") if info.get("has_ema") else _sub(tensors, "model."))
    optimizer.load_state_dict(unflatten_optimizer(tensors, info["optimizer"]))
    match_state_layout(optimizer)
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return info


def export_weights(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights to export from a training checkpoint (EMA when it was on) and its JSON ``info``."""
    tensors, info = read_training_state(directory)
    return _sub(tensors, "ema." if info.get("has_ema") else "model."), info
