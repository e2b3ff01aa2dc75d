"""Field benchmark sets in the pipeline: `sipl benchmarks` -> `sipl evaluate` -> `sipl select` -> `sipl report`
on a tiny clean folder and a tiny paired rain100l folder (seconds), and the errors for unusable sets."""

from __future__ import annotations

import hashlib
import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sipl.cli import main
from sipl.config import ConfigError, load_params, parse_params
from sipl.config.sections import BenchmarkConfig
from sipl.data import benchmarks
from sipl.data.benchmark_import import KINDS
from sipl.data.shards import iter_samples, shard_urls
from sipl.errors import SiplError
from sipl.seeding import derive_seed
from tests.test_evaluate import TASKS, write_params, write_tiny_model, write_tiny_shards

torch.set_num_threads(1)


def _save(path: Path, seed: int, size: tuple[int, int]) -> None:
    """A smooth random colour image of ``size`` (H, W) at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((size[1], size[0]), Image.BILINEAR).save(path)


def make_clean(root: Path) -> Path:
    _save(root / "a.png", 1, (40, 56))
    _save(root / "sub" / "b.jpg", 2, (50, 40))
    (root / "README.txt").write_text("not an image file: ignored")
    (root / "broken.png").write_bytes(b"not a png")  # an image file that cannot be read: skipped and listed
    return root


def make_rain(root: Path) -> Path:
    for name, seed in (("1", 3), ("2", 4)):
        _save(root / "target" / f"{name}.png", seed, (48, 64))
        clean = np.asarray(Image.open(root / "target" / f"{name}.png")).astype(np.int16)
        streaks = np.zeros_like(clean)
        streaks[:, ::7] = 90
        (root / "input").mkdir(exist_ok=True)
        Image.fromarray(np.clip(clean + streaks, 0, 255).astype(np.uint8)).save(root / "input" / f"{name}.png")
    return root


def bench_params(path: Path, sets: list[dict], **changes) -> Path:
    """The repository params with the three test tasks, ``crops.test.max_side: 32`` and ``sets`` as benchmarks."""
    write_params(path, **changes)
    params = yaml.safe_load(path.read_text())
    params["tasks"] = {name: params["tasks"][name] for name in TASKS}
    params["crops"]["test"]["max_side"] = 32
    params["benchmarks"] = sets
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("benchmark_sets")
    sets = [{"name": "dev", "kind": "clean", "path": str(make_clean(tmp / "clean"))},
            {"name": "rain", "kind": "rain100l", "path": str(make_rain(tmp / "rain100l"))}]
    params = str(bench_params(tmp / "params.yaml", sets))
    write_tiny_shards(tmp / "shards")
    write_tiny_model(tmp / "models")
    commands = [
        ["benchmarks", "--params", params, "--out", str(tmp / "benchmarks")],
        ["evaluate", "--params", params, "--model", str(tmp / "models"), "--shards", str(tmp / "shards"),
         "--benchmarks", str(tmp / "benchmarks"), "--out", str(tmp)],
        ["select", "--params", params, "--steps-file", str(tmp / "metrics/eval_steps.json"),
         "--metrics", str(tmp / "metrics/eval.json"), "--benchmarks-metrics", str(tmp / "metrics/benchmarks.json"),
         "--model", str(tmp / "models")],
        ["report", "--params", params, "--root", str(tmp), "--out", str(tmp / "reports")],
    ]
    for command in commands:
        assert main(command) == 0, command[0]
    return tmp


def test_sets_become_test_shards_cropped_like_the_test_split(run_dir):
    root = run_dir / "benchmarks"
    index = json.loads((root / benchmarks.INDEX).read_text())
    assert set(index["sets"]) == {"dev", "rain"}
    assert index["sets"]["dev"]["tasks"] == {name: family for name, family in TASKS.items()}
    assert index["sets"]["rain"]["tasks"] == {"derain": "rain"}
    dev = json.loads((root / "dev" / "manifest.json").read_text())
    assert dev["splits"]["test"]["dehaze"]["samples"] == 2 and dev["skipped"] == 1  # broken.png
    assert json.loads((root / "rain" / "manifest.json").read_text())["splits"]["test"]["derain"]["samples"] == 2
    for name, tasks in (("dev", TASKS), ("rain", {"derain": "rain"})):
        for task in tasks:
            for sample in iter_samples(shard_urls(str(root / name), "test", task)):
                # crops.test: multiples of 16, at most max_side (32)
                assert sample.lq.shape == sample.gt.shape and sample.gt.shape[2] == 3
                assert all(side % 16 == 0 and side <= 32 for side in sample.gt.shape[:2])
                assert sample.meta["split"] == "test"


def test_clean_sets_draw_one_seed_per_set_task_and_image(run_dir):
    params = load_params(run_dir / "params.yaml")
    root = str(run_dir / "benchmarks" / "dev")
    by_task = {task: list(iter_samples(shard_urls(root, "test", task))) for task in TASKS}
    for task, samples in by_task.items():
        for sample in samples:
            assert sample.meta["seed"] == derive_seed(params.seed, "benchmark", "dev", task, sample.meta["source_id"], 0)
            assert sample.meta["benchmark"] == "dev" and sample.meta["family"] == TASKS[task]
    # the same clean crops under every task, degraded differently
    assert np.array_equal(by_task["dehaze"][0].gt, by_task["derain"][0].gt)
    assert not np.array_equal(by_task["dehaze"][0].lq, by_task["derain"][0].lq)


def test_same_params_give_byte_identical_sets(run_dir, tmp_path):
    out = tmp_path / "again"
    assert main(["benchmarks", "--params", str(run_dir / "params.yaml"), "--out", str(out)]) == 0
    assert _files(out) == _files(run_dir / "benchmarks")
    assert not Path(f"{out}.partial").exists()


def test_benchmarks_json_holds_every_set_at_the_selected_setting(run_dir):
    document = json.loads((run_dir / "metrics/benchmarks.json").read_text())
    evaluation = json.loads((run_dir / "metrics/eval.json").read_text())
    steps = json.loads((run_dir / "metrics/eval_steps.json").read_text())
    assert set(document["sets"]) == {"dev", "rain"}
    assert set(steps["benchmarks"]) == {"dev", "rain"}  # step-wise results beside the splits
    selected = evaluation["selected"]
    assert (document["selected"]["scheme"], document["selected"]["steps"]) == (selected["scheme"], selected["steps"])
    dev, rain = document["sets"]["dev"], document["sets"]["rain"]
    assert set(dev["tasks"]) == set(TASKS) and set(rain["tasks"]) == {"derain"}
    for name, task in {**dev["tasks"], "rain/derain": rain["tasks"]["derain"]}.items():
        expected = set(evaluation["tasks"][name.split("/")[-1]])
        assert set(task) == expected, name
        scheme_steps = steps["benchmarks"]["rain" if "/" in name else "dev"]["tasks"][name.split("/")[-1]]
        assert task["psnr"] == pytest.approx(scheme_steps["schemes"][selected["scheme"]][str(selected["steps"])]["psnr"],
                                             abs=1e-3)
    # classical baselines by family: NLM for noise, DCP for haze, none for rain
    assert "classical_psnr" in dev["tasks"]["denoise_25"] and "classical_psnr" in dev["tasks"]["dehaze"]
    assert "classical_psnr" not in rain["tasks"]["derain"]
    assert set(dev["groups"]["all"]) == set(evaluation["groups"]["all"])
    assert dev["groups"]["all"]["tasks"] == len(TASKS) and rain["groups"]["all"]["tasks"] == 1


def test_selection_ignores_the_benchmark_sets(run_dir):
    from sipl.evaluation import selection

    steps = json.loads((run_dir / "metrics/eval_steps.json").read_text())
    without = {key: value for key, value in steps.items() if key != "benchmarks"}
    assert selection.select(steps, "auto", "anchored", ["official", "anchored"]) == \
        selection.select(without, "auto", "anchored", ["official", "anchored"])
    assert selection.benchmark_metrics(without, selection.select(without, "auto", "anchored",
                                                                 ["official", "anchored"]))["sets"] == {}


def test_report_has_a_table_per_set(run_dir):
    page = (run_dir / "reports" / "index.html").read_text()
    assert "Benchmark sets" in page and "<h3>dev " in page and "<h3>rain " in page
    assert "<th>classical</th><th>step 0</th><th>selected</th>" in page


def test_report_shows_the_samples_of_every_set(run_dir):
    index = json.loads((run_dir / "plots/sample_images/index.json").read_text())
    assert [(entry["name"], entry["kind"]) for entry in index["sets"]] == [("test", "split"), ("dev", "benchmark"),
                                                                         ("rain", "benchmark")]
    page = (run_dir / "reports" / "index.html").read_text()
    for title in ("test split", "benchmark set dev", "benchmark set rain"):
        assert f"<h3>{title}</h3>" in page
    for entry in index["sets"][1:]:
        for samples in entry["tasks"].values():
            for sample in samples:
                for relative in sample["files"].values():
                    assert relative.startswith(f"benchmarks/{entry['name']}/")
                    assert (run_dir / "reports" / "samples" / relative).is_file()
                    assert f'src="samples/{relative}"' in page or f'value="samples/{relative}"' in page


def test_empty_list_still_writes_the_output(tmp_path):
    params = bench_params(tmp_path / "params.yaml", [])
    assert main(["benchmarks", "--params", str(params), "--out", str(tmp_path / "benchmarks")]) == 0
    assert json.loads((tmp_path / "benchmarks" / benchmarks.INDEX).read_text()) == {"sets": {}, "version": 1}


def test_a_corrupted_shard_stops_evaluation_naming_the_set(run_dir, tmp_path):
    import shutil

    copy = shutil.copytree(run_dir / "benchmarks", tmp_path / "benchmarks")
    shard = next((copy / "rain" / "test").glob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(SiplError, match=r"benchmark set rain: shard .* does not match its manifest"):
        benchmarks.verified_tasks(str(copy), "rain")


# ------------------------------------------------------------------------------------------------ errors

def _bad_sets(tmp: Path) -> list[tuple[dict, str]]:
    (tmp / "empty").mkdir()
    make_clean(tmp / "clean")
    wrong = tmp / "wrong_rain"
    _save(wrong / "photo.png", 5, (32, 32))
    half = tmp / "half_rain"
    _save(half / "input" / "1.png", 6, (32, 32))
    return [
        ({"name": "gone", "kind": "clean", "path": str(tmp / "missing")}, "does not exist"),
        ({"name": "nothing", "kind": "clean", "path": str(tmp / "empty")}, "holds no images"),
        ({"name": "notrain", "kind": "rain100l", "path": str(wrong)}, "is not a complete rain100l layout"),
        ({"name": "unpaired", "kind": "rain100l", "path": str(half)}, "no partner in"),
        ({"name": "pairedclean", "kind": "lol", "path": str(tmp / "clean")}, "is not a complete lol layout"),
    ]


def test_each_unusable_set_is_named_with_its_path_before_anything_is_written(tmp_path):
    cases = _bad_sets(tmp_path)
    for set_config, expected in cases:
        params = bench_params(tmp_path / "params.yaml", [{"name": "ok", "kind": "clean",
                                                          "path": str(tmp_path / "clean")}, set_config])
        with pytest.raises(SiplError) as info:
            benchmarks.build_sets(load_params(params), str(tmp_path / "out"))
        message = str(info.value)
        assert f"benchmarks[1] ({set_config['name']})" in message and set_config["path"] in message, message
        assert expected in message, message
        assert "benchmarks[0]" not in message, "the usable set is not reported"
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_cli_exit_code_and_message(tmp_path, capsys):
    params = bench_params(tmp_path / "params.yaml", [{"name": "dev", "kind": "clean", "path": str(tmp_path / "no")}])
    assert main(["benchmarks", "--params", str(params), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sipl benchmarks: error:" in err and "benchmarks[0] (dev)" in err and "does not exist" in err


@pytest.mark.parametrize("sets, expected", [
    ([{"name": "a", "kind": "clean", "path": "x"}, {"name": "a", "kind": "lol", "path": "y"}],
     "benchmarks[1].name 'a' repeats benchmarks[0].name"),
    ([{"name": "a", "kind": "clean", "path": "x"}, {"name": "b", "kind": "rain100h", "path": "y"}],
     "benchmarks[1].kind: got 'rain100h'; allowed: 'clean', 'cbsd68'"),
    ([{"name": "a/b", "kind": "clean", "path": "x"}], "benchmarks[0].name: Value error, 'a/b' is not a valid set"),
    ([{"name": "a", "kind": "clean"}], "benchmarks[0].path: Field required"),
])
def test_config_errors_name_the_key(sets, expected):
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert parse_params(raw).benchmarks == []  # the default
    raw["benchmarks"] = sets
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    assert expected in str(info.value)


def test_config_kinds_are_clean_plus_the_import_layouts():
    kinds = typing.get_args(BenchmarkConfig.model_fields["kind"].annotation)
    assert set(kinds) == {"clean"} | set(KINDS)
