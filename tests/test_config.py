import subprocess
import sys

import pytest
import yaml

from sipl.config import ConfigError, load_params, parse_params
from tests.conftest import REPO_ROOT


def _raw():
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_repository_params_are_valid_and_select_the_profile():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.profile == "tiny" and params.model.backbone == "nafnet"
    assert params.train is params.profiles["tiny"].train
    raw = _raw()
    raw["profile"] = "paper"
    assert parse_params(raw).model.backbone == "promptir"


@pytest.mark.parametrize("profile", ["tiny", "small", "paper"])
def test_every_shipped_profile_trains_on_the_shipped_crops(profile):
    # `dvc exp run -S profile=small` must not need a crop change: the train crops hold every profile's patch
    raw = _raw()
    raw["profile"] = profile
    params = parse_params(raw)
    assert params.crops.train.size >= params.train.patch


def test_model_build_arguments_carry_the_overrides():
    params = load_params(REPO_ROOT / "params.yaml")
    model, tasks = params.model, list(params.tasks)
    expected = {"backbone": model.backbone, "size": model.size, "sipl": True, **model.overrides}
    if model.degradation_head:
        expected["degradation_classes"] = ["clean", *tasks]
        with pytest.raises(ValueError, match="needs the task names"):
            model.build_arguments()
    assert model.build_arguments(tasks=tasks) == expected
    assert model.build_arguments(sipl=False, tasks=tasks)["sipl"] is False


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["shards"].update(encodng="npy"), "shards.encodng: unknown key"),
    (lambda r: r.update(profile="huge"), "profile 'huge' has no block under 'profiles' (have: ['paper', 'small', "),
    (lambda r: r.update(profile="Huge!"), "profile: String should match pattern"),
    (lambda r: r["shards"].update(encoding="jpeg"), "shards.encoding: got 'jpeg'; allowed: 'npy' or 'png'"),
    (lambda r: r["profiles"]["tiny"]["train"].update(steps=0), "profiles.tiny.train.steps"),
    (lambda r: r.update(refine_steps=9), "refine_steps=9 exceeds refine.max_steps=3"),
    (lambda r: r.update(refine_steps="sometimes"), "refine_steps"),
    (lambda r: r["tasks"]["derain"].update(steps=[{"sigma": 1}]), "tasks.derain.steps: Value error, degradation step 0"),
    (lambda r: r["sources"].append({"kind": "folder"}), "sources[1]: Value error, a 'folder' source needs 'path'"),
    (lambda r: r["splits"].update(val_fraction=0.6, test_fraction=0.5), "val_fraction + test_fraction must be < 1"),
    (lambda r: (r["profiles"]["tiny"]["train"].update(channel_shuffle=0.5),
                r["tasks"]["dehaze"]["steps"][0].update(tint=[0.0, 0.2])),
     "profiles.tiny.train.channel_shuffle is 0.5 but tasks.dehaze.steps[0] (haze) has tint [0.0, 0.2]"),
    (lambda r: (r["profiles"]["tiny"]["train"].update(channel_shuffle=0.5),
                r["tasks"].update(dejpeg={"family": "jpeg", "steps": [{"name": "jpeg", "quality": [10, 40]}]})),
     "profiles.tiny.train.channel_shuffle is 0.5 but tasks.dejpeg.steps[0] is jpeg"),
    (lambda r: r["tasks"].update(dejpeg={"family": "jpeg", "steps": [{"name": "jpeg", "qualty": 20}]}),
     "tasks.dejpeg.steps: Value error, degradation 'jpeg': unknown parameter(s) ['qualty']"),
    (lambda r: r["crops"]["train"].update(size=32),
     "crops.train.size=32 is smaller than profiles.tiny.train.patch=96"),
    (lambda r: r["crops"]["train"].update(size=None, max_side=40),
     "crops.train.max_side=40 is smaller than profiles.tiny.train.patch=96"),
])
def test_bad_values_name_the_key_path(mutate, expected):
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse_params(raw, source="params.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("params.yaml: invalid parameters")


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    bad = _raw()
    bad["seeed"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run([sys.executable, "-m", "sipl.cli", "synthesize", "--params", str(tmp_path / "params.yaml")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "seeed: unknown key" in result.stderr and "Traceback" not in result.stderr
    missing = subprocess.run([sys.executable, "-m", "sipl.cli", "synthesize"], capture_output=True, text=True,
                             cwd=tmp_path / "..", timeout=120)
    assert missing.returncode == 2 and "params.yaml: not found" in missing.stderr


def test_a_jpeg_task_and_a_composite_ending_in_jpeg_are_accepted():
    raw = _raw()
    raw["tasks"]["dejpeg"] = {"family": "jpeg", "steps": [{"name": "jpeg", "quality": [10, 40]}]}
    raw["tasks"]["haze_jpeg"] = {"family": "composite",
                                 "steps": [{"name": "haze", "beta": [1.0, 2.0]}, {"name": "jpeg", "quality": 30}]}
    params = parse_params(raw, source="params.yaml")
    assert params.tasks["dejpeg"].family == "jpeg" and params.tasks["haze_jpeg"].steps[-1]["name"] == "jpeg"
