"""Replacing a complete shard set with a new one, so that a failed or interrupted write never costs the earlier set.

Used by ``sipl synthesize``, ``sipl import-benchmark`` and ``sipl benchmarks``.

- Local roots: the new set is built in ``{root}.partial`` and swapped in when complete; the old folder is removed
  only after the swap.
- S3 roots (S3 has no rename): the new set's objects go under a new generation prefix
  ``{root}/gen-{UTC time}-{random}/`` that no manifest names yet. ``{root}/manifest.json``, which names the
  generation (``"generation"``, followed by ``sipl.data.shards.data_root``), is written last, in one PUT: that is the
  switch. Only then are older generations, and the objects of a set written before generations existed, removed. A
  run that fails or is interrupted before the switch leaves readers on the earlier set, and leaves an incomplete
  generation behind that no manifest names; the next successful run removes it. One writer per root at a time, as
  locally (two runs would share ``{root}.partial``).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from sipl import storage
from sipl.data.shards import MANIFEST, SKIPPED, is_remote, join, read_bytes, write_json
from sipl.storage import StorageError

GENERATION = re.compile(r"^gen-\d{8}T\d{6}Z-[0-9a-f]{6}$")


def new_generation() -> str:
    """A fresh generation name: ``gen-{UTC yyyymmddThhmmssZ}-{6 hex digits}`` (sorts by start time)."""
    return f"gen-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


def staging_root(root: str) -> str:
    """A new, empty ``{root}.partial`` folder beside a local root."""
    staging = Path(f"{root.rstrip('/')}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return str(staging)


def swap(staging: str, root: str) -> None:
    """Swap a complete local staging folder into place (the old output is removed only after the swap)."""
    target = Path(root)
    old = Path(f"{root.rstrip('/')}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    Path(staging).rename(target)
    shutil.rmtree(old, ignore_errors=True)


class NewSet:
    """A shard set being written to ``root``: shards go under ``out``; ``commit`` makes the set current. Used as a
    context manager, a failure inside drops the set (``abandon``) and a StorageError says what was kept (``kept``)."""

    def __init__(self, root: str) -> None:
        self.root = root
        if is_remote(root):
            self.generation: str | None = new_generation()
            self.out = join(root, self.generation)
        else:
            self.generation = None
            self.out = staging_root(root)

    def commit(self, manifest: dict[str, Any], skipped: list[dict[str, str]]) -> dict[str, Any]:
        """Write ``skipped.json`` and the manifest, then make the set current; returns the manifest as written (on
        S3 with its ``generation``)."""
        if self.generation is None:
            write_json(join(self.out, SKIPPED), skipped)
            write_json(join(self.out, MANIFEST), manifest)
            swap(self.out, self.root)
            return manifest
        previous = _manifest_at(self.root)
        manifest = {**manifest, "generation": self.generation}
        write_json(join(self.out, SKIPPED), skipped)
        write_json(join(self.root, MANIFEST), manifest)  # the switch: readers now follow it to the new generation
        try:
            storage.remove(self._stale(previous), f"the earlier sets under {self.root}")
        except StorageError as error:
            print(f"sipl: warning: the new set at {self.root} is complete and current, but older objects could not "
                  f"be removed ({error}); the next successful run removes them", file=sys.stderr, flush=True)
        return manifest

    def __enter__(self) -> "NewSet":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> None:
        if error is None:
            return
        self.abandon()
        if isinstance(error, StorageError):
            raise StorageError(f"{error}; {self.kept()}") from None

    def abandon(self) -> None:
        """After a failure: remove a local staging folder (an S3 generation is left for the next run to remove)."""
        if self.generation is None:
            shutil.rmtree(self.out, ignore_errors=True)

    def kept(self) -> str:
        """What a failure before ``commit`` leaves in place, for its message."""
        return (f"nothing was replaced: {join(self.root, MANIFEST)} still names the earlier complete set, if there "
                f"was one (the unfinished {self.out}/ is removed by the next successful run)")

    def _stale(self, previous: dict[str, Any] | None) -> list[str]:
        """Objects of every other generation under the root, and of a set written there before generations."""
        urls = []
        for entry in storage.entries_under(self.root):
            name = entry.rsplit("/", 1)[-1]
            if GENERATION.match(name) and name != self.generation:
                urls += storage.files_under(entry)
        if previous is not None and not previous.get("generation"):
            urls += [join(self.root, split, shard["name"]) for split, tasks in (previous.get("splits") or {}).items()
                     for entry in (tasks or {}).values() for shard in (entry or {}).get("shards") or []
                     if isinstance(shard, dict) and shard.get("name")]
            urls.append(join(self.root, SKIPPED))
        return urls


def _manifest_at(root: str) -> dict[str, Any] | None:
    """The manifest now at ``root`` (None when there is none or it is not a manifest)."""
    try:
        manifest = json.loads(read_bytes(join(root, MANIFEST)))
    except (FileNotFoundError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("splits"), dict) else None
