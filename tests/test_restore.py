"""`sipl restore` on a folder of mixed images: modes, a corrupt file, globs, tiling, never overwriting inputs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from sipl import restore
from sipl.cli import main
from sipl.errors import SiplError
from tests.test_evaluate import write_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = write_tiny_model(tmp_path_factory.mktemp("restore") / "models")
    (directory / "selection.json").write_text(json.dumps({"scheme": "official", "steps": 1, "per_task": {}}))
    return directory


@pytest.fixture
def mixed_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = data.chelsea()[:60, :90]
    Image.fromarray(photo).save(folder / "rgb.png")
    Image.fromarray(photo).save(folder / "photo.jpg", quality=90)
    Image.fromarray(photo[..., 0]).save(folder / "grey.png")
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(folder / "alpha.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _cli(model_dir, *args):
    return main(["restore", "--params", "absent-params.yaml", "--model", str(model_dir), "--no-progress", *args])


def test_folder_of_mixed_images(model_dir, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = _cli(model_dir, str(mixed_folder), "-o", str(out))
    err = capsys.readouterr().err
    assert code == 1  # the corrupt file fails the run...
    written = sorted(p.name for p in out.iterdir())
    assert written == ["alpha.png", "grey.png", "photo.png", "rgb.png"]  # ...but every readable one is restored
    for name in written:
        with Image.open(out / name) as image:
            assert image.mode == "RGB" and image.size == (90, 60)
    assert "broken.png" in err and "official, 1 step(s)" in err
    assert "L converted to RGB" in err  # per-image notes are reported
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary leftovers


def test_glob_missing_input_and_exit_code(model_dir, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = _cli(model_dir, str(mixed_folder / "*.jpg"), str(tmp_path / "nothing.png"), "-o", str(out),
                "--steps", "0")
    assert code == 1
    assert [p.name for p in out.iterdir()] == ["photo.png"]
    assert "no such file or folder" in capsys.readouterr().err


def test_refuses_to_overwrite_an_input(model_dir, mixed_folder, capsys):
    before = (mixed_folder / "rgb.png").read_bytes()
    assert _cli(model_dir, str(mixed_folder / "rgb.png"), "-o", str(mixed_folder)) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (mixed_folder / "rgb.png").read_bytes() == before


def test_same_stem_inputs_get_distinct_outputs(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(data.astronaut()[:16, :16]).save(tmp_path / sub / "x.png")
    planned = restore.plan([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "out")
    assert [dst.name for _, dst in planned.jobs] == ["x.png", "x-2.png"]


def test_tiled_restore_matches_shape_and_is_close_to_untiled(model_dir):
    import sipl

    model, _ = sipl.load_model(model_dir)
    image = data.astronaut()[:150, :200]
    whole = restore.restore_array(model, image, steps=1, scheme="anchored", tile=None)
    tiled = restore.restore_array(model, image, steps=1, scheme="anchored", tile=96, tile_overlap=16)
    assert tiled.shape == whole.shape == image.shape and tiled.dtype == np.uint8
    assert np.abs(tiled.astype(int) - whole.astype(int)).mean() < 8


def test_tile_policy():
    assert restore.choose_tile(300, 400, None) is None
    assert restore.choose_tile(2048, 100, None) == restore.AUTO_TILE
    assert restore.choose_tile(2048, 2048, 0) is None
    assert restore.choose_tile(100, 100, 64) == 64


def test_steps_auto_needs_a_selection(tmp_path):
    from pipelines.restore import resolve_setting

    args = argparse.Namespace(params=str(tmp_path / "none.yaml"), steps="auto", scheme=None, model="models")
    with pytest.raises(SiplError, match="run `sipl select`"):
        resolve_setting(args, meta={})
    assert resolve_setting(args, {"selected": {"steps": 2, "scheme": "official"}})[:2] == (2, "official")
    forced = argparse.Namespace(params=str(tmp_path / "none.yaml"), steps=3, scheme="official", model="models")
    assert resolve_setting(forced, {"selected": {"steps": 2}})[:2] == (3, "official")


def test_steps_per_predicted_degradation(tmp_path):
    from pipelines.restore import resolve_setting
    from sipl.models import build_model

    meta = {"model": {"degradation_classes": ["clean", "denoise_25", "deblur"]},
            "selected": {"steps": 3, "scheme": "anchored", "per_task": {"denoise_25": 2, "deblur": 0}}}
    args = argparse.Namespace(params=str(tmp_path / "none.yaml"), steps="auto", scheme=None, model="models")
    steps, scheme, source = resolve_setting(args, meta)
    assert steps == {"clean": 0, "denoise_25": 2, "deblur": 0} and scheme == "anchored"
    assert "per predicted degradation" in source
    # a forced scheme other than the selected one falls back to the global step count
    other = argparse.Namespace(params=str(tmp_path / "none.yaml"), steps="auto", scheme="official", model="models")
    assert resolve_setting(other, meta)[0] == 3

    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", degradation_classes=["clean", "denoise_25", "deblur"]).eval()
    with torch.no_grad():  # make the head always answer "deblur"
        model.head.classify.weight.zero_()
        model.head.classify.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    image = data.chelsea()[:40, :56]
    assert restore.steps_for(model, image, steps) == (0, "deblur")
    assert restore.steps_for(model, image, 2) == (2, None)
    with torch.no_grad():
        model.head.classify.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    assert restore.steps_for(model, image, steps) == (2, "denoise_25")
