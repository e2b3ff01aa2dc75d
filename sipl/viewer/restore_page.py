"""``OUT/index.html`` of ``sipl restore --page``: every restored image before and after, and what the model did.

One entry per restored image: the before/after comparison (``sipl.viewer.component``), the input and output file
names (linked), the size, the degradation the model's head named with its confidence, the refinement steps applied,
the seconds it took; then every skipped input with its reason. The page lies in the output folder beside the
restored PNGs; its other files go to ``OUT/index_files/``:

- ``{output stem}.before.jpg`` / ``.after.jpg``: thumbnails (longer side ``THUMBNAIL_SIDE``) of images larger than
  that; smaller images are shown as they are. The 1:1 zoom loads the full-resolution files: the restored PNG, and
  the input file itself (linked by relative path), or ``{output stem}.input.png``, a PNG of the input as the model
  read it, where browsers cannot show the input's format (TIFF, PPM).
- ``page.json``: the records the page shows and the files it uses (the next run removes those it no longer uses).

The page lists the images of the run that wrote it. It is only written over a page that sipl wrote (its
``<meta name="generator">``): an ``index.html`` of anything else in the output folder stops the run before any work.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sipl.errors import SiplError
from sipl.viewer import component

PAGE = "index.html"
ASSETS = "index_files"
RECORD = "page.json"
GENERATOR = "sipl restore --page"


def _written_by_sipl(page: Path) -> bool:
    try:
        with page.open("rb") as stream:
            head = stream.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">'.encode() in head


def check_output_folder(out_dir: str | os.PathLike[str], option: str = "-o") -> None:
    """Raise SiplError (a usage error, before any work) when the page cannot be written in ``out_dir``: an
    ``index.html`` there that sipl did not write (never overwritten), or an ``index.html`` / ``index_files`` of
    the wrong kind (a folder, a file)."""
    folder = Path(out_dir)
    page, assets = folder / PAGE, folder / ASSETS
    if page.is_dir():
        raise SiplError(f"{option} {folder}: {page} is a folder, so --page cannot write the page there; remove it "
                        "or choose another output folder")
    if page.exists() and not _written_by_sipl(page):
        raise SiplError(f"{option} {folder}: {page} exists and was not written by `{GENERATOR}`; it is never "
                        "overwritten: move it away, or choose another output folder (-o)")
    if assets.exists() and not assets.is_dir():
        raise SiplError(f"{option} {folder}: {assets} is a file, but --page keeps the page's thumbnails in a "
                        "folder of that name; remove it or choose another output folder")


def _size_text(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


class RestorePage:
    """Collects what ``sipl.restore.run_plan`` reports (``add`` as ``on_done``, ``skip`` as ``on_failed``) and
    writes the page (``write``).

    Args:
        out_dir: the output folder of the restore (checked with ``check_output_folder`` here).
        setting: shown in the page's header: ``{"model", "scheme", "steps", "source", "engine", "device"}`` (strings).
        thumbnail_side: longer side of the thumbnails; images no larger are shown as they are.
    """

    def __init__(self, out_dir: str | os.PathLike[str], setting: dict[str, str],
                 thumbnail_side: int = component.THUMBNAIL_SIDE) -> None:
        check_output_folder(out_dir)
        self.out_dir = Path(out_dir)
        self.setting = dict(setting)
        self.thumbnail_side = thumbnail_side
        self.entries: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.assets: list[str] = []

    @property
    def path(self) -> Path:
        return self.out_dir / PAGE

    def _asset(self, name: str, data: bytes) -> str:
        """Write ``index_files/{name}`` atomically; its URL from the page."""
        from sipl.data.imageio import write_bytes_atomic

        write_bytes_atomic(data, self.out_dir / ASSETS / name)
        self.assets.append(name)
        return component.relative_url(self.out_dir / ASSETS / name, self.out_dir)

    def add(self, record: dict[str, Any], image: np.ndarray, restored: np.ndarray) -> None:
        """One restored image: ``record`` as ``run_plan`` made it, the input and the output (uint8 H×W×3)."""
        from sipl.data.imageio import encode_png

        source, output = Path(record["input"]), Path(record["output"])
        height, width = record["size"]
        stem = output.stem
        input_url = component.relative_url(source, self.out_dir)
        output_url = component.relative_url(output, self.out_dir)
        before_full = (input_url if component.shown_in_browsers(source)
                       else self._asset(f"{stem}.input.png", encode_png(image)))
        if component.thumbnail_size(height, width, self.thumbnail_side) is None:
            before_src, after_src = before_full, output_url
        else:
            before_src = self._asset(f"{stem}.before.jpg", component.thumbnail_jpeg(image, self.thumbnail_side))
            after_src = self._asset(f"{stem}.after.jpg", component.thumbnail_jpeg(restored, self.thumbnail_side))
        try:
            input_bytes = source.stat().st_size
        except OSError:
            input_bytes = None
        key = str(len(self.entries) + 1)
        self.entries.append({
            "key": key,
            "record": record,
            "input_name": source.name,
            "input_path": str(source),
            "input_url": input_url,
            "input_size": _size_text(input_bytes),
            "output_name": output.name,
            "output_url": output_url,
            "megapixels": f"{height * width / 1e6:.1f}",
            # the routing note repeats the degradation and steps the page shows beside it
            "notes": [note for note in record.get("notes", []) if not note.startswith("looks like ")],
            "comparison": component.Comparison(
                key=key, name=source.name, width=width, height=height,
                before=component.View("before", before_src, before_full),
                after=component.View("after", after_src, output_url)),
        })

    def skip(self, item: dict[str, str]) -> None:
        """One input that was not restored: ``{"input", "reason"}``."""
        source, reason = str(item["input"]), str(item["reason"])
        if reason.startswith(f"{source}: "):  # reading errors start with the path the page shows beside them
            reason = reason[len(source) + 2:]
        self.skipped.append({"input": source, "name": Path(source).name or source, "reason": reason})

    def write(self, interrupted: bool = False) -> Path:
        """Write ``index.html`` and ``index_files/page.json`` (temporary names, then renames) and remove the files
        an earlier page of this folder used and this one does not; return the page's path."""
        from sipl.atomic_files import write_json_atomic
        from sipl.data.imageio import write_bytes_atomic

        check_output_folder(self.out_dir)
        assets_dir = self.out_dir / ASSETS
        previous = self._previous_assets(assets_dir / RECORD)
        total = sum(entry["record"]["seconds"] for entry in self.entries)
        html = component.render(
            "restore.html.j2", generator=GENERATOR, entries=self.entries, skipped=self.skipped,
            setting=self.setting, total_seconds=f"{total:.1f}", interrupted=interrupted,
            written=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
        write_json_atomic(assets_dir / RECORD, {
            "generator": GENERATOR, "setting": self.setting, "interrupted": interrupted,
            "done": [entry["record"] for entry in self.entries], "skipped": self.skipped,
            "assets": sorted(self.assets)})
        write_bytes_atomic(html.encode("utf-8"), self.path)
        for name in sorted(previous - set(self.assets)):
            (assets_dir / name).unlink(missing_ok=True)
        return self.path

    @staticmethod
    def _previous_assets(record: Path) -> set[str]:
        try:
            names = json.loads(record.read_text()).get("assets", [])
        except (OSError, ValueError, AttributeError):
            return set()
        # Only plain names inside index_files/ are ever removed.
        return {name for name in names if isinstance(name, str) and name == Path(name).name and name != RECORD}
