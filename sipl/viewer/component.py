"""The before/after comparison viewer: its assets, templates, links and thumbnails.

One comparison is a ``Comparison``: two ``View``s (what the left and the right side show: a label, the image shown
fitted to the page, and the full-resolution image shown by the 1:1 zoom) and, on the report, the ``choices`` each
side can switch to. ``templates/compare.html.j2`` renders it as a ``<figure class="cmp">`` holding an
``<img-comparison-slider>`` (vendored under ``vendor/``, MIT) that ``static/viewer.js`` drives; a page inlines
``assets()`` (CSS and scripts) once, so it opens from disk with no server and no network.

Every page is rendered by Jinja2 with autoescaping, and every file link goes through ``relative_url`` (each path
segment percent-encoded): a file name with spaces, quotes, ``#``, ``<`` or non-ASCII characters is shown as text and
links to exactly that file, never becoming markup or script.
"""

from __future__ import annotations

import functools
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

HERE = Path(__file__).parent
VENDOR = HERE / "vendor" / "img-comparison-slider"
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"

# Formats every current browser shows in an <img>: inputs in these are linked as they are for the 1:1 view;
# others (TIFF, PPM/PGM) get a PNG copy beside the page.
BROWSER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"})
# Longer side of the images shown fitted to the page; larger images get JPEG thumbnails of this side, so a page of
# hundreds of 24-megapixel photos loads a few hundred kB per image side, and only when scrolled into view.
THUMBNAIL_SIDE = 1280
THUMBNAIL_QUALITY = 90


@dataclass(frozen=True)
class View:
    """What one side of a comparison shows: ``label`` (``before``, ``step 0``), ``src`` (the URL shown fitted to
    the page: a thumbnail or the image itself) and ``full`` (the URL of the full-resolution image, for 1:1)."""

    label: str
    src: str
    full: str


@dataclass(frozen=True)
class Comparison:
    """One before/after figure. ``key``: unique on its page (element ids); ``name``: what is compared, for
    screen readers (a file name); ``width``/``height``: the full-resolution size in pixels, equal on both sides;
    ``choices``: views either side can switch to (the report's columns), empty for a fixed pair."""

    key: str
    name: str
    width: int
    height: int
    before: View
    after: View
    choices: tuple[View, ...] = field(default_factory=tuple)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@functools.cache
def assets() -> dict[str, str]:
    """``{"css", "js"}``: the viewer's stylesheet and script (the vendored slider with its licence, then
    ``viewer.js``), to inline once per page. Raises RuntimeError if a file could end its ``<style>``/``<script>``
    element early."""
    slider = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "\n", _read(VENDOR / "index.js"))  # the map is not shipped
    licence = _read(VENDOR / "LICENSE").strip()
    parts = {
        "css": _read(VENDOR / "styles.css") + "\n" + _read(STATIC / "viewer.css"),
        "js": f"/*! img-comparison-slider 8.0.7 (sipl/viewer/vendor/img-comparison-slider)\n{licence}\n*/\n"
              + slider + "\n" + _read(STATIC / "viewer.js"),
    }
    for name, text in parts.items():
        if re.search(r"</(script|style)", text, re.IGNORECASE):
            raise RuntimeError(f"{HERE}: the viewer's {name} contains a closing </script> or </style> tag and "
                               "cannot be inlined; fix the file")
    return parts


@functools.cache
def environment():
    """The Jinja2 environment of the viewer's templates: autoescaping on, undefined names are errors."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context) -> str:
    """Render ``templates/{template}`` with ``context`` plus ``assets`` (CSS and script, marked safe)."""
    from markupsafe import Markup

    inline = {name: Markup(text) for name, text in assets().items()}
    return environment().get_template(template).render(assets=inline, **context)


def relative_url(target: str | os.PathLike[str], base_dir: str | os.PathLike[str]) -> str:
    """The URL of the file ``target`` relative to the folder ``base_dir`` (where the page lies), each path segment
    percent-encoded (spaces, quotes, ``#``, ``?``, ``:``, non-ASCII), so that it reaches exactly that file and
    never reads as another scheme; an absolute ``file:`` URL where no relative path exists (another drive)."""
    target, base_dir = os.path.abspath(target), os.path.abspath(base_dir)
    try:
        relative = os.path.relpath(target, base_dir)
    except ValueError:
        return Path(target).as_uri()
    return "/".join(quote(part, safe="") for part in Path(relative).parts)


def shown_in_browsers(path: str | os.PathLike[str]) -> bool:
    """Whether browsers display the file ``path`` in an ``<img>`` (by its suffix)."""
    return Path(path).suffix.lower() in BROWSER_SUFFIXES


def thumbnail_size(height: int, width: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int] | None:
    """(height, width) of the thumbnail of an image, its longer side ``side``; None when the image is no larger."""
    longer = max(height, width)
    if longer <= side:
        return None
    scale = side / longer
    return max(1, round(height * scale)), max(1, round(width * scale))


def thumbnail_jpeg(image: np.ndarray, side: int = THUMBNAIL_SIDE, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """JPEG bytes of a uint8 H×W×3 image scaled to the longer side ``side`` (Lanczos, reduced in steps first, so a
    24-megapixel image takes a fraction of a second); the image itself when it is no larger."""
    from PIL import Image

    picture = Image.fromarray(image)
    size = thumbnail_size(*image.shape[:2], side=side)
    if size is not None:
        picture = picture.resize((size[1], size[0]), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
