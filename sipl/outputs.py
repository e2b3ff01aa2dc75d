"""Checking where a command will write before it does any work.

A command that finds out only after minutes of work that its output folder is a file, lies under a file, or is
not writable loses that work; these checks run first and raise SiplError (exit 2, a usage error) naming the option
and the path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sipl.errors import SiplError


def writable_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Create the folder ``path`` if needed and check that files can be created in it.

    Args:
        path: the output folder a command was given. option: how the user gave it (``-o``, ``--out``), for messages.
    Returns:
        The folder as a Path.
    Raises:
        SiplError when ``path`` is an existing file, lies under a file, cannot be created, or is not writable.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise SiplError(f"{option} {folder}: is an existing file, not a folder; give a folder (it is created if "
                        "missing)")
    blocking = next((parent for parent in folder.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise SiplError(f"{option} {folder}: {blocking} is a file, so no folder can be created below it; give "
                        "another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".sipl-write-check.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise SiplError(f"{option} {folder}: cannot write there ({error.strerror or error}); give a folder you "
                        "can write to") from None
    return folder


def writable_file(path: str | os.PathLike[str], option: str) -> Path:
    """Check that the file ``path`` can be written: its folder passes ``writable_dir`` and ``path`` is not a folder.

    Returns:
        ``path`` as a Path. Raises SiplError naming ``option`` and the path otherwise.
    """
    target = Path(path)
    if target.is_dir():
        raise SiplError(f"{option} {target}: is a folder; give a file path")
    blocking = next((parent for parent in target.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise SiplError(f"{option} {target}: {blocking} is a file, so the folder for it cannot be created; give "
                        "another path")
    writable_dir(target.parent, option)
    return target
