"""What the viewer tests and the docs screenshot share: a restore page of three images with awkward names and a
skipped file, and a headless Debian Chromium to open it (selenium through Debian's chromium-driver; nothing is
downloaded).

``python -m tests.viewer_pages docs/images/restore-page.png`` writes the screenshot in docs/ through the same
code path as ``tests/test_viewer_browser.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Three restored images, one skipped: a space, quotes and markup, non-ASCII; one larger than a thumbnail.
NAMES = {
    "space": "harbour photo 1.png",
    "quotes": """it's "quoted" <img src=x onerror=alert(1)>.jpg""",
    "unicode": "café Δέλτα #2.png",
}
BROKEN = "broken scan.png"
LARGE_SIDE = 1400  # above sipl.viewer.component.THUMBNAIL_SIDE: the page shows thumbnails for this one
CLASSES = ["clean", "denoise_25", "derain"]


def write_head_model(directory: Path) -> Path:
    """A tiny untrained SIPL model with a degradation head that names ``denoise_25`` (about 78 %), and a selection
    that refines that class by one step: the page then shows a class, a confidence and a step count."""
    import torch

    from sipl.models import build_model
    from sipl.models.files import save_model
    from tests.test_evaluate import TINY_MODEL

    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True, degradation_classes=CLASSES, **TINY_MODEL)
    with torch.no_grad():
        model.head.classify.weight.zero_()
        model.head.classify.bias.copy_(torch.tensor([0.0, 2.0, 0.0]))
    save_model(model, directory, {"note": "untrained test model with a degradation head"})
    (directory / "selection.json").write_text(json.dumps(
        {"scheme": "anchored", "steps": 0, "per_task": {"denoise_25": 1, "derain": 0}}))
    return directory


def write_inputs(folder: Path) -> dict[str, Path]:
    """The inputs: three photos (one of ``LARGE_SIDE`` px) and an unreadable file; returns key -> path."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def noisy(image: np.ndarray) -> np.ndarray:
        return np.clip(image + rng.normal(0, 18, image.shape), 0, 255).astype(np.uint8)

    large = np.asarray(Image.fromarray(data.astronaut()).resize((LARGE_SIDE, LARGE_SIDE * 2 // 3 // 16 * 16)))
    images = {"space": noisy(large), "quotes": noisy(data.chelsea()), "unicode": noisy(data.coffee()[:240, :320])}
    paths = {}
    for key, image in images.items():
        paths[key] = folder / NAMES[key]
        Image.fromarray(image).save(paths[key], quality=92)
    paths["broken"] = folder / BROKEN
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(120)))
    return paths


def restore_with_page(folder: Path, model_dir: Path, out: Path, *extra: str) -> int:
    """``sipl restore FOLDER -o OUT --page`` on the eager engine (no ONNX export to wait for); its exit code."""
    from sipl.cli import main

    return main(["restore", "--params", str(folder / "no-params.yaml"), "--model", str(model_dir), "--no-progress",
                 "--engine", "eager", "--page", str(folder), "-o", str(out), *extra])


def chromium_or_reason() -> tuple[str, str] | str:
    """(browser, driver) paths of Debian's chromium and chromium-driver, or why there are none."""
    browser = next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    missing = [what for what, path in (("chromium", browser), ("chromedriver (chromium-driver)", driver))
               if path is None]
    if missing:
        return (f"{' and '.join(missing)} not on the PATH; install Debian's packages (`apt-get install chromium "
                "chromium-driver`; .ci/run does) to run the browser test")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed; `pip install -e '.[dev]'`"
    return browser, driver


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver) at device pixel ratio 1 that records the console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = chromium_or_reason()
    if isinstance(found, str):
        raise RuntimeError(found)
    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--force-device-scale-factor=1", f"--window-size={width},{height}", "--hide-scrollbars",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    profile = tempfile.mkdtemp(prefix="sipl-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``condition`` until it returns something true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def open_page(driver: Any, page: Path) -> None:
    """Load ``page`` from file:// and wait until the slider is defined and the visible images are decoded."""
    driver.get(page.resolve().as_uri())
    wait_for(lambda: driver.execute_script(
        "return !!customElements.get('img-comparison-slider') && document.readyState === 'complete'"),
        "the page and its comparison component")


def images_ready(driver: Any, figure: Any) -> bool:
    """Whether both images of a comparison figure are loaded."""
    return driver.execute_script(
        "return [...arguments[0].querySelectorAll('.cmp-pane img')].every(i => i.complete && i.naturalWidth > 0)",
        figure)


def console_errors(driver: Any) -> list[str]:
    """Browser console messages of level SEVERE (errors, uncaught exceptions, failed loads) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def make_restored(tmp: Path, model_dir: Path | None = None) -> Path:
    """Write the inputs under ``tmp/photos`` and restore them with a page into ``tmp/restored`` (the tests' tiny
    model unless ``model_dir`` is given); return the output folder."""
    model_dir = Path(model_dir).resolve() if model_dir else write_head_model(tmp / "models")
    write_inputs(tmp / "photos")
    with contextlib.chdir(tmp):  # relative paths, as a user types them, in the page's header
        code = restore_with_page(Path("photos"), Path(os.path.relpath(model_dir, tmp)), Path("restored"))
    if code != 1:  # the broken file makes it 1
        raise RuntimeError(f"sipl restore --page exited {code}, not 1")
    return tmp / "restored"


def capture_page(driver: Any, page: Path, png: Path) -> Path:
    """Save a screenshot of the top of ``page`` (its entries' images loaded, the first divider moved to 35 % with
    the arrow key) to ``png`` (temporary name, then a rename)."""
    from sipl.atomic_files import temp_path_beside

    open_page(driver, page)
    figures = driver.find_elements("css selector", "figure.cmp")
    for figure in figures[:2]:
        driver.execute_script("arguments[0].scrollIntoView()", figure)
        wait_for(lambda f=figure: images_ready(driver, f), "the images of the first entries")
    from selenium.webdriver.common.keys import Keys

    figures[0].find_element("css selector", "img-comparison-slider").send_keys(Keys.ARROW_LEFT * 15)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)  # the slider's 100 ms transition
    png.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_beside(png)
    try:
        temp.write_bytes(driver.get_screenshot_as_png())
        os.replace(temp, png)
    finally:
        temp.unlink(missing_ok=True)
    return png


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", nargs="?", default="docs/images/restore-page.png")
    parser.add_argument("--model", default=None, help="an exported model folder (default: the tests' tiny model)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipl-page-") as folder:
        restored = make_restored(Path(folder), Path(arguments.model) if arguments.model else None)
        with chromium(1100, 1000) as browser:
            print(capture_page(browser, restored / "index.html", Path(arguments.png)), file=sys.stderr)
