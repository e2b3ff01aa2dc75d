"""The model that ships inside the package (sipl/pretrained/tiny-bsds432): its card records the weights' sha256,
it fits the default profile it fine-tunes, and `sipl restore` uses it where the pipeline has trained nothing."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from sipl.cli import main
from sipl.config import load_params, parse_params
from sipl.errors import SiplError
from sipl.models.files import load_model
from sipl.models.shipped import SHIPPED_NAME, default_model_dir, shipped_model_dir
from tests.conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "sipl" / "pretrained" / SHIPPED_NAME


def test_the_card_records_the_weights_sha256_and_every_training_photo():
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    recorded = re.search(r"model\.safetensors.*?sha256[^0-9a-f]*([0-9a-f]{64})", card, re.S)
    assert recorded, "the card names the weights' sha256"
    assert recorded.group(1) == hashlib.sha256((SHIPPED / "model.safetensors").read_bytes()).hexdigest()
    photos = (SHIPPED / "training_photos.sha256").read_text().split("\n")
    entries = [line.split() for line in photos if line and not line.startswith("#")]
    assert len(entries) == 432 and all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest, *_ in entries)
    assert {split for *_, split in entries} == {"train", "val", "test"}
    assert (SHIPPED / "model.safetensors").stat().st_size < 20 * 2**20


def test_the_reproduction_params_are_valid_and_name_a_user_folder():
    params = load_params(SHIPPED / "params.yaml")
    assert [s.kind for s in params.sources] == ["folder"] and params.sources[0].path.startswith("/data/")
    assert params.train.init_weights is None  # trained from scratch
    meta = json.loads((SHIPPED / "model.json").read_text())
    assert meta["model"] == params.model.build_arguments(tasks=list(params.tasks))


def test_shipped_model_loads_with_its_selection_and_restores_an_image():
    model, meta = load_model(shipped_model_dir())
    assert meta["selected"]["scheme"] in ("official", "anchored")
    image = np.random.default_rng(0).integers(0, 256, (1, 3, 32, 48)).astype(np.float32) / 255
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(image))
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert tuple(out.shape) == (1, 3, 32, 48) and torch.isfinite(out).all()


def test_the_default_profile_fine_tunes_the_shipped_weights():
    """params.yaml's default profile starts from the shipped model, and its weights fit that profile's model."""
    from sipl.training.launcher import _checked_init_weights

    params = load_params(REPO_ROOT / "params.yaml")
    assert params.train.init_weights == f"pretrained:{SHIPPED_NAME}"
    assert _checked_init_weights(params) == str((SHIPPED / "model.safetensors").resolve())
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["tasks"].pop("desnow")  # another head: 11 classes instead of 12
    with pytest.raises(SiplError, match=r"init_weights: .*model.safetensors tensor '.*' has shape"):
        _checked_init_weights(parse_params(raw, source="edited params"))
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["profiles"][raw["profile"]]["train"]["init_weights"] = "pretrained:no-such-model"
    with pytest.raises(SiplError, match="init_weights: .*no shipped model 'no-such-model'"):
        _checked_init_weights(parse_params(raw, source="edited params"))


def test_restore_without_a_trained_model_uses_the_shipped_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a fresh clone: no models/ here
    assert default_model_dir()[0] == shipped_model_dir()
    photo = (np.random.default_rng(1).random((40, 56, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    code = main(["restore", "photo.jpg", "-o", "out", "--no-progress", "--engine", "eager"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"the shipped model {SHIPPED_NAME}" in err
    with Image.open(tmp_path / "out" / "photo.png") as restored:
        assert restored.size == (56, 40)
