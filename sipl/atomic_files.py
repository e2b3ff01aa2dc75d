"""Writing files atomically: a temporary file in the same folder, then a rename.

A reader (or a run interrupted half-way) never sees a partial file: the target either keeps its old content or has
the new one. Used for every shard, image, metrics, plot, model and checkpoint file the stages write. A failed write
raises an OSError naming the file asked for (never the hidden temporary one), so a full disk names its folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def temp_path_beside(final: Path) -> Path:
    """A new empty file in ``final``'s folder under a hidden temporary name, to write and then rename over
    ``final``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def named_error(error: OSError, final: Path) -> OSError:
    """``error`` as it concerns ``final``: a write that failed on the hidden temporary file (or on no file at all, as
    a full disk does on flush) names the file the caller asked for, so the message points at the right folder."""
    if error.filename is not None and Path(error.filename) != final and not Path(error.filename).name.startswith(
            f".{final.name}."):
        return error
    named = OSError(error.errno, error.strerror or str(error), str(final))
    named.__cause__ = error
    return named


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename. An OSError names
    ``path``, not the temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_beside(path)
    except OSError as error:
        raise named_error(error, path) from None
    try:
        with open(tmp, "wb") as stream:
            stream.write(data)
        os.replace(tmp, path)
    except OSError as error:
        raise named_error(error, path) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and a rename."""
    write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` via a temporary file in the same folder and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
