"""Model export / import and training-state checkpoints: safetensors for tensors, JSON for everything else.

Never pickles. Files are written under a temporary name and renamed, so a reader never sees a partial file.

- ``save_model`` / ``load_model``: ``models/model.safetensors`` + ``models/model.json`` (the ``build_model``
  arguments under ``"model"`` plus free-form metadata); ``selection.json`` written by ``sipl select`` is merged in.
- ``save_training_state`` / ``load_training_state``: a training checkpoint directory with ``state.safetensors``
  (model, EMA, optimiser tensors, torch RNG) and ``state.json`` (step, optimiser structure, schedule, history).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sipl.errors import SiplError

MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
SELECTION_JSON = "selection.json"
STATE_WEIGHTS = "state.safetensors"
STATE_JSON = "state.json"
FORMAT = "sipl-model/1"


# --------------------------------------------------------------------------------------------- atomic I/O

def _atomic_path(final: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors file from a name -> tensor mapping (tensors are copied to contiguous CPU memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    tmp = _atomic_path(path)
    try:
        save_file(flat, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SiplError(f"{path}: not found") from None
    except json.JSONDecodeError as error:
        raise SiplError(f"{path}: not valid JSON ({error}); re-export the model with `sipl train`") from None


# -------------------------------------------------------------------------------------------- model export

def save_model(model: torch.nn.Module, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Export ``model`` to ``directory/model.safetensors`` and ``directory/model.json``.

    ``model.json`` = ``{"format", "model": model.config, **meta}``; ``meta`` must be JSON-serialisable."""
    directory = Path(directory)
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise SiplError("save_model: the model has no .config dict (build it with sipl.models.build_model)")
    document = {"format": FORMAT, "model": config, **(meta or {})}
    json.dumps(document)  # fail before writing anything if meta is not serialisable
    save_tensors_atomic(directory / MODEL_WEIGHTS, model.state_dict(), metadata={"format": FORMAT})
    write_json_atomic(directory / MODEL_JSON, document)


def load_model(directory: str | os.PathLike = "models") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the exported model (eval mode, CPU) and return ``(model, meta)``.

    ``meta`` is the content of ``model.json``; if ``selection.json`` is present its content is added as
    ``meta["selected"]`` (``{"scheme", "steps", "per_task"}``)."""
    from sipl.models import build_model

    directory = Path(directory)
    weights = directory / MODEL_WEIGHTS
    if not weights.is_file() or not (directory / MODEL_JSON).is_file():
        raise SiplError(f"{directory}: no exported model ({MODEL_WEIGHTS} + {MODEL_JSON}); run `sipl train` "
                        "(or `dvc repro train`) first")
    meta = _read_json(directory / MODEL_JSON)
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise SiplError(f"{directory / MODEL_JSON}: missing the 'model' section (build_model arguments)")
    model = _build_exported(meta["model"], directory / MODEL_JSON)
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types for truncated files
        raise SiplError(f"{weights}: unreadable safetensors file ({error}); re-export with `sipl train`") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        missing, unexpected = [str(error).splitlines()[-1].strip()], []
    if missing or unexpected:
        raise SiplError(f"{weights}: does not match the model in {MODEL_JSON} (missing/mismatched "
                        f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); the two files come from "
                        "different exports")
    selection = directory / SELECTION_JSON
    if selection.is_file():
        meta["selected"] = check_selection(_read_json(selection), selection)
    return model.eval(), meta


def _build_exported(arguments: dict[str, Any], path: Path) -> torch.nn.Module:
    """``build_model(**arguments)`` of a model.json; SiplError names the file and the key instead of a raw error."""
    from sipl.models import BACKBONES, SIZES, build_model

    fix = "the file was edited or comes from another version; re-export the model with `sipl train`"
    for key, allowed in (("backbone", sorted(BACKBONES)), ("size", list(SIZES))):
        if key in arguments and arguments[key] not in allowed:
            raise SiplError(f"{path}: model.{key} is {arguments[key]!r}; allowed: {allowed}; {fix}")
    try:
        return build_model(**arguments)
    except (TypeError, ValueError, RuntimeError) as error:
        raise SiplError(f"{path}: the 'model' section cannot build a model ({error}); {fix}") from None


_SCHEMES = ("official", "anchored")
_ROUTINGS = ("global", "per_degradation")


def _is_steps(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_selection(selection: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Check a ``selection.json`` document (``sipl select``'s output) before anything uses it.

    Returns:
        The document unchanged. Raises SiplError naming the file and the first bad key otherwise.
    """
    fix = "re-run `sipl select` (or `dvc repro select`), or delete the file to pass --steps N"

    def bad(key: str, expected: str, value: Any) -> SiplError:
        return SiplError(f"{path}: '{key}' must be {expected}, got {value!r}; {fix}")

    if not isinstance(selection, dict):
        raise SiplError(f"{path}: expected a JSON object, got {type(selection).__name__}; {fix}")
    if "steps" in selection and not _is_steps(selection["steps"]):
        raise bad("steps", "an integer >= 0", selection["steps"])
    if "scheme" in selection and selection["scheme"] not in _SCHEMES:
        raise bad("scheme", f"one of {list(_SCHEMES)}", selection["scheme"])
    if "routing" in selection and selection["routing"] not in _ROUTINGS:
        raise bad("routing", f"one of {list(_ROUTINGS)}", selection["routing"])
    if "refine_steps" in selection and selection["refine_steps"] != "auto" and not _is_steps(selection["refine_steps"]):
        raise bad("refine_steps", "'auto' or an integer >= 0", selection["refine_steps"])
    for key in ("per_task", "per_family"):
        mapping = selection.get(key)
        if mapping is None:
            continue
        if not isinstance(mapping, dict):
            raise bad(key, "an object of name -> step count", mapping)
        for name, steps in mapping.items():
            if not _is_steps(steps):
                raise bad(f"{key}.{name}", "an integer >= 0", steps)
    return selection


# ----------------------------------------------------------------------------------------- training state

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
    info = _read_json(directory / STATE_JSON)
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
