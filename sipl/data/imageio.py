"""Reading users' images into one canonical form, and writing PNGs atomically.

Canonical form: uint8 H×W×3 RGB, EXIF orientation applied. Anything else (grey, palette, RGBA, CMYK, 16-bit) is
converted and the conversion is reported as a note, so callers can log what happened to each file. Unreadable,
truncated, zero-byte or non-image inputs, and images with more pixels than the caller's limit (decompression bombs:
a small file that decodes to gigabytes), raise SiplError naming the file. Error messages carry no object addresses,
so the same file always gives the same message (skip lists written into shards stay byte-identical).
"""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sipl.atomic_files import write_bytes_atomic  # noqa: F401  (also used as imageio.write_bytes_atomic)
from sipl.errors import SiplError

# Pillow's own default limit (1024**3 / 4 / 3 pixels, about 89.5 million: 0.25 GiB of 8-bit RGB); images above the
# limit are refused before decoding. Raise it per call (`sipl restore --max-pixels`, params `sources[i].max_pixels`).
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# Pillow's limit is a module global; decoding under another limit swaps it under this lock.
_PIXEL_LIMIT_LOCK = threading.Lock()
# "<_io.BytesIO object at 0x7f...>" and the like in decoder messages differ from run to run.
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")

# Orientation tag value -> numpy operations that undo it (PIL's exif_transpose semantics).
_ORIENTATION_OPS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.rot90(a, k=1)[::-1, :],
    8: lambda a: np.rot90(a, k=1),
}


def _sixteen_bit_colour(data: bytes) -> np.ndarray | None:
    """Pillow silently reads 16-bit colour PNG/TIFF as 8-bit; OpenCV keeps the depth. Returns RGB(A) uint16 or None."""
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:  # OpenCV's own pixel limit or a decoder failure: Pillow's 8-bit reading stands
        return None
    if decoded is None or decoded.dtype != np.uint16 or decoded.ndim != 3:
        return None
    code = cv2.COLOR_BGRA2RGBA if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(decoded, code)


def _alpha_over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite an RGBA float array in [0,1] over white (transparent areas become white, not black)."""
    alpha = rgba[..., 3:4]
    return rgba[..., :3] * alpha + (1.0 - alpha)


def _open_limited(data: bytes, max_pixels: int) -> Image.Image:
    """``Image.open`` (header only) under a pixel limit of ``max_pixels`` instead of Pillow's global one."""
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        # Pillow raises only above twice its limit (and warns between); the exact check is the caller's.
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def too_many_pixels(width: int, height: int, max_pixels: int, name: str) -> SiplError:
    """The error for an image above the pixel limit: its size, the limit and how to raise it."""
    return SiplError(f"{name}: {width}x{height} = {width * height:,} pixels is above the limit of {max_pixels:,} "
                     "(a possible decompression bomb); if you trust the file, raise the limit (--max-pixels, or "
                     "max_pixels in params sources / benchmarks)")


def decode_rgb(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """Decode encoded image bytes to uint8 H×W×3 RGB.

    Args:
        data: the file's bytes. name: used in notes and errors (a path or URL).
        max_pixels: images with more pixels (width × height, read from the header) are refused before decoding.
    Returns:
        (image uint8 H×W×3, notes) where notes describe every conversion applied.
    Raises:
        SiplError if the bytes are empty, not an image, truncated, or above ``max_pixels``.
    """
    if not data:
        raise SiplError(f"{name}: empty file (0 bytes)")
    notes: list[str] = []
    try:
        with _open_limited(data, max_pixels) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise too_many_pixels(width, height, max_pixels, name)
            image.load()  # forces a full decode: truncated files fail here, not later
            orientation = image.getexif().get(0x0112, 1)
            mode = image.mode
            if getattr(image, "n_frames", 1) > 1:
                notes.append(f"{image.n_frames} frames; using the first")
            deep = _sixteen_bit_colour(data) if image.format in ("PNG", "TIFF") else None
            if deep is not None:
                array = deep.astype(np.float32) / 65535.0
                notes.append("16-bit colour converted to 8-bit")
            elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raw = np.asarray(image).astype(np.float32)
                scale = 65535.0 if mode.startswith("I;16") or raw.max() > 255 else 255.0
                if mode == "F":
                    scale = max(float(raw.max()), 1.0) if raw.max() > 1.0 else 1.0
                array = np.clip(raw / scale, 0.0, 1.0)[..., None].repeat(3, axis=2)
                notes.append(f"{mode} greyscale ({'16-bit' if scale == 65535.0 else 'high depth'}) converted to 8-bit RGB")
            else:
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
                    rgba = np.asarray(image.convert("RGBA")).astype(np.float32) / 255.0
                    if rgba[..., 3].min() < 1.0:
                        notes.append(f"{mode} with transparency composited over white")
                    array = _alpha_over_white(rgba)
                else:
                    if mode != "RGB":
                        notes.append(f"{mode} converted to RGB")
                    array = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        detail = _OBJECT_REPR.sub("", str(error))
        raise SiplError(f"{name}: not a readable image ({type(error).__name__}: {detail})") from None
    if orientation in _ORIENTATION_OPS:
        array = _ORIENTATION_OPS[orientation](array)
        notes.append(f"EXIF orientation {orientation} applied")
    rgb = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb), notes


def read_rgb(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """Read a local image file as uint8 H×W×3 RGB with EXIF orientation applied; see ``decode_rgb``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SiplError(f"{path}: cannot be read ({error.strerror or error})") from None
    return decode_rgb(data, str(path), max_pixels=max_pixels)


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a uint8 H×W×3 (or H×W) array. Deterministic for a given Pillow version."""
    if image.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {image.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def write_png_atomic(image: np.ndarray, path: str | os.PathLike[str], compress_level: int = 3) -> None:
    """Save a uint8 H×W×3 array as PNG at ``path`` atomically (temporary name, then rename)."""
    write_bytes_atomic(encode_png(image, compress_level=compress_level), path)
