"""Clean-image sources: the embedded default (photos shipped inside pip packages), a local folder, an s3:// prefix.

Every source yields ``SourceImage`` records; decoding happens through ``sipl.data.imageio.decode_rgb`` so EXIF
orientation and mode conversions are handled the same way everywhere. Unreadable files are reported, never fatal on
their own: the caller lists them in ``skipped.json``. Nothing in a source is ever modified.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sipl.config.sections import SourceConfig
from sipl.data.imageio import decode_rgb
from sipl.errors import SiplError
from sipl.storage import StorageError


@dataclass
class SourceImage:
    """A decoded clean image. ``image``: uint8 H×W×3 RGB. ``group``: images sharing a group (e.g. the two views of a
    stereo pair) always land in the same split."""

    source_id: str
    group: str
    uri: str
    image: np.ndarray
    notes: list[str] = field(default_factory=list)


@dataclass
class Skipped:
    uri: str
    reason: str


def safe_id(text: str) -> str:
    """A key-safe id (letters, digits, '-') that stays unique: readable stem plus a short hash of the original."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[-40:] or "image"
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def _embedded_files() -> list[tuple[str, str, Path]]:
    """(source_id, group, path) of every colour photo bundled with scikit-image, scikit-learn and matplotlib."""
    import matplotlib
    import skimage
    import sklearn

    skimage_data = Path(skimage.__file__).parent / "data"
    sklearn_images = Path(sklearn.__file__).parent / "datasets" / "images"
    mpl_data = Path(matplotlib.get_data_path()) / "sample_data"
    files = [
        ("skimage-astronaut", None, skimage_data / "astronaut.png"),
        ("skimage-chelsea", None, skimage_data / "chelsea.png"),
        ("skimage-coffee", None, skimage_data / "coffee.png"),
        ("skimage-rocket", None, skimage_data / "rocket.jpg"),
        ("skimage-hubble", None, skimage_data / "hubble_deep_field.jpg"),
        ("skimage-motorcycle-left", "skimage-motorcycle", skimage_data / "motorcycle_left.png"),
        ("skimage-motorcycle-right", "skimage-motorcycle", skimage_data / "motorcycle_right.png"),
        ("skimage-ihc", None, skimage_data / "ihc.png"),
        ("skimage-retina", None, skimage_data / "retina.jpg"),
        ("sklearn-china", None, sklearn_images / "china.jpg"),
        ("sklearn-flower", None, sklearn_images / "flower.jpg"),
        ("matplotlib-grace-hopper", None, mpl_data / "grace_hopper.jpg"),
    ]
    return [(source_id, group or source_id, path) for source_id, group, path in files]


def _load_embedded(config: SourceConfig) -> tuple[list[SourceImage], list[Skipped]]:
    images, skipped = [], []
    for source_id, group, path in _embedded_files():
        try:
            image, notes = decode_rgb(path.read_bytes(), str(path), max_pixels=config.max_pixels)
        except (OSError, SiplError) as error:
            skipped.append(Skipped(str(path), str(error)))
            continue
        # The id, not the absolute site-packages path, goes into shards so they are identical on every machine.
        uri = f"embedded:{path.parent.parent.name}/{path.parent.name}/{path.name}"
        images.append(SourceImage(source_id, group, uri, image, notes))
    return images, skipped


def _load_listing(config: SourceConfig, listing: list[str], read: Callable[[str], bytes],
                  relative: Callable[[str], str]) -> tuple[list[SourceImage], list[Skipped]]:
    prefix = config.name or config.kind
    images, skipped = [], []
    for uri in sorted(listing):
        try:
            image, notes = decode_rgb(read(uri), uri, max_pixels=config.max_pixels)
        except StorageError:
            raise  # the storage failed, not the file: skipping it would silently make another data set
        except (OSError, SiplError) as error:
            skipped.append(Skipped(uri, str(error).removeprefix(f"{uri}: ")))
            continue
        name = f"{prefix}/{relative(uri)}"
        source_id = safe_id(name)
        # Recorded relative to the source root, so shards do not depend on where (or on which store) it lives.
        images.append(SourceImage(source_id, source_id, name, image, notes))
    return images, skipped


def _load_folder(config: SourceConfig) -> tuple[list[SourceImage], list[Skipped]]:
    root = Path(config.path).expanduser()
    if not root.is_dir():
        raise SiplError(f"sources: folder {root} does not exist or is not a directory; fix the source's path in the "
                        "params file")
    listing = [str(p) for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return _load_listing(config, listing, lambda uri: Path(uri).read_bytes(),
                         lambda uri: str(Path(uri).relative_to(root)))


def _load_s3(config: SourceConfig) -> tuple[list[SourceImage], list[Skipped]]:
    from sipl import storage
    from sipl.data.shards import require_bucket

    prefix = config.path.rstrip("/")
    require_bucket(prefix, "sources")
    listing = storage.files_under(prefix)
    return _load_listing(config, listing, storage.read, lambda uri: uri[len(prefix) + 1:])


LOADERS = {"embedded": _load_embedded, "folder": _load_folder, "s3": _load_s3}


def load_sources(configs: list[SourceConfig]) -> tuple[list[SourceImage], list[Skipped]]:
    """Decode every image of every configured source. Fails if none is usable; duplicate ids are an error."""
    images: list[SourceImage] = []
    skipped: list[Skipped] = []
    for config in configs:
        found, missed = LOADERS[config.kind](config)
        images.extend(found)
        skipped.extend(missed)
    if not images:
        where = ", ".join(c.path or c.kind for c in configs)
        raise SiplError(f"sources: no usable image in {where} ({len(skipped)} file(s) skipped); "
                        "point params.yaml sources at a folder or s3:// prefix with images")
    seen: dict[str, str] = {}
    for item in images:
        if item.source_id in seen:
            raise SiplError(f"sources: {item.uri} and {seen[item.source_id]} map to the same id {item.source_id}; "
                            "give the sources distinct 'name' values")
        seen[item.source_id] = item.uri
    return images, skipped


def split_of(group: str) -> float:
    """A stable number in [0, 1) for a group id (independent of seeds and of the other images)."""
    return int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") / 2**64


def assign_splits(groups: list[str], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Map each group id to train/val/test by its stable hash value.

    ``u < val_fraction`` → val, ``< val+test`` → test, else train. With few images a requested split can come out
    empty; then the train groups with the lowest hash values are moved to it, which is still deterministic and never
    puts a group in two splits."""
    unique = sorted(set(groups))
    assignment = {}
    for group in unique:
        u = split_of(group)
        assignment[group] = "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction > 0 and split not in assignment.values():
            train = sorted((g for g in unique if assignment[g] == "train"), key=split_of)
            if len(train) > 1:
                assignment[train[0]] = split
    return assignment
