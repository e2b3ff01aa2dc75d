"""The bad-input matrix: every `sipl` command given hostile but fair input, run in-process.

Each case builds its inputs under a fresh folder and returns the argv, the expected exit code, the words the message
must contain (the file, key or option at fault) and the paths whose content must survive unchanged (the inputs and
any earlier outputs). The runner asserts all four, and that no traceback reached the user. Exit codes: 0 done, 1
done but something was skipped (or doctor found a problem), 2 usage / input error before any output was written.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from sipl.cli import main
from tests.test_evaluate import write_params, write_tiny_model, write_tiny_shards

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    argv: list[str]
    code: int
    words: list[str]
    keep: list[Path] = field(default_factory=list)  # files / folders whose content must be unchanged
    absent: list[Path] = field(default_factory=list)  # outputs that must not appear


# ------------------------------------------------------------------------------------------------ shared inputs

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny exported model, tiny shards and a params file, copied by every case that needs them."""
    root = tmp_path_factory.mktemp("bad-input-base")
    write_tiny_model(root / "models")
    (root / "models" / "selection.json").write_text(json.dumps({"scheme": "official", "steps": 0, "per_task": {}}))
    write_tiny_shards(root / "shards")
    write_params(root / "params.yaml", **{"refine.max_steps": 1, "eval.classical": False,
                                          "eval.max_images_per_task": 1})
    return root


def _photo(seed: int = 0, size: tuple[int, int] = (40, 56)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / max(size)
    return (np.stack([np.sin(5 * (xx + yy * c) + c) for c in (0.5, 1.0, 1.5)], -1) * 100 + 128
            + rng.integers(0, 8, (*size, 3))).astype(np.uint8)


def _png(path: Path, seed: int = 0, size: tuple[int, int] = (40, 56)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_photo(seed, size)).save(path)
    return path


@functools.lru_cache(maxsize=1)
def _bomb_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (20000, 10000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb(path: Path) -> Path:
    """A 20000 x 10000 black PNG: about 0.2 MB on disk, 200 MB once decoded (600 MB as RGB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_bomb_bytes())
    return path


def _copy(base: Path, tmp: Path, *names: str) -> None:
    for name in names:
        source = base / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, tmp / name)


def _edit_params(path: Path, edit: Callable[[dict], None]) -> Path:
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw))
    return path


def _edit_json(path: Path, edit: Callable[[dict], None]) -> Path:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    return path


def _restore(tmp: Path, *args: str, model: str = "models") -> list[str]:
    return ["restore", "--params", str(tmp / "absent.yaml"), "--model", str(tmp / model), "--no-progress", *args]


def _evaluate(tmp: Path, *args: str) -> list[str]:
    return ["evaluate", "--params", str(tmp / "params.yaml"), "--model", str(tmp / "models"), "--shards",
            str(tmp / "shards"), "--benchmarks", str(tmp / "benchmarks"), "--out", str(tmp / "out"), *args]


def _select(tmp: Path, *args: str) -> list[str]:
    return ["select", "--params", str(tmp / "params.yaml"), "--steps-file", str(tmp / "eval_steps.json"),
            "--metrics", str(tmp / "metrics" / "eval.json"), "--model", str(tmp / "models"), *args]


def _synth_params(tmp: Path, edit: Callable[[dict], None] | None = None, name: str = "synth.yaml") -> Path:
    """A small synthesize setup: a folder source of 4 photos, shards under tmp/shards-out."""
    source = tmp / "clean"
    for index in range(4):
        _png(source / f"photo_{index}.png", index, (72, 88))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update({"sources": [{"kind": "folder", "path": str(source)}],
                "crops": {"train": {"size": 32, "per_image": 1}, "val": {"size": 32, "per_image": 1},
                          "test": {"size": None, "max_side": 48}},
                "tasks": {"denoise_25": {"family": "noise", "steps": [{"name": "gaussian_noise", "sigma": 25}]}},
                "shards": {"root": str(tmp / "shards-out"), "maxcount": 4, "encoding": "npy"}})
    raw["profiles"]["tiny"]["train"]["patch"] = 32
    if edit:
        edit(raw)
    path = tmp / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _synthesize(params: Path) -> list[str]:
    return ["synthesize", "--params", str(params), "--no-progress", "--workers", "1"]


def _rain_layout(folder: Path, pairs: int = 2) -> Path:
    for index in range(pairs):
        _png(folder / "input" / f"{index}.png", index)
        _png(folder / "target" / f"{index}.png", index + 10)
    return folder


# ----------------------------------------------------------------------------------------------------- restore

def restore_output_is_a_file(base, tmp):
    _copy(base, tmp, "models")
    image, target = _png(tmp / "in" / "a.png"), tmp / "existing.png"
    target.write_bytes(b"keep me")
    return Case(_restore(tmp, str(image), "-o", str(target)), 2, ["-o", str(target), "existing file"],
                keep=[target, image])


def restore_output_below_a_file(base, tmp):
    _copy(base, tmp, "models")
    image, blocker = _png(tmp / "in" / "a.png"), tmp / "file.txt"
    blocker.write_text("x")
    return Case(_restore(tmp, str(image), "-o", str(blocker / "sub")), 2, ["-o", "file.txt", "is a file"],
                keep=[blocker, image])


def restore_output_in_proc(base, tmp):
    _copy(base, tmp, "models")
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", "/proc/sipl-cannot-write-here"), 2,
                ["-o", "/proc/sipl-cannot-write-here", "cannot write"], keep=[image])


def restore_decompression_bomb_is_skipped(base, tmp):
    _copy(base, tmp, "models")
    good, bomb = _png(tmp / "in" / "good.png"), _bomb(tmp / "in" / "bomb.png")
    out = tmp / "out"
    case = Case(_restore(tmp, str(tmp / "in"), "-o", str(out)), 1,
                ["bomb.png", "20000x10000", "--max-pixels", "1 failed"], keep=[good, bomb], absent=[out / "bomb.png"])
    case.check = lambda: (out / "good.png").is_file()  # the rest of the batch is restored
    return case


def restore_max_pixels_option_skips(base, tmp):
    _copy(base, tmp, "models")
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out"), "--max-pixels", "100"), 1,
                ["a.png", "above the limit of 100"], keep=[image], absent=[tmp / "out" / "a.png"])


def restore_max_pixels_not_a_number(base, tmp):
    _copy(base, tmp, "models")
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out"), "--max-pixels", "lots"), 2,
                ["--max-pixels", "lots"], keep=[image], absent=[tmp / "out"])


def restore_unreadable_file_among_good_ones(base, tmp):
    _copy(base, tmp, "models")
    good = _png(tmp / "in" / "good.png")
    broken = tmp / "in" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return Case(_restore(tmp, str(tmp / "in"), "-o", str(tmp / "out")), 1, ["broken.png", "not a readable image"],
                keep=[good, broken], absent=[tmp / "out" / "broken.png"])


def restore_no_input_found(base, tmp):
    _copy(base, tmp, "models")
    return Case(_restore(tmp, str(tmp / "nothing-*.png"), "-o", str(tmp / "out")), 2,
                ["nothing-*.png", "no input image found"], absent=[tmp / "out"])


def restore_without_a_model(base, tmp):
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out")), 2, [str(tmp / "models"), "sipl train"],
                keep=[image])


def restore_model_json_unknown_backbone(base, tmp):
    _copy(base, tmp, "models")
    _edit_json(tmp / "models" / "model.json", lambda d: d["model"].update(backbone="resnet"))
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out")), 2, ["model.json", "model.backbone", "resnet"],
                keep=[tmp / "models", image])


def restore_model_json_unknown_key(base, tmp):
    _copy(base, tmp, "models")
    _edit_json(tmp / "models" / "model.json", lambda d: d["model"].update(colour_boost=3))
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out")), 2, ["model.json", "colour_boost"],
                keep=[tmp / "models", image])


def restore_model_json_not_json(base, tmp):
    _copy(base, tmp, "models")
    (tmp / "models" / "model.json").write_text("{ not json")
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out")), 2, ["model.json", "not valid JSON"],
                keep=[tmp / "models", image])


def restore_weights_truncated(base, tmp):
    _copy(base, tmp, "models")
    weights = tmp / "models" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out")), 2, ["model.safetensors"],
                keep=[tmp / "models", image])


def _restore_with_selection(base, tmp, change: dict, words: list[str]) -> Case:
    _copy(base, tmp, "models")
    _edit_json(tmp / "models" / "selection.json", lambda d: d.update(change))
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out")), 2, ["selection.json", *words],
                keep=[tmp / "models", image])


def restore_selection_steps_not_a_number(base, tmp):
    return _restore_with_selection(base, tmp, {"steps": "three"}, ["'steps'", "three"])


def restore_selection_per_task_negative(base, tmp):
    return _restore_with_selection(base, tmp, {"per_task": {"derain": -2}}, ["per_task.derain"])


def restore_selection_unknown_scheme(base, tmp):
    return _restore_with_selection(base, tmp, {"scheme": "magic"}, ["'scheme'", "magic"])


def restore_tile_too_small(base, tmp):
    _copy(base, tmp, "models")
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out"), "--tile", "8"), 2, ["--tile 8"], keep=[image],
                absent=[tmp / "out"])


def restore_negative_overlap(base, tmp):
    _copy(base, tmp, "models")
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "out"), "--tile-overlap", "-4"), 2, ["--tile-overlap"],
                keep=[image], absent=[tmp / "out"])


def restore_output_would_replace_input(base, tmp):
    _copy(base, tmp, "models")
    image = _png(tmp / "in" / "a.png")
    return Case(_restore(tmp, str(image), "-o", str(tmp / "in")), 2, ["refusing to overwrite", "a.png"],
                keep=[image])


# -------------------------------------------------------------------------------------------------- synthesize

def synthesize_negative_sigma_names_the_given_file(base, tmp):
    params = _synth_params(tmp, lambda raw: raw["tasks"]["denoise_25"]["steps"][0].update(sigma=-5),
                           name="other.yaml")
    return Case(_synthesize(params), 2, ["other.yaml", "tasks.denoise_25", "sigma"], keep=[params, tmp / "clean"],
                absent=[tmp / "shards-out"])


def synthesize_params_missing(base, tmp):
    return Case(_synthesize(tmp / "nope.yaml"), 2, ["nope.yaml", "not found"])


def synthesize_params_not_yaml(base, tmp):
    params = tmp / "broken.yaml"
    params.write_text("seed: [1, 2\n")
    return Case(_synthesize(params), 2, ["broken.yaml", "not valid YAML"], keep=[params])


def synthesize_unknown_key(base, tmp):
    params = _synth_params(tmp, lambda raw: raw["shards"].update(rooot="x"))
    return Case(_synthesize(params), 2, ["shards.rooot", "unknown key"], keep=[params],
                absent=[tmp / "shards-out"])


def synthesize_source_folder_missing(base, tmp):
    params = _synth_params(tmp, lambda raw: raw["sources"][0].update(path=str(tmp / "gone")))
    return Case(_synthesize(params), 2, ["gone", "does not exist"], keep=[params], absent=[tmp / "shards-out"])


def synthesize_shards_root_is_a_file(base, tmp):
    blocker = tmp / "shards-file"
    blocker.write_text("mine")
    params = _synth_params(tmp, lambda raw: raw["shards"].update(root=str(blocker)))
    return Case(_synthesize(params), 2, ["shards.root", "existing file"], keep=[blocker, tmp / "clean"])


def synthesize_max_pixels_must_be_positive(base, tmp):
    params = _synth_params(tmp, lambda raw: raw["sources"][0].update(max_pixels=0))
    return Case(_synthesize(params), 2, ["sources[0].max_pixels"], keep=[params], absent=[tmp / "shards-out"])


def synthesize_skips_images_above_the_pixel_limit(base, tmp):
    params = _synth_params(tmp, lambda raw: raw["sources"][0].update(max_pixels=5000))
    _png(tmp / "clean" / "small.png", 9, (40, 40))  # 1600 pixels: kept; the 72x88 photos are above 5000
    case = Case(_synthesize(params), 0, [], keep=[tmp / "clean"])
    case.check = lambda: ("above the limit of 5,000"
                          in (tmp / "shards-out" / "skipped.json").read_text())
    return case


def synthesize_source_bomb_is_skipped(base, tmp):
    params = _synth_params(tmp)
    bomb = _bomb(tmp / "clean" / "bomb.png")
    case = Case(_synthesize(params), 0, [], keep=[tmp / "clean"])
    case.check = lambda: "20000x10000" in (tmp / "shards-out" / "skipped.json").read_text() and bomb.is_file()
    return case


# -------------------------------------------------------------------------------------------- import-benchmark

def import_into_a_synthesize_root(base, tmp):
    _copy(base, tmp, "shards")
    layout = _rain_layout(tmp / "rain")
    return Case(["import-benchmark", "rain100l", str(layout), "-o", str(tmp / "shards")], 2,
                ["-o", "already holds", "splits test, val", "manifest.json"], keep=[tmp / "shards", layout])


def import_into_a_folder_with_other_files(base, tmp):
    layout, out = _rain_layout(tmp / "rain"), tmp / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    return Case(["import-benchmark", "rain100l", str(layout), "-o", str(out)], 2, ["already holds", "notes.txt"],
                keep=[out, layout])


def import_over_another_kind(base, tmp):
    layout, out = _rain_layout(tmp / "rain"), tmp / "out"
    assert main(["import-benchmark", "lol", str(_lol_layout(tmp / "lol")), "-o", str(out)]) == 0
    return Case(["import-benchmark", "rain100l", str(layout), "-o", str(out)], 2, ["an import of lol"],
                keep=[out, layout])


def _lol_layout(folder: Path) -> Path:
    for index in range(2):
        _png(folder / "low" / f"{index}.png", index)
        _png(folder / "high" / f"{index}.png", index + 20)
    return folder


def import_output_is_a_file(base, tmp):
    layout, out = _rain_layout(tmp / "rain"), tmp / "out.tar"
    out.write_text("mine")
    return Case(["import-benchmark", "rain100l", str(layout), "-o", str(out)], 2, ["-o", "existing file"],
                keep=[out, layout])


def import_directory_missing(base, tmp):
    return Case(["import-benchmark", "sots", str(tmp / "nowhere"), "-o", str(tmp / "out")], 2,
                ["nowhere", "not a directory"], absent=[tmp / "out"])


def import_layout_problems(base, tmp):
    layout = _rain_layout(tmp / "rain")
    (layout / "target" / "0.png").unlink()
    return Case(["import-benchmark", "rain100l", str(layout), "-o", str(tmp / "out")], 2,
                ["0.png", "no partner", "nothing written"], keep=[layout], absent=[tmp / "out"])


def import_image_above_pixel_limit(base, tmp):
    layout = _rain_layout(tmp / "rain")
    return Case(["import-benchmark", "rain100l", str(layout), "-o", str(tmp / "out"), "--max-pixels", "100"], 2,
                ["0.png", "above the limit of 100", "nothing written"], keep=[layout], absent=[tmp / "out"])


# ---------------------------------------------------------------------------------------------------- train

def _train(tmp: Path, params: Path) -> list[str]:
    return ["train", "--params", str(params), "--check"]


def train_manifest_missing(base, tmp):
    params = _edit_params(shutil.copy2(base / "params.yaml", tmp / "params.yaml"),
                          lambda raw: raw["shards"].update(root=str(tmp / "empty")))
    return Case(_train(tmp, params), 2, ["manifest.json", "sipl synthesize"], keep=[params])


def train_shard_corrupt(base, tmp):
    _copy(base, tmp, "shards")
    params = _edit_params(shutil.copy2(base / "params.yaml", tmp / "params.yaml"), lambda raw: raw.update(
        shards={"root": str(tmp / "shards")},
        tasks={"derain": {"family": "rain", "steps": [{"name": "rain"}]}}))
    shard = tmp / "shards" / "val" / "derain-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])
    manifest = tmp / "shards" / "manifest.json"
    _edit_json(manifest, lambda d: d["splits"].setdefault("train", {}).update(derain=d["splits"]["val"]["derain"]))
    shutil.copytree(tmp / "shards" / "val", tmp / "shards" / "train")
    return Case(_train(tmp, params), 2, ["derain-000000.tar", "sha256"], keep=[tmp / "shards"])


def train_unknown_model_override(base, tmp):
    params = _edit_params(shutil.copy2(base / "params.yaml", tmp / "params.yaml"),
                          lambda raw: raw["profiles"]["tiny"]["model"].update(overrides={"colour_boost": 2}))
    return Case(_train(tmp, params), 2, ["params.yaml", "profiles.tiny.model.overrides", "colour_boost"],
                keep=[params])


def train_profile_without_block(base, tmp):
    params = _edit_params(shutil.copy2(base / "params.yaml", tmp / "params.yaml"),
                          lambda raw: (raw.update(profile="small"), raw["profiles"].pop("small")))
    return Case(_train(tmp, params), 2, ["params.yaml", "profile 'small'"], keep=[params])


# ------------------------------------------------------------------------------------------------- evaluate

def _evaluate_case(base, tmp, damage: Callable[[Path], None], words: list[str]) -> Case:
    _copy(base, tmp, "models", "shards", "params.yaml")
    damage(tmp / "shards")
    return Case(_evaluate(tmp), 2, words, keep=[tmp / "shards", tmp / "models"],
                absent=[tmp / "out" / "metrics" / "eval_steps.json"])


def _cut_at_member_boundary(shards_root: Path) -> None:
    """Drop the last sample of test/derain: still a valid tar, one image fewer than the manifest lists."""
    import tarfile

    path = shards_root / "test" / "derain-000000.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    path.write_bytes(path.read_bytes()[:members[-3].offset])


def evaluate_shard_cut_at_member_boundary(base, tmp):
    return _evaluate_case(base, tmp, _cut_at_member_boundary, ["test/derain-000000.tar", "does not match"])


def evaluate_shard_missing(base, tmp):
    return _evaluate_case(base, tmp, lambda root: (root / "val" / "dehaze-000000.tar").unlink(),
                          ["val/dehaze-000000.tar", "missing"])


def evaluate_manifest_missing(base, tmp):
    return _evaluate_case(base, tmp, lambda root: (root / "manifest.json").unlink(),
                          ["manifest.json", "sipl synthesize"])


def evaluate_sample_count_differs(base, tmp):
    def recount(root: Path) -> None:
        _edit_json(root / "manifest.json",
                   lambda d: d["splits"]["test"]["derain"]["shards"][0].update(samples=2))
    case = _evaluate_case(base, tmp, recount, ["test/derain-000000.tar", "holds 1 sample(s)", "lists 2"])
    _edit_params(tmp / "params.yaml", lambda raw: raw["eval"].update(max_images_per_task=None))
    return case


def evaluate_out_is_a_file(base, tmp):
    _copy(base, tmp, "models", "shards", "params.yaml")
    (tmp / "out").write_text("mine")
    return Case(_evaluate(tmp), 2, ["--out", "is a file"], keep=[tmp / "out", tmp / "shards"])


def evaluate_model_missing(base, tmp):
    _copy(base, tmp, "shards", "params.yaml")
    return Case(_evaluate(tmp), 2, ["models", "no exported model"], keep=[tmp / "shards"],
                absent=[tmp / "out" / "metrics" / "eval_steps.json"])


# --------------------------------------------------------------------------------------------------- select

def _eval_steps(tmp: Path) -> Path:
    document = {"splits": {"val": {"derain": {"family": "rain", "images": 1,
                                              "input": {"psnr": 20, "ssim": 0.5, "psnr_y": 21, "ssim_y": 0.5},
                                              "schemes": {"anchored": {"0": {"psnr": 25, "ssim": 0.7,
                                                                             "psnr_y": 26, "ssim_y": 0.7,
                                                                             "seconds": 0.1}}}}}}}
    path = tmp / "eval_steps.json"
    path.write_text(json.dumps(document))
    return path


def select_steps_file_missing(base, tmp):
    _copy(base, tmp, "models", "params.yaml")
    return Case(_select(tmp), 2, ["eval_steps.json", "sipl evaluate"], keep=[tmp / "models"],
                absent=[tmp / "metrics"])


def select_steps_file_not_json(base, tmp):
    _copy(base, tmp, "models", "params.yaml")
    (tmp / "eval_steps.json").write_text("{")
    return Case(_select(tmp), 2, ["eval_steps.json", "not valid JSON"], keep=[tmp / "models"],
                absent=[tmp / "metrics"])


def select_steps_file_wrong_shape(base, tmp):
    _copy(base, tmp, "models", "params.yaml")
    path = _edit_json(_eval_steps(tmp), lambda d: d["splits"]["val"]["derain"].pop("schemes"))
    return Case(_select(tmp), 2, ["eval_steps.json", "schemes"], keep=[tmp / "models", path],
                absent=[tmp / "metrics"])


def select_metrics_below_a_file(base, tmp):
    _copy(base, tmp, "models", "params.yaml")
    _eval_steps(tmp)
    (tmp / "metrics").write_text("a file where the folder should be")
    return Case(_select(tmp), 2, ["--metrics", "is a file"], keep=[tmp / "models", tmp / "metrics"])


def select_model_folder_missing(base, tmp):
    shutil.copy2(base / "params.yaml", tmp / "params.yaml")
    _eval_steps(tmp)
    return Case(_select(tmp), 2, ["models", "no model folder"], absent=[tmp / "metrics"])


# --------------------------------------------------------------------------------------------------- report

def _report(tmp: Path) -> list[str]:
    return ["report", "--params", str(tmp / "params.yaml"), "--root", str(tmp), "--out", str(tmp / "reports")]


def report_without_metrics(base, tmp):
    return Case(_report(tmp), 2, ["eval.json", "sipl select"], absent=[tmp / "reports" / "index.html"])


def report_metrics_missing_keys(base, tmp):
    (tmp / "metrics").mkdir()
    (tmp / "metrics" / "eval.json").write_text(json.dumps({"tasks": {}}))
    return Case(_report(tmp), 2, ["eval.json", "'selected'"], keep=[tmp / "metrics"],
                absent=[tmp / "reports" / "index.html"])


def report_out_is_a_file(base, tmp):
    (tmp / "reports").write_text("mine")
    return Case(_report(tmp), 2, ["--out", "existing file"], keep=[tmp / "reports"])


# --------------------------------------------------------------------------------------------------- doctor

def doctor_names_the_given_params_file(base, tmp):
    params = _edit_params(shutil.copy2(base / "params.yaml", tmp / "other.yaml"),
                          lambda raw: raw["tasks"]["denoise_25"]["steps"][0].update(sigma=-1))
    return Case(["doctor", "--params", str(params), "--timeout", "1"], 1, ["other.yaml", "sigma", "FAIL"],
                keep=[params])


def doctor_params_missing(base, tmp):
    return Case(["doctor", "--params", str(tmp / "gone.yaml"), "--timeout", "1"], 1, ["gone.yaml", "not found"])


CASES = {name: function for name, function in globals().items()
         if callable(function) and name.split("_")[0] in
         ("restore", "synthesize", "import", "train", "evaluate", "select", "report", "doctor")
         and not name.startswith("_") and function.__module__ == __name__ and name not in ("main",)}


# --------------------------------------------------------------------------------------------------- runner

def _snapshot(paths: list[Path]) -> dict[str, str]:
    state = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            state[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
        if not files:
            state[str(path)] = "missing" if not path.exists() else "empty folder"
    return state


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, base, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = CASES[name](base, tmp_path)
    before = _snapshot(case.keep)
    capsys.readouterr()
    try:
        code = main(case.argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    text = out + err
    assert code == case.code, text
    assert "Traceback" not in text, text
    for word in case.words:
        assert word in text, f"{word!r} not in:\n{text}"
    assert _snapshot(case.keep) == before, "an input or an earlier output changed"
    for path in case.absent:
        assert not path.exists(), f"{path} was written"
    assert getattr(case, "check", lambda: True)(), text


def test_the_matrix_is_big_enough():
    assert len(CASES) >= 40, sorted(CASES)
    assert {name.split("_")[0] for name in CASES} == {"restore", "synthesize", "import", "train", "evaluate",
                                                        "select", "report", "doctor"}
