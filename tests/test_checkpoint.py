"""Model export / import and training-state checkpoints (safetensors + JSON, never pickle)."""

from __future__ import annotations

import json

import pytest
import torch

from sipl.errors import SiplError
from sipl.models import build_model
from sipl.models.files import load_model, save_model
from sipl.training.checkpoint import flatten_optimizer, load_training_state, save_training_state, unflatten_optimizer

torch.set_num_threads(1)
SMALL = {"width": 8, "middle_blocks": 1}


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("nafnet", "tiny", sipl=True, **{**SMALL, **kw})


def test_save_and_load_model_round_trip(tmp_path):
    model = _model()
    save_model(model, tmp_path / "models", {"profile": "tiny", "training": {"steps": 3}})
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.json", "model.safetensors"]
    loaded, meta = load_model(tmp_path / "models")
    assert meta["profile"] == "tiny" and meta["model"] == model.config and "selected" not in meta
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    (tmp_path / "models" / "selection.json").write_text(json.dumps({"scheme": "anchored", "steps": 2,
                                                                    "per_task": {"a": 1}}))
    assert load_model(tmp_path / "models")[1]["selected"]["steps"] == 2
    assert b"pickle" not in (tmp_path / "models" / "model.safetensors").read_bytes()[:200]


def test_load_model_errors(tmp_path):
    with pytest.raises(SiplError, match="run `sipl train`"):
        load_model(tmp_path)
    save_model(_model(), tmp_path, {})
    other = _model(width=16)
    save_model(other, tmp_path / "other", {})
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(SiplError, match="does not match"):
        load_model(tmp_path)


def _train_a_bit(model, optimizer, steps=2):
    for _ in range(steps):
        x = torch.rand(2, 3, 16, 16)
        optimizer.zero_grad()
        model.training_step(x, x, lambda a, b: (a - b).abs().mean())["loss"].backward()
        optimizer.step()


def test_optimizer_flatten_round_trip():
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    _train_a_bit(model, optimizer)
    tensors, structure = flatten_optimizer(optimizer)
    json.dumps(structure)
    restored = unflatten_optimizer(tensors, json.loads(json.dumps(structure)))
    fresh = torch.optim.AdamW(model.parameters(), lr=1.0)
    fresh.load_state_dict(restored)
    assert fresh.param_groups[0]["betas"] == (0.9, 0.99) and fresh.param_groups[0]["lr"] == 1e-3
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(fresh.state_dict()["state"][index][key], value)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_fused"])
def test_training_state_resumes_identically(tmp_path, layout):
    """Also for the trainer's channels_last model with the fused AdamW kernel, whose moments must come back in the
    parameters' layout (stored contiguous, they would be paired with the wrong elements)."""
    memory_format = torch.channels_last if layout == "channels_last_fused" else torch.contiguous_format
    fused = True if layout == "channels_last_fused" else None

    def built(seed):
        return _model(seed=seed).to(memory_format=memory_format)

    model = built(0)
    ema = built(5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    _train_a_bit(model, optimizer)
    torch.manual_seed(123)
    save_training_state(tmp_path, model=model, optimizer=optimizer, ema=ema, info={"step": 2, "history": []})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    expected_rng = torch.rand(3)

    model2, ema2 = built(9), built(10)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, fused=fused)
    torch.manual_seed(0)
    info = load_training_state(tmp_path, model=model2, optimizer=optimizer2, ema=ema2)
    assert info["step"] == 2 and info["has_ema"]
    torch.testing.assert_close(torch.rand(3), expected_rng)
    for a, b in zip(ema.parameters(), ema2.parameters()):
        torch.testing.assert_close(a, b)
    # one more identical step from both gives identical weights
    torch.manual_seed(1)
    _train_a_bit(model, optimizer, 1)
    torch.manual_seed(1)
    _train_a_bit(model2, optimizer2, 1)
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b)
