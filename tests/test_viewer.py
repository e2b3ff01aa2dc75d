"""The before/after viewer without a browser: the vendored component is the npm release, links reach awkward file
names, `sipl restore --page` writes its page (thumbnails, a PNG of inputs browsers cannot show, skipped files),
never replaces an index.html it did not write, and escapes every name."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from sipl.errors import SiplError
from sipl.viewer import component, restore_page
from tests import viewer_pages as pages

torch.set_num_threads(1)


class _Page(HTMLParser):
    """Elements, links and texts of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, text):
        self.text.append(text)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def _parse(path: Path) -> _Page:
    parser = _Page()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return pages.write_head_model(tmp_path_factory.mktemp("viewer-model") / "models")


@pytest.fixture(scope="module")
def restored(tmp_path_factory, model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("viewer-page")
    return pages.make_restored(tmp, model_dir)


def test_vendored_component_is_the_npm_release():
    source = (component.VENDOR / "SOURCE.md").read_text()
    for name in ("index.js", "styles.css"):
        digest = hashlib.sha256((component.VENDOR / name).read_bytes()).hexdigest()
        assert f"| `{name}` |" in source and digest in source, name
    assert "MIT License" in (component.VENDOR / "LICENSE").read_text()
    inlined = component.assets()["js"]
    assert "Copyright (c) 2019 Dmitry Snisarenko" in inlined and "sourceMappingURL" not in inlined


@pytest.mark.parametrize("name", ["plain.png", "two words.png", """it's "q".jpg""", "café Δ #1?.png",
                                  "a%20b.png", "javascript:alert(1).png", "<b>.png"])
def test_relative_url_reaches_the_file(tmp_path, name):
    page_dir = tmp_path / "out"
    target = tmp_path / "in" / name
    url = component.relative_url(target, page_dir)
    assert re.fullmatch(r"[A-Za-z0-9._~%/-]+", url), url  # nothing a browser or HTML could read otherwise
    assert url.startswith("../in/") and unquote(url.split("/", 2)[2]) == name


def test_page_lists_every_image_and_skipped_file(restored):
    page = _parse(restored / "index.html")
    record = json.loads((restored / "index_files" / "page.json").read_text())
    assert len(record["done"]) == 3 and [Path(s["input"]).name for s in record["skipped"]] == [pages.BROKEN]
    assert record["skipped"][0]["reason"].startswith("not a readable image")  # the path is shown beside it
    links = {unquote(attrs["href"]) for attrs in page.all("a") if attrs.get("href", "").startswith("../")}
    assert links == {f"../photos/{name}" for name in pages.NAMES.values()}
    outputs = {unquote(attrs["href"]) for attrs in page.all("a")
               if attrs.get("href", "").endswith(".png") and "/" not in attrs["href"]}
    assert outputs == {Path(name).stem + ".png" for name in pages.NAMES.values()}
    text = "".join(page.text)
    for name in pages.NAMES.values():
        assert name in text  # shown as the text it is
    assert pages.BROKEN in text and "not a readable image" in text
    assert "denoise_25" in text and "79 %" in text
    # a file name never becomes markup: only the viewer's own images, one inline script, no external resource
    assert all(attrs.get("src") != "x" and "onerror" not in attrs for attrs in page.all("img"))
    assert len(page.all("script")) == 1 and not any(attrs.get("src") for attrs in page.all("script"))
    assert not any(("http://" in v or "https://" in v) for _, attrs in page.tags for v in attrs.values() if v)
    # every image the page uses exists
    for attrs in page.all("img"):
        for key in ("src", "data-full"):
            assert (restored / unquote(attrs[key])).is_file(), attrs[key]


def test_large_images_get_thumbnails_and_link_full_resolution(restored):
    figures = {attrs["id"]: attrs for attrs in _parse(restored / "index.html").all("figure")}
    assert len(figures) == 3
    images = _parse(restored / "index.html").all("img")
    large = [attrs for attrs in images if attrs["src"].startswith("index_files/")]
    assert len(large) == 2  # before and after of the one image above the thumbnail side
    for attrs in large:
        with Image.open(restored / unquote(attrs["src"])) as thumbnail:
            assert thumbnail.format == "JPEG" and max(thumbnail.size) == component.THUMBNAIL_SIDE
        full = unquote(attrs["data-full"])
        assert full.endswith(".png") and "index_files" not in full
        assert attrs["loading"] == "lazy"


def test_inputs_browsers_cannot_show_get_a_png(tmp_path, model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(data.chelsea()[:64, :96]).save(folder / "scan one.tif")
    assert pages.restore_with_page(folder, model_dir, tmp_path / "out") == 0
    images = _parse(tmp_path / "out" / "index.html").all("img")
    before = next(attrs for attrs in images if attrs["alt"].startswith("before"))
    assert unquote(before["data-full"]) == "index_files/scan one.input.png" == unquote(before["src"])
    with Image.open(tmp_path / "out" / "index_files" / "scan one.input.png") as copy:
        assert copy.size == (96, 64)


def test_a_foreign_index_html_is_never_overwritten(tmp_path, model_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(data.chelsea()[:48, :64]).save(folder / "cat.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("<html><body>my own page</body></html>")
    assert pages.restore_with_page(folder, model_dir, out) == 2
    err = capsys.readouterr().err
    assert f"{out / 'index.html'} exists and was not written by `sipl restore --page`" in err
    assert "choose another output folder" in err
    assert (out / "index.html").read_text() == "<html><body>my own page</body></html>"
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]  # refused before any work


def test_its_own_page_is_replaced_and_unused_thumbnails_removed(tmp_path, model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = data.chelsea()[:48, :64]
    Image.fromarray(photo).save(folder / "cat.png")
    out = tmp_path / "out"
    page = restore_page.RestorePage(out, {"model": "m", "scheme": "anchored", "steps": "0 step(s)",
                                          "source": "--steps", "engine": "eager", "device": "cpu"},
                                    thumbnail_side=32)
    record = {"input": str(folder / "cat.png"), "output": str(out / "cat.png"), "size": [48, 64], "seconds": 0.5,
              "notes": [], "steps": 0, "degradation": None, "belief": None, "tiles": 1}
    out.mkdir()
    Image.fromarray(photo).save(out / "cat.png")
    page.add(record, photo, photo)
    page.write()
    assert sorted(p.name for p in (out / "index_files").iterdir()) == ["cat.after.jpg", "cat.before.jpg",
                                                                       "page.json"]
    (out / "index_files" / "notes.txt").write_text("a file of the user's")
    again = restore_page.RestorePage(out, page.setting)  # a later run: no thumbnails needed any more
    again.add(record, photo, photo)
    again.skip({"input": "gone.png", "reason": "no such file or folder"})
    again.write(interrupted=True)
    assert sorted(p.name for p in (out / "index_files").iterdir()) == ["notes.txt", "page.json"]
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "was interrupted" in html and "no such file or folder" in html
    assert "not classified (the model has no degradation head)" in html


def test_page_refuses_folder_shapes_it_cannot_use(tmp_path):
    (tmp_path / "a" / "index.html").mkdir(parents=True)
    with pytest.raises(SiplError, match="is a folder"):
        restore_page.check_output_folder(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "index_files").write_text("")
    with pytest.raises(SiplError, match="is a file"):
        restore_page.check_output_folder(tmp_path / "b")


def test_without_page_no_index_is_written(tmp_path, model_dir):
    from sipl.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "black.png")
    assert main(["restore", "--params", str(tmp_path / "none.yaml"), "--model", str(model_dir), "--no-progress",
                 "--engine", "eager", str(folder), "-o", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["black.png"]
