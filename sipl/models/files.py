"""Exported model files: ``models/model.safetensors`` + ``models/model.json``, never pickled.

- ``save_model`` / ``load_model``: the weights (safetensors) and the ``build_model`` arguments under ``"model"`` plus
  free-form metadata (JSON); ``selection.json`` written by ``sipl select`` is merged in, checked by
  ``check_selection``, and its ``affine_min_confidence`` (the degradation head's confidence gate chosen on
  validation) is set on the model's head by ``apply_selection``.
- ``save_tensors_atomic`` / ``read_json``: the safetensors writer and JSON reader that training checkpoints
  (``sipl.training.checkpoint``) share with the model files.

Files are written under a temporary name and renamed, so a reader never sees a partial file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sipl.atomic_files import temp_path_beside, write_json_atomic
from sipl.errors import SiplError

MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
SELECTION_JSON = "selection.json"
FORMAT = "sipl-model/1"
# selection.json's ``affine_min_confidence`` that never applies the head's global affine, and the head's threshold
# for it: above any class probability.
NEVER_GATE = "never"
NEVER_GATE_THRESHOLD = 2.0


def save_tensors_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors file from a name -> tensor mapping (tensors are copied to contiguous CPU memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    tmp = temp_path_beside(path)
    try:
        save_file(flat, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    """The JSON document at ``path``; SiplError naming the file when it is missing or not valid JSON."""
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


def load_model(directory: str | os.PathLike = "models",
               with_selection: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the exported model (eval mode, CPU) and return ``(model, meta)``.

    ``meta`` is the content of ``model.json``; if ``selection.json`` is present (and ``with_selection``) its content
    is added as ``meta["selected"]`` (``{"scheme", "steps", "per_task", ...}``) and its ``affine_min_confidence``, when
    it has one, is set on the model's degradation head (``apply_selection``). ``with_selection=False``: the model as
    exported, whatever selection.json holds (``sipl evaluate``, which scores the gates itself)."""
    from sipl.models import build_model

    directory = Path(directory)
    weights = directory / MODEL_WEIGHTS
    if not weights.is_file() or not (directory / MODEL_JSON).is_file():
        raise SiplError(f"{directory}: no exported model ({MODEL_WEIGHTS} + {MODEL_JSON}); run `sipl train` "
                        "(or `dvc repro train`) first")
    meta = read_json(directory / MODEL_JSON)
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
    if with_selection and selection.is_file():
        meta["selected"] = check_selection(read_json(selection), selection)
        apply_selection(model, meta["selected"], selection)
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


def _is_gate(value: Any) -> bool:
    return value == NEVER_GATE or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and 0.0 <= value <= 1.0)


def gate_threshold(value: float | str) -> float:
    """The head's ``affine_min_confidence`` for a selection.json gate: a probability in [0, 1] as such, ``"never"``
    as ``NEVER_GATE_THRESHOLD``."""
    return NEVER_GATE_THRESHOLD if value == NEVER_GATE else float(value)


def gate_label(threshold: float) -> str:
    """The name of a head threshold in metrics/eval_steps.json and selection.json: ``"never"`` above 1, else the
    number as Python writes it (``"0.0"``, ``"0.9"``)."""
    return NEVER_GATE if threshold > 1.0 else str(float(threshold))


def has_global_affine(model: Any) -> bool:
    """Whether ``model`` (a ``SIPLModel``) has a degradation head with a global affine, the part the gate acts on."""
    head = getattr(model, "head", None)
    return head is not None and getattr(head, "affine", None) is not None


def apply_selection(model: torch.nn.Module, selection: dict[str, Any], path: str | os.PathLike) -> None:
    """Set a checked selection's ``affine_min_confidence`` on ``model``'s degradation head (nothing without the key).

    SiplError naming the file and the key when the model has no head with a global affine: the selection was made
    for another model."""
    if "affine_min_confidence" not in selection:
        return
    if not has_global_affine(model):
        raise SiplError(f"{path}: 'affine_min_confidence' is set, but the model in {MODEL_JSON} beside it has no "
                        "degradation head with global_affine; the file was selected for another model: re-run "
                        "`sipl select` (or `dvc repro select`), or delete the file to pass --steps N")
    model.head.affine_min_confidence = gate_threshold(selection["affine_min_confidence"])


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
    if "affine_min_confidence" in selection and not _is_gate(selection["affine_min_confidence"]):
        raise bad("affine_min_confidence", f"a probability from 0 to 1 or {NEVER_GATE!r}",
                  selection["affine_min_confidence"])
    if "affine_gate" in selection and not isinstance(selection["affine_gate"], dict):
        raise bad("affine_gate", "an object (the per-gate validation scores)", selection["affine_gate"])
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
