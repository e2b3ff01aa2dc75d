"""The trained model that ships inside the package, and which model a command uses when none is named.

The shipped model lives in ``sipl/pretrained/<name>/`` (``model.safetensors``, ``model.json``, ``selection.json``,
``MODEL_CARD.md``, the params that reproduce it and the list of its training photos), so an installed ``sipl`` has it
and ``sipl restore`` works before any training. Nothing is downloaded at run time."""

from __future__ import annotations

from pathlib import Path

from sipl.errors import SiplError
from sipl.models.files import MODEL_JSON, MODEL_WEIGHTS

SHIPPED_NAME = "tiny-bsds432"
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def shipped_model_dir(name: str = SHIPPED_NAME) -> Path:
    """The folder of a shipped model; SiplError naming the folder when it is not part of this installation."""
    folder = PRETRAINED_DIR / name
    if not (folder / MODEL_WEIGHTS).is_file() or not (folder / MODEL_JSON).is_file():
        available = sorted(p.name for p in PRETRAINED_DIR.iterdir() if p.is_dir()) if PRETRAINED_DIR.is_dir() else []
        raise SiplError(f"{folder}: no shipped model '{name}' in this installation (have: {available or 'none'}); "
                        "reinstall sipl, or pass --model with a folder `sipl train` exported")
    return folder


def default_model_dir(trained: str | Path = "models") -> tuple[Path, str]:
    """The model a command uses when none is named: ``(folder, why)``.

    ``trained`` (the pipeline's ``models/``) when it holds an exported model, so after ``dvc repro`` the model
    trained here is used; otherwise the shipped model."""
    trained = Path(trained)
    if (trained / MODEL_WEIGHTS).is_file() and (trained / MODEL_JSON).is_file():
        return trained, f"{trained}/ (trained by this project's pipeline)"
    folder = shipped_model_dir()
    return folder, f"the shipped model {SHIPPED_NAME} (no {trained}/ here; see {folder / 'MODEL_CARD.md'})"
