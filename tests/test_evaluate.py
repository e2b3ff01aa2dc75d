"""`sipl evaluate` + `sipl select` end to end on a tiny model and tiny shards (seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from sipl.cli import main
from sipl.data import shards
from sipl.evaluation import evaluate
from sipl.models import build_model
from sipl.models.files import save_model

REPO = Path(__file__).resolve().parents[1]
TASKS = {"denoise_25": "noise", "dehaze": "haze", "derain": "rain"}
TINY_MODEL = {"width": 8, "enc_blocks": [1, 1, 1], "middle_blocks": 1, "dec_blocks": [1, 1, 1]}

torch.set_num_threads(1)


def _degrade(gt: np.ndarray, family: str, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    x = gt.astype(np.float64)
    if family == "noise":
        out, applied = x + rng.normal(0, 25, x.shape), [{"name": "gaussian_noise", "sigma": 25}]
    elif family == "haze":
        out, applied = 0.55 * x + 0.45 * 230, [{"name": "haze", "beta": 1.0}]
    else:
        streaks = (rng.random(x.shape[:2]) > 0.97)[..., None] * 120.0
        out, applied = x + streaks, [{"name": "rain", "density": 0.03}]
    return np.clip(out, 0, 255).astype(np.uint8), applied


def write_tiny_shards(root: Path, sizes: dict[str, int] | None = None) -> Path:
    """val: 2 crops per task (32x32); test: 1 crop per task (48x32). Contract layout + manifest."""
    sizes = sizes or {"val": 2, "test": 1}
    rng = np.random.default_rng(0)
    photo = data.astronaut()
    manifest = {"encoding": "npy", "splits": {}}
    for split, count in sizes.items():
        manifest["splits"][split] = {}
        for t_index, (task, family) in enumerate(TASKS.items()):
            samples = []
            for crop in range(count):
                top, left = 64 * crop + 100 + 8 * t_index, 180
                height, width = (32, 32) if split == "val" else (48, 32)
                gt = np.ascontiguousarray(photo[top:top + height, left:left + width])
                lq, applied = _degrade(gt, family, rng)
                key = shards.sample_key(task, f"astronaut{split}", crop)
                meta = {"task": task, "family": family, "split": split, "source_id": "astronaut",
                        "crop_box": [top, left, height, width], "seed": crop, "applied": applied}
                samples.append(shards.Sample(key=key, task=task, lq=lq, gt=gt, meta=meta))
            entries = shards.write_task_shards(str(root), split, task, samples, "npy", maxcount=256)
            manifest["splits"][split][task] = {"samples": count, "family": family, "shards": entries}
    shards.write_json(str(root / "manifest.json"), manifest)
    return root


def write_params(path: Path, **changes) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["refine"]["max_steps"] = 2
    params["eval"]["sample_grid_images"] = 1
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params))
    return path


def write_tiny_model(directory: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True, **TINY_MODEL)
    save_model(model, directory, {"note": "untrained test model"})
    return directory


def run_stages(tmp: Path, *stages: str, **param_changes) -> Path:
    """Shards, model and params under ``tmp``; then the given CLI stages with tmp as the working folder."""
    write_tiny_shards(tmp / "shards")
    write_tiny_model(tmp / "models")
    params = write_params(tmp / "params.yaml", **param_changes)
    commands = {
        "evaluate": ["evaluate", "--params", str(params), "--model", str(tmp / "models"), "--shards",
                     str(tmp / "shards"), "--benchmarks", str(tmp / "benchmarks"), "--out", str(tmp)],
        "select": ["select", "--params", str(params), "--steps-file", str(tmp / "metrics/eval_steps.json"),
                   "--metrics", str(tmp / "metrics/eval.json"), "--model", str(tmp / "models")],
        "report": ["report", "--params", str(params), "--root", str(tmp), "--out", str(tmp / "reports")],
    }
    for stage in stages:
        assert main(commands[stage]) == 0, stage
    return tmp


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return run_stages(tmp_path_factory.mktemp("eval"), "evaluate", "select")


def test_eval_steps_document(run_dir):
    document = json.loads((run_dir / "metrics/eval_steps.json").read_text())
    assert document["convention"]["ssim"].startswith("skimage") and "scikit-image" in document["versions"]
    assert set(document["splits"]) == {"val", "test"}
    for split, tasks in document["splits"].items():
        assert set(tasks) == set(TASKS)
        for name, task in tasks.items():
            assert task["images"] == (2 if split == "val" else 1)
            assert set(task["schemes"]) == {"official", "anchored"}
            for scheme in task["schemes"].values():
                assert sorted(scheme, key=int) == ["0", "1", "2"]
                assert all(set(v) == {"psnr", "ssim", "psnr_y", "ssim_y", "seconds"} for v in scheme.values())
                assert scheme["0"]["seconds"] <= scheme["2"]["seconds"]
            # Both schemes start from the same preliminary restoration.
            assert task["schemes"]["official"]["0"]["psnr"] == pytest.approx(task["schemes"]["anchored"]["0"]["psnr"],
                                                                               abs=1e-4)
    assert "classical" in document["splits"]["val"]["denoise_25"]
    assert "classical" in document["splits"]["val"]["dehaze"]
    assert "classical" not in document["splits"]["val"]["derain"]
    assert document["groups"]["test"]["all"]["tasks"] == sorted(TASKS)
    assert "affine_gate" not in document  # no degradation head: no confidence gate to score (tests/test_gates.py)


def test_input_scores_match_scikit_image(run_dir):
    document = json.loads((run_dir / "metrics/eval_steps.json").read_text())
    samples = list(shards.iter_samples(shards.shard_urls(str(run_dir / "shards"), "val", "dehaze")))
    expected = np.mean([peak_signal_noise_ratio(s.gt, s.lq, data_range=255) for s in samples])
    assert document["splits"]["val"]["dehaze"]["input"]["psnr"] == pytest.approx(expected, abs=1e-4)


def test_csv_and_sample_grids(run_dir):
    with (run_dir / "plots/psnr_vs_steps.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert set(rows[0]) == {"task", "scheme", "step", "psnr"}
    assert len(rows) == (len(TASKS) + 1) * 2 * 3  # tasks + "all", 2 schemes, steps 0..2
    for task in TASKS:
        grid = (run_dir / "plots/samples" / f"{task}.png")
        assert grid.is_file() and grid.stat().st_size > 0
    from PIL import Image

    with Image.open(run_dir / "plots/samples/dehaze.png") as image:
        width, height = image.size
    assert width >= 5 * 32 and height > 48  # input, step 0, 1, 2, ground truth


def test_sample_images_one_png_per_column(run_dir):
    """The samples of the grids again, one PNG per column, for the report's before/after viewer."""
    from PIL import Image

    folder = run_dir / "plots/sample_images"
    index = json.loads((folder / "index.json").read_text())
    scheme = yaml.safe_load((run_dir / "params.yaml").read_text())["refine"]["scheme"]
    assert index["scheme"] == scheme
    assert [c["key"] for c in index["columns"]] == ["input", "step0", "step1", "step2", "gt"]
    assert [c["label"] for c in index["columns"]] == ["input", "step 0", f"{scheme} 1", f"{scheme} 2",
                                                     "ground truth"]
    assert [(entry["name"], entry["kind"]) for entry in index["sets"]] == [("test", "split")]
    tasks = index["sets"][0]["tasks"]
    assert set(tasks) == set(TASKS) and all(len(samples) == 1 for samples in tasks.values())  # sample_grid_images
    listed = set()
    for samples in tasks.values():
        for sample in samples:
            assert list(sample["files"]) == ["input", "step0", "step1", "step2", "gt"]
            for relative in sample["files"].values():
                listed.add(relative)
                with Image.open(folder / relative) as image:
                    assert image.size == (sample["size"][1], sample["size"][0])
    assert listed == {str(p.relative_to(folder)) for p in folder.rglob("*.png")}
    assert not (run_dir / "plots/sample_images.partial").exists()


def test_select_outputs(run_dir):
    result = json.loads((run_dir / "metrics/eval.json").read_text())
    selection = json.loads((run_dir / "models/selection.json").read_text())
    assert result["split"] == "test"
    assert selection["scheme"] in ("official", "anchored") and 0 <= selection["steps"] <= 2
    assert set(selection["per_task"]) == set(TASKS)
    assert "affine_min_confidence" not in selection and "affine_min_confidence" not in result["selected"]
    for task in result["tasks"].values():
        assert {"psnr", "ssim", "psnr_y", "ssim_y", "input_psnr", "step0_psnr", "sipl_gain"} <= set(task)
    assert "classical_psnr" in result["tasks"]["dehaze"] and "classical_psnr" not in result["tasks"]["derain"]
    assert "all" in result["groups"] and "three_task" not in result["groups"]
    # load_model merges the selection as meta["selected"].
    import sipl

    _, meta = sipl.load_model(run_dir / "models")
    assert meta["selected"]["steps"] == selection["steps"]


def test_forced_steps_and_missing_file(tmp_path, run_dir, capsys):
    params = write_params(tmp_path / "params.yaml", refine_steps=1, **{"refine.scheme": "official"})
    out = tmp_path / "eval.json"
    models = tmp_path / "models"
    models.mkdir()
    args = ["select", "--params", str(params), "--steps-file", str(run_dir / "metrics/eval_steps.json"),
            "--metrics", str(out), "--model", str(models)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert (result["selected"]["scheme"], result["selected"]["steps"]) == ("official", 1)
    args[args.index("--steps-file") + 1] = str(tmp_path / "absent.json")
    assert main(args) == 2
    assert "run `sipl evaluate`" in capsys.readouterr().err


def test_max_images_and_tiling(tmp_path):
    """eval.max_images_per_task caps the images; eval.tile runs the tiled path without changing shapes."""
    write_tiny_shards(tmp_path / "shards", sizes={"test": 3})
    model = build_model("nafnet", "tiny", sipl=True, **TINY_MODEL)
    urls = shards.shard_urls(str(tmp_path / "shards"), "test", "derain")
    results, grids = evaluate.evaluate_split(model, {"derain": ("rain", shards.iter_samples(urls))},
                                             schemes=["anchored"], max_steps=1, tile=32, tile_overlap=8,
                                             grid_scheme="anchored", grid_images=1, max_images=2)
    assert results["derain"]["images"] == 2
    assert len(grids["derain"]) == 1 and [a.shape for a in grids["derain"][0]] == [(48, 32, 3)] * 4


def test_a_jpeg_task_is_scored_without_a_classical_baseline():
    """A family without a classical baseline (jpeg) is scored like any other; the classical column stays away."""
    import degradations
    from sipl.evaluation import classical

    gt = np.ascontiguousarray(data.astronaut()[100:132, 180:212])
    lq, applied = degradations.apply([{"name": "jpeg", "quality": 20}], gt, np.random.default_rng(0))
    sample = shards.Sample(key=shards.sample_key("dejpeg", "astronaut", 0), task="dejpeg", lq=lq, gt=gt,
                           meta={"task": "dejpeg", "family": "jpeg", "applied": applied})
    assert classical.method_name("jpeg") is None and classical.restore(lq, "jpeg", applied) is None
    model = build_model("nafnet", "tiny", sipl=True, **TINY_MODEL)
    results, _ = evaluate.evaluate_split(model, {"dejpeg": ("jpeg", [sample])}, schemes=["anchored"], max_steps=1,
                                         use_classical=True)
    assert results["dejpeg"]["family"] == "jpeg" and results["dejpeg"]["images"] == 1
    assert "classical" not in results["dejpeg"]
    assert results["dejpeg"]["input"]["psnr"] == pytest.approx(peak_signal_noise_ratio(gt, lq), abs=1e-3)
