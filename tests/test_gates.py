"""The degradation head's confidence gate chosen on validation: scored by `sipl evaluate`, chosen by `sipl select`,
written to selection.json, checked and applied by `load_model`, used by `sipl restore` and keyed in the ONNX cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sipl.cli import main
from sipl.errors import SiplError
from sipl.evaluation import gates
from sipl.models import build_model
from sipl.models.files import NEVER_GATE_THRESHOLD, load_model, save_model
from sipl.models.refine import refine
from tests.test_evaluate import TASKS, TINY_MODEL, write_params, write_tiny_shards

torch.set_num_threads(1)
CLASSES = ["clean", *TASKS]


def _head_model(own_gate: float = 0.9, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("nafnet", "tiny", sipl=True, degradation_classes=CLASSES, global_affine=True,
                       affine_min_confidence=own_gate, **TINY_MODEL).eval()


def _sure_and_harmful(model):
    """The head names class 1 with ~0.9995 probability for every input, and its affine brightens a lot."""
    with torch.no_grad():
        model.head.classify.weight.zero_()
        model.head.classify.bias.copy_(torch.tensor([0.0, 9.0, 0.0, 0.0]))
        model.head.affine.bias.fill_(3.0)  # gain and bias 0.3 for every class (AFFINE_SCALE 0.1)
    return model


def test_one_pass_gives_the_model_s_own_step0_under_every_gate():
    model = _head_model()
    with torch.no_grad():
        model.head.affine.bias.normal_(0, 1.0)
        model.head.classify.weight.normal_(0, 0.5)
    x = torch.rand(4, 3, 24, 32) * torch.linspace(0.2, 1.0, 4)[:, None, None, None]
    with torch.inference_mode():
        _, confidence = gates.step0_under_gates(model, x, [0.0])
    ordered = confidence.sort().values
    middle = float(ordered[1] + ordered[2]) / 2  # half the inputs reach it, half do not
    thresholds = [0.0, middle, NEVER_GATE_THRESHOLD]
    with torch.inference_mode():
        outputs, _ = gates.step0_under_gates(model, x, thresholds)
    for threshold, output in zip(thresholds, outputs):
        model.head.affine_min_confidence = threshold
        expected = next(refine(model, x, 0))[1]
        assert torch.allclose(output, expected, atol=1e-6), threshold
    always, mixed, never = outputs
    reached = confidence >= middle
    assert reached.sum() == 2
    assert torch.equal(mixed[reached], always[reached]) and torch.equal(mixed[~reached], never[~reached])
    assert not torch.allclose(always, never)


def test_candidates_hold_the_grid_the_model_s_own_gate_and_never():
    assert gates.candidate_thresholds(0.85) == [0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, NEVER_GATE_THRESHOLD]
    assert gates.candidate_thresholds(0.9) == [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, NEVER_GATE_THRESHOLD]
    assert gates.candidate_thresholds(NEVER_GATE_THRESHOLD)[-1] == NEVER_GATE_THRESHOLD


def _saved(tmp_path: Path, selection: dict | None, model=None) -> Path:
    directory = tmp_path / "models"
    save_model(model if model is not None else _head_model(), directory)
    if selection is not None:
        (directory / "selection.json").write_text(json.dumps(selection))
    return directory


@pytest.mark.parametrize("value, threshold", [(0.5, 0.5), (0, 0.0), (1.0, 1.0), ("never", NEVER_GATE_THRESHOLD)])
def test_load_model_sets_the_selected_gate_on_the_head(tmp_path, value, threshold):
    model, meta = load_model(_saved(tmp_path, {"steps": 0, "affine_min_confidence": value}))
    assert model.head.affine_min_confidence == threshold
    assert meta["selected"]["affine_min_confidence"] == value
    # `sipl evaluate` reads the model as exported
    model, meta = load_model(tmp_path / "models", with_selection=False)
    assert model.head.affine_min_confidence == 0.9 and "selected" not in meta


def test_a_selection_without_the_gate_keeps_the_model_s_own(tmp_path):
    model, meta = load_model(_saved(tmp_path, {"scheme": "anchored", "steps": 1, "per_task": {}}))
    assert model.head.affine_min_confidence == 0.9 and meta["selected"]["steps"] == 1


@pytest.mark.parametrize("value", [1.5, -0.1, "sometimes", True, None, [0.9]])
def test_a_bad_gate_names_the_file_and_the_key(tmp_path, value):
    directory = _saved(tmp_path, {"steps": 0, "affine_min_confidence": value})
    with pytest.raises(SiplError) as error:
        load_model(directory)
    assert str(directory / "selection.json") in str(error.value) and "'affine_min_confidence'" in str(error.value)


def test_a_gate_for_a_model_without_a_global_affine_is_refused(tmp_path):
    plain = build_model("nafnet", "tiny", sipl=True, **TINY_MODEL)
    directory = _saved(tmp_path, {"steps": 0, "affine_min_confidence": 0.5}, model=plain)
    with pytest.raises(SiplError, match="affine_min_confidence.*global_affine"):
        load_model(directory)


def test_the_onnx_cache_key_holds_the_gate():
    pytest.importorskip("onnxruntime")
    from sipl.models.onnx_engine import model_fingerprint

    model = _head_model()
    own = model_fingerprint(model)
    model.head.affine_min_confidence = 0.5
    assert model_fingerprint(model) != own
    model.head.affine_min_confidence = 0.9
    assert model_fingerprint(model) == own


def test_the_onnx_graphs_run_with_the_selected_gate(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from sipl.models.runtime import for_inference

    monkeypatch.setenv("SIPL_CACHE_DIR", str(tmp_path / "cache"))
    directory = _saved(tmp_path, {"steps": 0, "affine_min_confidence": "never"},
                       model=_sure_and_harmful(_head_model()))
    model, _ = load_model(directory)
    x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    fast = next(refine(for_inference(model, "onnx"), x, 0))[1]
    assert (fast - next(refine(model, x, 0))[1]).abs().max() < 1e-4
    model.head.affine_min_confidence = 0.9  # the model's own gate applies the (confident) correction
    assert (fast - next(refine(model, x, 0))[1]).abs().max() > 0.1


def test_restore_applies_the_selected_gate(tmp_path, capsys):
    directory = _saved(tmp_path, None, model=_sure_and_harmful(_head_model()))
    photo = (np.random.default_rng(0).random((40, 48, 3)) * 120).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    means = {}
    for gate in (0.5, "never"):
        (directory / "selection.json").write_text(json.dumps({"scheme": "anchored", "steps": 0,
                                                              "affine_min_confidence": gate}))
        out = tmp_path / f"out-{gate}"
        assert main(["restore", "--params", "absent-params.yaml", "--model", str(directory), "--no-progress",
                     "--engine", "eager", str(tmp_path / "photo.png"), "-o", str(out)]) == 0
        means[gate] = np.asarray(Image.open(out / "photo.png"), dtype=np.float64).mean()
    capsys.readouterr()
    assert means[0.5] > means["never"] + 40  # the confident brightening is applied at 0.5 and never at "never"


def test_evaluate_chooses_the_gate_on_val_and_select_writes_it(tmp_path):
    """A head sure of every input whose correction hurts: every gate it reaches loses, so "never" is chosen, the
    splits are scored with it, and selection.json carries it to load_model."""
    write_tiny_shards(tmp_path / "shards")
    save_model(_sure_and_harmful(_head_model()), tmp_path / "models")
    params = write_params(tmp_path / "params.yaml", **{"refine.max_steps": 1, "eval.engine": "eager",
                                                       "eval.classical": False})
    assert main(["evaluate", "--params", str(params), "--model", str(tmp_path / "models"), "--shards",
                 str(tmp_path / "shards"), "--benchmarks", str(tmp_path / "benchmarks"), "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "metrics/eval_steps.json").read_text())
    section = document["affine_gate"]
    assert section["split"] == "val" and section["model"] == "0.9" and section["applied"] == "never"
    assert section["gates"] == ["0.0", "0.5", "0.7", "0.8", "0.9", "0.95", "never"]
    for name, task in section["tasks"].items():
        assert task["images"] == 2
        assert task["corrected"] == {**{label: 1.0 for label in section["gates"][:-1]}, "never": 0.0}
        assert task["psnr"]["never"] > task["psnr"]["0.9"] + 0.1
        # the val split itself was scored with the chosen gate
        assert document["splits"]["val"][name]["schemes"]["anchored"]["0"]["psnr"] == pytest.approx(
            task["psnr"]["never"], abs=1e-4)

    assert main(["select", "--params", str(params), "--steps-file", str(tmp_path / "metrics/eval_steps.json"),
                 "--metrics", str(tmp_path / "metrics/eval.json"), "--model", str(tmp_path / "models")]) == 0
    selection = json.loads((tmp_path / "models/selection.json").read_text())
    assert selection["affine_min_confidence"] == "never"
    assert selection["affine_gate"]["model"] == 0.9 and set(selection["affine_gate"]["val_psnr"]) == set(
        section["gates"])
    assert json.loads((tmp_path / "metrics/eval.json").read_text())["selected"]["affine_min_confidence"] == "never"
    model, _ = load_model(tmp_path / "models")
    assert model.head.affine_min_confidence == NEVER_GATE_THRESHOLD
