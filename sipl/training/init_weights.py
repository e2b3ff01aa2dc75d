"""Start training from existing weights (``train.init_weights``): a model folder or a ``.safetensors`` file.

The file is checked against the model the profile builds before any worker starts, so a wrong shape, a missing or
an unexpected key is one sentence naming the file and the key, never a traceback from inside Ray."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sipl.errors import SiplError

_FIX = ("point train.init_weights at weights of the same model (profile model block and tasks), or set it to null "
        "to train from scratch")


PRETRAINED_PREFIX = "pretrained:"


def weights_file(path: str | Path, key: str = "train.init_weights") -> Path:
    """The ``.safetensors`` file ``path`` names: the file itself, ``model.safetensors`` in a model folder, or for
    ``pretrained:NAME`` the shipped model NAME inside the installed package (found from any working folder)."""
    from sipl.models.files import MODEL_WEIGHTS

    if str(path).startswith(PRETRAINED_PREFIX):
        from sipl.models.shipped import shipped_model_dir

        try:
            return shipped_model_dir(str(path)[len(PRETRAINED_PREFIX):]) / MODEL_WEIGHTS
        except SiplError as error:
            raise SiplError(f"{key}: {error}") from None
    target = Path(path)
    if target.is_dir():
        target = target / MODEL_WEIGHTS
    if not target.is_file():
        raise SiplError(f"{key}: {path} is neither a .safetensors file nor a model folder holding {MODEL_WEIGHTS}; "
                        f"{_FIX}")
    return target


def read_initial_weights(path: str | Path, model: torch.nn.Module,
                         key: str = "train.init_weights") -> dict[str, torch.Tensor]:
    """The tensors of ``path``, checked against ``model``'s state dict (names and shapes).

    Returns the state dict to load (float tensors cast to the model's dtype). Raises SiplError naming the file and
    the first mismatching key."""
    from safetensors.torch import load_file

    target = weights_file(path, key)
    try:
        state = load_file(str(target))
    except Exception as error:  # safetensors raises its own types for truncated or foreign files
        raise SiplError(f"{key}: {target} is not a readable safetensors file ({error}); {_FIX}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise SiplError(f"{key}: {target} lacks the tensor '{missing[0]}' the model needs ({len(missing)} missing in "
                        f"all); {_FIX}")
    if unexpected:
        raise SiplError(f"{key}: {target} holds the tensor '{unexpected[0]}' the model does not have "
                        f"({len(unexpected)} unexpected in all); {_FIX}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise SiplError(f"{key}: {target} tensor '{name}' has shape {tuple(state[name].shape)}, the model needs "
                            f"{tuple(tensor.shape)}; {_FIX}")
    return {name: state[name].to(expected[name].dtype) for name in expected}


def load_initial_weights(path: str | Path, model: torch.nn.Module, key: str = "train.init_weights") -> None:
    """Copy the checked weights of ``path`` into ``model`` in place (any memory format)."""
    state = read_initial_weights(path, model, key)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(state[name])


def weights_digest(path: str | Path, key: str = "train.init_weights") -> str:
    """sha256 of the weights file (part of the run's fingerprint: other initial weights are another run)."""
    digest = hashlib.sha256()
    with open(weights_file(path, key), "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
