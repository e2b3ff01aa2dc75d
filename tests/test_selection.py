"""Selection logic on hand-made eval_steps documents: global choice, ties, forced steps, per-family choice."""

import json

import pytest

from sipl.errors import SiplError
from sipl.evaluation import selection


def _task(family, curves, input_psnr=20.0, classical=None):
    """curves: scheme -> list of PSNR per step."""
    schemes = {
        scheme: {str(step): {"psnr": value, "ssim": value / 40, "psnr_y": value + 1, "ssim_y": value / 39,
                             "seconds": 0.01 * (step + 1)} for step, value in enumerate(values)}
        for scheme, values in curves.items()
    }
    entry = {"family": family, "images": 2, "input": {"psnr": input_psnr, "ssim": 0.5, "psnr_y": 21.0,
                                                      "ssim_y": 0.55}, "schemes": schemes}
    if classical is not None:
        entry["classical"] = {"method": "x", "psnr": classical, "ssim": 0.6, "psnr_y": 0, "ssim_y": 0, "seconds": 0.1}
    return entry


def _doc(val, test=None):
    return {"convention": {"psnr": "skimage"}, "versions": {}, "splits": {"val": val, "test": test or val}}


def test_auto_picks_global_maximum_and_per_family_steps():
    val = {
        "denoise_25": _task("noise", {"official": [30, 31, 30.5, 30.0], "anchored": [30, 31.5, 31.6, 31.0]}),
        "dehaze": _task("haze", {"official": [20, 22, 23, 24.0], "anchored": [20, 21, 21.2, 21.3]}),
    }
    chosen = selection.select(_doc(val), "auto", scheme="anchored", schemes=["official", "anchored"])
    # official: step 3 -> (30.0 + 24) / 2 = 27.0; anchored best: step 3 -> 26.15; official step 2 -> 26.75
    assert (chosen["scheme"], chosen["steps"]) == ("official", 3)
    assert chosen["val_psnr"] == pytest.approx(27.0)
    assert chosen["per_family"] == {"noise": 1, "haze": 3}
    assert chosen["per_task"] == {"dehaze": 3, "denoise_25": 1}


def test_ties_go_to_fewer_steps_then_configured_scheme():
    flat = {"derain": _task("rain", {"official": [25, 25, 25], "anchored": [25, 25, 25]})}
    chosen = selection.select(_doc(flat), "auto", scheme="anchored", schemes=["official", "anchored"])
    assert (chosen["scheme"], chosen["steps"]) == ("anchored", 0)
    chosen = selection.select(_doc(flat), "auto", scheme="official", schemes=["anchored", "official"])
    assert (chosen["scheme"], chosen["steps"]) == ("official", 0)
    same_best = {"derain": _task("rain", {"official": [25, 26, 26], "anchored": [25, 26, 25]})}
    chosen = selection.select(_doc(same_best), "auto", scheme="official", schemes=["anchored", "official"])
    assert (chosen["scheme"], chosen["steps"]) == ("official", 1)


def test_forced_steps_use_configured_scheme():
    val = {"dehaze": _task("haze", {"official": [20, 30, 31], "anchored": [20, 22, 23]})}
    chosen = selection.select(_doc(val), 1, scheme="anchored", schemes=["official", "anchored"])
    assert (chosen["scheme"], chosen["steps"]) == ("anchored", 1)
    assert chosen["per_task"] == {"dehaze": 1} and chosen["criterion"] == "forced by refine_steps"
    with pytest.raises(SiplError, match="refine.max_steps"):
        selection.select(_doc(val), 5, scheme="anchored", schemes=["official", "anchored"])


def test_auto_without_validation_split_names_the_fix():
    doc = {"splits": {"test": {"dehaze": _task("haze", {"anchored": [20, 21]})}}}
    with pytest.raises(SiplError, match="eval.splits"):
        selection.select(doc, "auto", scheme="anchored", schemes=["anchored"])


def test_eval_metrics_document_keys_and_groups():
    names = ["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze", "low_haze"]
    val = {name: _task("composite" if name == "low_haze" else "x", {"anchored": [20, 22, 21]},
                       classical=19.0 if name == "dehaze" else None) for name in names}
    test = {name: _task(task["family"], {"anchored": [21, 23, 22]}) for name, task in val.items()}
    test["dehaze"]["classical"] = {"method": "dcp", "psnr": 18.5, "ssim": 0.7}
    doc = _doc(val, test)
    chosen = selection.select(doc, "auto", scheme="anchored", schemes=["official", "anchored"])
    result = selection.eval_metrics(doc, chosen)
    json.dumps(result, allow_nan=False)
    assert result["split"] == "test" and result["selected"]["steps"] == 1
    task = result["tasks"]["derain"]
    assert task["psnr"] == 23 and task["step0_psnr"] == 21 and task["input_psnr"] == 20 and task["sipl_gain"] == 2
    assert set(task) >= {"psnr", "ssim", "psnr_y", "ssim_y", "input_psnr", "step0_psnr"}
    assert "classical_psnr" not in task and result["tasks"]["dehaze"]["classical_psnr"] == 18.5
    assert set(result["groups"]) == {"all", "three_task", "composite"}
    assert result["groups"]["three_task"]["tasks"] == 5 and result["groups"]["composite"]["tasks"] == 1
    assert result["sipl_gain"] == pytest.approx(2.0)
    assert set(selection.selection_file(chosen)) >= {"scheme", "steps", "per_task"}


def test_group_membership_rules():
    families = {"denoise_25": "noise", "dehaze": "haze", "derain": "rain", "deblur": "blur", "lowlight": "lowlight",
                "haze_snow": "snow"}
    groups = selection.group_members(families)
    assert groups["five_task"] == sorted(selection.FIVE_TASK)
    assert "three_task" not in groups  # denoise_15/50 missing
    assert groups["composite"] == ["haze_snow"]  # a CDD-11 name counts even outside the composite family


def test_refinement_must_beat_step_zero_by_the_margin_on_every_task_of_a_family():
    val = {
        # noise: +0.05 dB on average only -> below a 0.1 dB margin, step 0 stays
        "denoise_15": _task("noise", {"anchored": [30.0, 30.05, 30.0]}),
        # haze: +1 dB, but one of the family's tasks loses 0.5 dB at step 2 -> step 1 (both gain) is chosen
        "dehaze": _task("haze", {"anchored": [20.0, 20.6, 21.5]}),
        "dehaze_thick": _task("haze", {"anchored": [15.0, 15.4, 14.5]}),
    }
    loose = selection.select(_doc(val), "auto", scheme="anchored", schemes=["anchored"])
    strict = selection.select(_doc(val), "auto", scheme="anchored", schemes=["anchored"], min_gain_db=0.1)
    assert loose["per_family"] == {"haze": 1, "noise": 1}
    assert strict["per_family"] == {"haze": 1, "noise": 0}
    assert "0.1 dB" in strict["criterion"]
    # the global choice obeys the same rule: step 2's mean gain is large but dehaze_thick loses 0.5 dB
    assert strict["steps"] == 1


def test_routing_per_degradation_reports_each_task_at_its_own_steps():
    val = {
        "denoise_25": _task("noise", {"anchored": [30.0, 32.0, 34.0]}),
        "deblur": _task("blur", {"anchored": [25.0, 24.0, 23.0]}),
    }
    document = _doc(val)
    document["splits"]["test"]["deblur"]["degradation"] = {"accuracy": 0.75, "family_accuracy": 1.0,
                                                           "predicted": {"deblur": 3, "clean": 1}}
    global_choice = selection.select(document, "auto", scheme="anchored", schemes=["anchored"])
    assert global_choice["routing"] == "global"
    document["routing"] = "per_degradation"
    routed = selection.select(document, "auto", scheme="anchored", schemes=["anchored"])
    assert routed["per_task"] == {"deblur": 0, "denoise_25": 2} and routed["routing"] == "per_degradation"
    metrics = selection.eval_metrics(document, routed)
    assert metrics["tasks"]["deblur"]["psnr"] == 25.0 and metrics["tasks"]["denoise_25"]["psnr"] == 34.0
    assert metrics["tasks"]["deblur"]["degradation_accuracy"] == 0.75
    assert global_choice["steps"] == 0  # step 2 gains on average but deblur would lose 2 dB
    assert selection.eval_metrics(document, global_choice)["tasks"]["denoise_25"]["psnr"] == 30.0
    assert selection.selection_file(routed)["routing"] == "per_degradation"


def _gate_section(psnr_by_task, model="0.9"):
    """psnr_by_task: task -> PSNR per gate, in the order of the gates below."""
    gates = ["0.0", "0.5", "0.9", "never"]
    return {"split": "val", "gates": gates, "model": model, "applied": model,
            "tasks": {name: {"images": 2, "psnr": dict(zip(gates, values)), "corrected": dict.fromkeys(gates, 0.5)}
                      for name, values in psnr_by_task.items()}}


def test_the_gate_with_the_best_mean_val_psnr_is_chosen():
    # means: 0.0 -> 25.5, 0.5 -> 26.0, 0.9 -> 25.75, never -> 25.0; no single task decides it
    section = _gate_section({"dehaze": [27.0, 26.5, 26.0, 24.0], "denoise_25": [24.0, 25.5, 25.5, 26.0]})
    chosen = selection.choose_gate(section)
    assert chosen["affine_min_confidence"] == 0.5
    assert chosen["affine_gate"]["val_psnr"] == {"0.0": 25.5, "0.5": 26.0, "0.9": 25.75, "never": 25.0}
    assert chosen["affine_gate"]["model"] == 0.9
    never = _gate_section({"dehaze": [20.0, 20.0, 20.0, 21.0]})
    assert selection.choose_gate(never)["affine_min_confidence"] == "never"


def test_gate_ties_go_to_the_model_s_own_then_to_the_highest():
    flat = {"dehaze": [25.0, 25.0, 25.0, 25.0]}
    assert selection.choose_gate(_gate_section(flat, model="0.5"))["affine_min_confidence"] == 0.5
    assert selection.choose_gate(_gate_section(flat, model="0.8"))["affine_min_confidence"] == "never"
    # within TIE_DB of the best is a tie; the model's own beats a gate 1e-7 dB better
    close = {"dehaze": [25.0, 25.0000001, 25.0, 24.0]}
    assert selection.choose_gate(_gate_section(close, model="0.0"))["affine_min_confidence"] == 0.0


def test_the_chosen_gate_reaches_selection_json_and_passes_check_selection(tmp_path):
    from sipl.models.files import check_selection

    val = {"dehaze": _task("haze", {"anchored": [20.0, 20.5]}), "denoise_25": _task("noise", {"anchored": [30, 30]})}
    document = _doc(val)
    plain = selection.selection_file(selection.select(document, "auto", scheme="anchored", schemes=["anchored"]))
    assert "affine_min_confidence" not in plain and "affine_gate" not in plain  # a model without a gate
    document["affine_gate"] = _gate_section({"dehaze": [24.0, 25.0, 26.0, 25.0], "denoise_25": [30, 30, 30, 30]})
    for steps in ("auto", 1):
        chosen = selection.select(document, steps, scheme="anchored", schemes=["anchored"])
        written = tmp_path / "selection.json"
        written.write_text(json.dumps(selection.selection_file(chosen)))
        reread = check_selection(json.loads(written.read_text()), written)
        assert reread["affine_min_confidence"] == 0.9 and reread["affine_gate"]["val_psnr"]["0.9"] == 28.0
        assert selection.eval_metrics(document, chosen)["selected"]["affine_min_confidence"] == 0.9
        assert selection.benchmark_metrics(document, chosen)["selected"]["affine_min_confidence"] == 0.9


def test_a_gate_section_without_tasks_is_a_clear_error():
    with pytest.raises(SiplError, match="affine_gate"):
        selection.choose_gate(_gate_section({}))
