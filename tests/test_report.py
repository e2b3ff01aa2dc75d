"""`sipl report`: one offline HTML page whose every referenced image exists under reports/."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch

from sipl.cli import main
from tests.test_evaluate import TASKS, run_stages

torch.set_num_threads(1)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.full: list[str] = []
        self.links: list[str] = []
        self.figures = 0
        self.options: list[str] = []
        self.scripts = 0
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
            if attrs.get("data-full"):
                self.full.append(attrs["data-full"])
        if tag == "figure":
            self.figures += 1
        if tag == "option":
            self.options.append(attrs["value"])
        if tag in ("link", "a") and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "script":
            self.scripts += 1
        self._in_cell = tag == "td"

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data.strip())


def write_minimal_eval_json(root: Path) -> None:
    """``root/metrics/eval.json`` with one task (derain, 1 anchored step selected) and nothing else."""
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_text(json.dumps({
        "split": "test", "convention": {}, "versions": {},
        "selected": {"scheme": "anchored", "steps": 1, "per_task": {"derain": 1}},
        "tasks": {"derain": {"psnr": 30.0, "ssim": 0.9, "psnr_y": 31.0, "ssim_y": 0.91, "input_psnr": 25.0,
                             "step0_psnr": 29.0, "sipl_gain": 1.0}},
        "groups": {"all": {"psnr": 30.0, "ssim": 0.9, "input_psnr": 25.0, "step0_psnr": 29.0, "sipl_gain": 1.0}}}))


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "plots").mkdir()
    rows = "".join(f"{20 * i},{1.0 / (i + 1):.5f},{1e-3 / (i + 1):.6f},{20 + 0.1 * i:.2f}\n" for i in range(12))
    (tmp / "plots" / "train.csv").write_text("step,loss,lr,val_psnr\n" + rows)
    (tmp / "metrics").mkdir()
    (tmp / "metrics" / "train.json").write_text(json.dumps({"steps": 240, "wall_s": 12.5, "samples_per_s": 30.0,
                                                           "skipped_samples": 0, "val": {}}))
    return run_stages(tmp, "evaluate", "select", "report")


def test_every_referenced_image_exists_and_page_is_offline(report_dir):
    index = report_dir / "reports" / "index.html"
    page = index.read_text()
    parser = _Collector()
    parser.feed(page)
    # one inline script (the samples' before/after viewer), nothing fetched from elsewhere
    assert parser.scripts == 1 and "<script src" not in page
    # the only URL is the SVG namespace inside the vendored slider's code, an identifier that is never fetched
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
    # steps plot, training curve, then a comparison (two images) per sample: one per task (sample_grid_images: 1)
    assert len(parser.images) == 2 + 2 * len(TASKS)
    for src in [url for url in parser.images + parser.links + parser.full if url != "data:,"]:  # data: the icon
        target = (index.parent / unquote(src)).resolve()
        assert target.is_file() and target.stat().st_size > 0, src
        assert index.parent.resolve() in target.parents  # stays under reports/
    for png in ("psnr_vs_steps.png", "train_curve.png"):
        assert png in parser.images
    assert {f"samples/{task}.png" for task in TASKS} <= set(parser.links)  # each task's grid, linked


def test_samples_compare_the_input_with_the_selected_restoration(report_dir):
    page = (report_dir / "reports" / "index.html").read_text()
    parser = _Collector()
    parser.feed(page)
    selected = json.loads((report_dir / "metrics" / "eval.json").read_text())["selected"]
    assert parser.figures == len(TASKS)
    for task in TASKS:
        assert f"<h4>{task} " in page
    left = [src for src in parser.images if src.endswith("-input.png")]
    right = [src for src in parser.images if src.endswith(f"-step{selected['steps']}.png")]
    assert len(left) == len(right) == len(TASKS)
    # every column can be put on either side: input, step 0, steps 1..max_steps, ground truth
    assert len(parser.options) == 2 * len(TASKS) * (2 + 2 + 1)
    assert f"step {selected['steps']} (selected)" in page or f"{selected['scheme']} {selected['steps']} (selected)" \
        in page


def test_tables_show_every_task_and_the_chosen_setting(report_dir):
    page = (report_dir / "reports" / "index.html").read_text()
    parser = _Collector()
    parser.feed(page)
    result = json.loads((report_dir / "metrics" / "eval.json").read_text())
    for task, values in result["tasks"].items():
        assert task in parser.cells
        assert f"{values['psnr']:.2f}" in parser.cells and f"{values['input_psnr']:.2f}" in parser.cells
    assert f"{result['selected']['scheme']}</b> scheme" in page
    assert "refine_steps" in page  # the params block


def test_missing_eval_json_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--params", str(tmp_path / "none.yaml"), "--root", str(tmp_path),
                 "--out", str(tmp_path / "reports")]) == 2
    assert "run `sipl select` first" in capsys.readouterr().err
    assert not (tmp_path / "reports" / "index.html").exists()


def test_report_without_optional_inputs(tmp_path):
    """Only metrics/eval.json: the page still renders and says what is missing."""
    source = Path(__file__).resolve().parents[1] / "params.yaml"
    write_minimal_eval_json(tmp_path)
    assert main(["report", "--params", str(source), "--root", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "run `sipl evaluate`" in page and "plots/train.csv not found" in page and "<img" not in page
