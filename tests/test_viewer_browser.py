"""The page of `sipl restore --page` in a real headless Chromium (Debian's chromium and chromium-driver), from
file://: no console errors, names shown and linked as they are, the skipped file with its reason, the divider
moving on drag (mouse and touch) and on arrow keys and changing what is shown, flip, and zoom to 1:1 pixels.

Skipped, with the reason, where Chromium or its driver is missing; `.ci/run` installs them, so CI runs it."""

from __future__ import annotations

import io
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
from PIL import Image

from tests import viewer_pages as pages

torch.set_num_threads(1)

FOUND = pages.chromium_or_reason()
pytestmark = pytest.mark.skipif(isinstance(FOUND, str), reason=str(FOUND))


@pytest.fixture(scope="module")
def restored(tmp_path_factory) -> Path:
    return pages.make_restored(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def driver():
    with pages.chromium() as browser:
        yield browser


@pytest.fixture
def page(driver, restored):
    """The page, freshly loaded, with the console log emptied."""
    pages.open_page(driver, restored / "index.html")
    pages.console_errors(driver)
    return driver


def _figure(driver, key: str):
    """The comparison figure of input ``pages.NAMES[key]``."""
    for article in driver.find_elements("css selector", "article.entry"):
        if article.find_element("css selector", "h2 a").text == pages.NAMES[key]:
            figure = article.find_element("css selector", "figure.cmp")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", figure)
            pages.wait_for(lambda: pages.images_ready(driver, figure), f"the images of {pages.NAMES[key]}")
            return figure
    raise AssertionError(f"no entry for {pages.NAMES[key]}")


def _slider(figure):
    return figure.find_element("css selector", "img-comparison-slider")


def _value(driver, figure) -> float:
    return float(driver.execute_script("return arguments[0].value", _slider(figure)))


def _shot(figure) -> np.ndarray:
    """What the figure's view shows, as an RGB array (device pixel ratio 1: one array pixel per CSS pixel)."""
    time.sleep(0.25)  # the slider's 100 ms transition
    view = figure.find_element("css selector", ".cmp-view")
    return np.asarray(Image.open(io.BytesIO(view.screenshot_as_png)).convert("RGB")).astype(np.int16)


def _scaled(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)).astype(
            np.int16)


def _closer_to(shot: np.ndarray, before: np.ndarray, after: np.ndarray, columns: slice) -> str:
    """Which image (``before``/``after``) the shot shows between ``columns``, by mean absolute difference."""
    region = (slice(4, -4), columns)
    to_before = np.abs(shot[region] - before[region]).mean()
    to_after = np.abs(shot[region] - after[region]).mean()
    assert abs(to_before - to_after) > 8, (to_before, to_after)  # the two differ clearly there
    return "before" if to_before < to_after else "after"


def _pair(restored: Path, key: str, shape) -> tuple[np.ndarray, np.ndarray]:
    name = pages.NAMES[key]
    output = restored / (Path(name).stem + ".png")
    return _scaled(restored.parent / "photos" / name, shape), _scaled(output, shape)


def test_page_loads_from_file_without_console_errors(page, restored):
    for key in pages.NAMES:  # every entry scrolled into view, its lazy images loaded
        _figure(page, key)
    assert pages.console_errors(page) == []
    assert page.execute_script("return document.querySelectorAll('img[src=\"x\"], img[onerror]').length") == 0
    headings = page.find_elements("css selector", "article.entry h2")
    assert sorted(h.find_elements("css selector", "a")[0].text for h in headings) == sorted(pages.NAMES.values())
    # every link of an entry reaches the file it names (input beside, output in the folder)
    for heading in headings:
        source, output = heading.find_elements("css selector", "a")
        source_path = Path(unquote(urlparse(source.get_attribute("href")).path))
        output_path = Path(unquote(urlparse(output.get_attribute("href")).path))
        assert source_path == (restored.parent / "photos" / source.text).resolve() and source_path.is_file()
        assert output_path == (restored / output.text).resolve() and output_path.is_file()
    skipped = page.find_element("css selector", "#skipped").text
    assert pages.BROKEN in skipped and "not a readable image" in skipped


def test_facts_of_each_image(page):
    article = _figure(page, "unicode").find_element("xpath", "./ancestor::article")
    facts = article.find_element("css selector", "dl.facts").text
    assert "320 × 240 px" in facts
    assert "denoise_25 79 %" in facts  # the head's class and confidence
    assert "1 refinement step, anchored, chosen for denoise_25" in facts
    assert " s, 1 tile" in facts


def test_divider_moves_on_drag_and_changes_what_is_shown(page, restored):
    from selenium.webdriver.common.action_chains import ActionChains

    figure = _figure(page, "quotes")
    slider = _slider(figure)
    assert _value(page, figure) == 50
    first = _shot(figure)
    before, after = _pair(restored, "quotes", first.shape)
    width = first.shape[1]
    band = slice(int(width * 0.58), int(width * 0.75))
    assert _closer_to(first, before, after, band) == "after"
    # press at the divider, drag to 85 % of the width
    ActionChains(page).move_to_element_with_offset(slider, 0, 0).click_and_hold() \
        .move_by_offset(int(width * 0.2), 5).move_by_offset(int(width * 0.15), 0).release().perform()
    assert 80 < _value(page, figure) < 90
    dragged = _shot(figure)
    assert _closer_to(dragged, before, after, band) == "before"
    assert _closer_to(dragged, before, after, slice(int(width * 0.9), width - 4)) == "after"
    assert abs(float(slider.get_attribute("aria-valuenow")) - _value(page, figure)) < 0.1
    assert pages.console_errors(page) == []


def test_divider_moves_on_touch(page, restored):
    figure = _figure(page, "quotes")
    box = page.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width,"
                              " r.height]", figure.find_element("css selector", ".cmp-view"))
    left, top, width, height = box
    page.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 1})
    try:
        y = top + height / 2
        page.execute_cdp_cmd("Input.dispatchTouchEvent",
                             {"type": "touchStart", "touchPoints": [{"x": left + width / 2, "y": y}]})
        for fraction in (0.45, 0.35, 0.25, 0.2):
            page.execute_cdp_cmd("Input.dispatchTouchEvent",
                                 {"type": "touchMove", "touchPoints": [{"x": left + width * fraction, "y": y}]})
        page.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    finally:
        page.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
    assert 15 < _value(page, figure) < 25
    shot = _shot(figure)
    before, after = _pair(restored, "quotes", shot.shape)
    assert _closer_to(shot, before, after, slice(int(shot.shape[1] * 0.3), int(shot.shape[1] * 0.45))) == "after"


def test_divider_moves_on_arrow_keys_and_flips(page, restored):
    from selenium.webdriver.common.keys import Keys

    figure = _figure(page, "quotes")
    slider = _slider(figure)
    slider.send_keys(Keys.ARROW_LEFT * 5)
    assert _value(page, figure) == 45
    slider.send_keys(Keys.SHIFT + Keys.ARROW_LEFT + Keys.SHIFT)
    assert _value(page, figure) == 35
    assert slider.get_attribute("aria-valuenow") == "35"
    shot = _shot(figure)
    before, after = _pair(restored, "quotes", shot.shape)
    band = slice(int(shot.shape[1] * 0.37), int(shot.shape[1] * 0.48))  # before at 50 %, after now
    assert _closer_to(shot, before, after, band) == "after"
    slider.send_keys(Keys.ARROW_RIGHT * 20)
    assert _value(page, figure) == 55
    assert _closer_to(_shot(figure), before, after, band) == "before"
    # flip: the whole before image, then the whole after one; an arrow key returns to the split
    slider.send_keys("t")
    assert _value(page, figure) == 100 and "showing before" in figure.text
    assert _closer_to(_shot(figure), before, after, slice(int(shot.shape[1] * 0.8), -4)) == "before"
    figure.find_element("css selector", "button[data-act=flip]").click()
    assert _value(page, figure) == 0 and "showing after" in figure.text
    slider.send_keys(Keys.ARROW_RIGHT)
    assert _value(page, figure) == 56
    assert pages.console_errors(page) == []


def test_zoom_shows_full_resolution_pixels_one_to_one(page, restored):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    figure = _figure(page, "space")  # larger than a thumbnail: fitted, the page shows the JPEG thumbnails
    images = figure.find_elements("css selector", ".cmp-pane img")
    assert all("index_files/" in image.get_attribute("src") for image in images)
    _slider(figure).send_keys("z")
    assert figure.get_attribute("data-state") == "zoom"
    pages.wait_for(lambda: pages.images_ready(page, figure) and all(
        "index_files/" not in image.get_attribute("src") for image in images), "the full-resolution images")
    name = pages.NAMES["space"]
    source, output = restored.parent / "photos" / name, restored / (Path(name).stem + ".png")
    with Image.open(output) as image:
        width, height = image.size
    assert width == pages.LARGE_SIDE
    for image in images:
        natural, shown = page.execute_script(
            "const i = arguments[0], box = i.getBoundingClientRect(); return [[i.naturalWidth, i.naturalHeight], "
            "[box.width * devicePixelRatio, box.height * devicePixelRatio]]", image)
        assert natural == [width, height] and shown == [width, height]  # one image pixel per screen pixel
    assert "1:1" in figure.text and _value(page, figure) == 50

    def compare_with_files() -> None:
        shot = _shot(figure)
        offset_x, offset_y = page.execute_script(
            "const v = arguments[0].getBoundingClientRect(), i = arguments[1].getBoundingClientRect();"
            "return [Math.round(v.left - i.left), Math.round(v.top - i.top)]",
            figure.find_element("css selector", ".cmp-view"), images[0])
        rows, cols = shot.shape[:2]
        half = cols // 2
        for path, columns in ((source, slice(4, half - 4)), (output, slice(half + 4, cols - 4))):
            with Image.open(path) as image:
                full = np.asarray(image.convert("RGB")).astype(np.int16)
            expected = full[offset_y:offset_y + rows, offset_x:offset_x + cols]
            # exact but for the few pixels under the labels and the divider's handle
            difference = np.abs(shot[4:-4, columns] - expected[4:-4, columns])
            assert difference.mean() < 1.0 and (difference <= 2).mean() > 0.99, (path.name, difference.mean())

    compare_with_files()
    # drag away from the handle: the view pans, the pixels stay 1:1
    view = figure.find_element("css selector", ".cmp-view")
    left_before = images[0].rect["x"]
    ActionChains(page).move_to_element_with_offset(view, -150, -60).click_and_hold().move_by_offset(90, 40) \
        .release().perform()
    assert images[0].rect["x"] != left_before
    compare_with_files()
    _slider(figure).send_keys(Keys.ESCAPE)
    assert figure.get_attribute("data-state") == "fit"
    assert all("index_files/" in image.get_attribute("src") for image in images)
    assert pages.console_errors(page) == []


def test_screenshot_for_the_docs(driver, restored, tmp_path):
    png = pages.capture_page(driver, restored / "index.html", tmp_path / "restore-page.png")
    with Image.open(png) as image:
        assert image.size == tuple(driver.execute_script("return [innerWidth, innerHeight]"))
    assert pages.console_errors(driver) == []


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report whose samples are flat colours per column (input red, step 0 green, step 1 blue, ground truth
    white), built from metrics and sample images written here: no model runs."""
    from sipl.evaluation.evaluate import write_sample_images
    from sipl.evaluation.report import build_report
    from tests.test_report import write_minimal_eval_json

    root = tmp_path_factory.mktemp("report")
    write_minimal_eval_json(root)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (255, 255, 255)]
    row = [np.full((48, 64, 3), colour, np.uint8) for colour in colours]
    write_sample_images(root / "plots" / "sample_images", "anchored", [("test", "split", {"derain": [row]}),
                                                                       ("rain 1", "benchmark", {"derain": [row]})])
    return build_report(root, root / "reports", None)


def test_report_samples_switch_what_each_side_shows(driver, report):
    from selenium.webdriver.support.ui import Select

    pages.open_page(driver, report)
    pages.console_errors(driver)
    figures = driver.find_elements("css selector", "figure.cmp")
    assert len(figures) == 2  # the test split's sample and the benchmark set's
    figure = figures[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", figure)
    pages.wait_for(lambda: pages.images_ready(driver, figure), "the sample's images")

    def colours() -> tuple[tuple[int, ...], tuple[int, ...]]:
        shot = _shot(figure)
        width = shot.shape[1]
        return (tuple(int(v) for v in np.median(shot[10:-10, 10:width // 2 - 30], axis=(0, 1))),
                tuple(int(v) for v in np.median(shot[10:-10, width // 2 + 30:-10], axis=(0, 1))))

    assert colours() == ((200, 30, 30), (30, 30, 200))  # input | the selected step (anchored 1)
    assert "anchored 1 (selected)" in figure.find_element("css selector", ".cmp-tag-after").text
    Select(figure.find_element("css selector", "select[data-side=after]")).select_by_visible_text("ground truth")
    pages.wait_for(lambda: pages.images_ready(driver, figure), "the ground truth")
    Select(figure.find_element("css selector", "select[data-side=before]")).select_by_visible_text("step 0")
    pages.wait_for(lambda: pages.images_ready(driver, figure), "step 0")
    assert colours() == ((30, 200, 30), (255, 255, 255))
    assert figure.find_element("css selector", ".cmp-tag-before").text == "step 0"
    assert pages.console_errors(driver) == []
