"""WebDataset shards: the on-disk (or on-S3) format between synthesis and training / evaluation.

Layout: ``{root}/{split}/{task}-{NNNNNN}.tar`` and ``{root}/manifest.json``; ``root`` is a local folder or an
``s3://bucket/prefix``. On S3 each complete set lives in a generation prefix of its own,
``{root}/{generation}/{split}/...``, and ``{root}/manifest.json`` names it (``"generation"``): the manifest is the
pointer that readers follow (``data_root``), written last, so a failed write never touches the set it names
(``sipl.data.publish``). A sample is three tar members sharing the key ``{task}__{source_id}__{crop:03d}``:
``lq.npy`` and ``gt.npy`` (uint8 H×W×3; ``.png`` when the encoding is png) and ``json`` (task, family, split,
source_id, crop_box, seed, applied degradation parameters).

Tars are written with fixed member metadata (mtime 0, uid/gid 0, mode 0444) and JSON with sorted keys, so the same
samples give byte-identical shards. Importing this module registers an fsspec-backed ``s3`` scheme with
WebDataset's ``gopen`` (webdataset 1.0.2 has none), so DataLoader workers inherit it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from sipl import storage
from sipl.errors import SiplError

MANIFEST = "manifest.json"
SKIPPED = "skipped.json"
SPLITS = ("train", "val", "test")
KEY_SEPARATOR = "__"
# The one set of a clean-only train split (shards.train_pairs: false): clean crops, degraded by the loader per read.
CLEAN_SET = "clean"


# ----------------------------------------------------------------------------------------------- locations

def is_remote(root: str) -> bool:
    return str(root).startswith("s3://")


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local root or an s3:// prefix."""
    if is_remote(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root, *parts))


def _open_remote(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any):
    return storage.RemoteReader(url)


def _register_gopen_s3() -> None:
    from webdataset.gopen import gopen_schemes

    gopen_schemes["s3"] = _open_remote


_register_gopen_s3()


def bucket_of(url: str) -> str:
    """The bucket name of an ``s3://bucket/prefix`` URL."""
    return str(url)[len("s3://"):].split("/", 1)[0]


def require_bucket(url: str, key: str) -> None:
    """Fail unless the bucket of an ``s3://`` URL exists (local paths pass). Writers call it before any work, and
    never create buckets: a typo in a bucket name must not create storage.

    Args:
        url: the location to be read or written. key: the params key or option that gave it, for the message.
    Raises:
        SiplError naming the key, the bucket and what to do.
    """
    if not is_remote(url):
        return
    bucket = bucket_of(url)
    try:
        with storage.storage_errors("list", f"s3://{bucket} (the bucket of {key})"):
            storage.filesystem().ls(bucket, refresh=True)
    except FileNotFoundError:
        raise SiplError(f"{key}: bucket '{bucket}' of {url} does not exist. Create it first (sipl never creates "
                        f"buckets) or fix the bucket name in {key}.") from None


def read_bytes(url: str) -> bytes:
    """Whole content of a local file or an s3:// object."""
    if is_remote(url):
        return storage.read(url)
    return Path(url).read_bytes()


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object atomically: a temporary name + rename locally; one PUT on S3 (atomic by S3 semantics;
    a missing bucket fails and is never created)."""
    if is_remote(url):
        storage.write(url, data)
        return
    from sipl.atomic_files import write_bytes_atomic

    write_bytes_atomic(data, url)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ samples

def sample_key(task: str, source_id: str, crop_index: int) -> str:
    """The WebDataset key of one sample (no dots: WebDataset splits member names at the first dot)."""
    for part, label in ((task, "task"), (source_id, "source id")):
        if "." in part or KEY_SEPARATOR in part or "/" in part:
            raise ValueError(f"{label} {part!r} may not contain '.', '/' or '{KEY_SEPARATOR}'")
    return f"{task}{KEY_SEPARATOR}{source_id}{KEY_SEPARATOR}{crop_index:03d}"


@dataclass
class Sample:
    """One degraded/clean pair. ``lq`` and ``gt``: uint8 H×W×3 RGB arrays (``lq`` None when writing a clean-only
    train sample, set ``CLEAN_SET``); ``meta``: the sample's json."""

    key: str
    task: str
    lq: np.ndarray | None
    gt: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _encode_array(image: np.ndarray, encoding: str) -> tuple[str, bytes]:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"shard images must be uint8 H×W×3, got {image.dtype} {image.shape}")
    if encoding == "npy":
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(image), allow_pickle=False)
        return "npy", buffer.getvalue()
    if encoding == "png":
        from sipl.data.imageio import encode_png

        return "png", encode_png(image, compress_level=1)
    raise ValueError(f"unknown shard encoding {encoding!r}; allowed: 'npy', 'png'")


def _decode_array(data: bytes, extension: str, where: str) -> np.ndarray:
    if extension == "npy":
        array = np.load(io.BytesIO(data), allow_pickle=False)
    elif extension == "png":
        from sipl.data.imageio import decode_rgb

        array, _ = decode_rgb(data, where)
    else:
        raise SiplError(f"{where}: unsupported image member '.{extension}'")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise SiplError(f"{where}: expected uint8 H×W×3, found {array.dtype} {array.shape}")
    return np.array(array)  # writable copy (torch.from_numpy warns on read-only buffers)


def decode_sample(raw: dict[str, Any]) -> Sample:
    """Turn a WebDataset raw sample (``{"__key__", "lq.npy"/"lq.png", "gt.*", "json"}`` of bytes) into a Sample.

    Raises SiplError naming the key and shard when a member is missing or undecodable."""
    key = raw.get("__key__", "?")
    where = f"sample {key} in {raw.get('__url__', 'shard')}"
    images = {}
    for role in ("gt", "lq"):
        member = next((name for name in raw if name.startswith(role + ".")), None)
        if member is None and role == "lq" and key.startswith(CLEAN_SET + KEY_SEPARATOR):
            images["lq"] = images["gt"]  # a clean-only train sample: its input is degraded afresh by the loader
            continue
        if member is None:
            raise SiplError(f"{where}: no '{role}.npy' or '{role}.png' member")
        images[role] = _decode_array(raw[member], member.split(".", 1)[1], where)
    meta_bytes = raw.get("json")
    try:
        meta = json.loads(meta_bytes) if meta_bytes is not None else {}
    except ValueError as error:
        raise SiplError(f"{where}: bad json member ({error})") from None
    if images["lq"].shape != images["gt"].shape:
        raise SiplError(f"{where}: lq {images['lq'].shape} and gt {images['gt'].shape} differ in shape")
    task = meta.get("task") or key.split(KEY_SEPARATOR, 1)[0]
    return Sample(key=key, task=task, lq=images["lq"], gt=images["gt"], meta=meta)


# ------------------------------------------------------------------------------------------------ writing

def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def encode_shard(samples: Iterable[Sample], encoding: str = "npy") -> bytes:
    """Bytes of one tar shard holding ``samples`` in order (deterministic)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for role, image in (("lq", sample.lq), ("gt", sample.gt)):
                if image is None:  # clean-only train samples store the ground truth alone
                    continue
                extension, data = _encode_array(image, encoding)
                _tar_member(tar, f"{sample.key}.{role}.{extension}", data)
            meta = json.dumps(sample.meta, sort_keys=True, separators=(",", ":")).encode()
            _tar_member(tar, f"{sample.key}.json", meta)
    return buffer.getvalue()


def shard_name(task: str, index: int) -> str:
    return f"{task}-{index:06d}.tar"


def write_task_shards(root: str, split: str, task: str, samples: list[Sample], encoding: str,
                      maxcount: int) -> list[dict[str, Any]]:
    """Write ``samples`` of one split/task as shards of at most ``maxcount`` samples.

    Returns the manifest entries ``[{"name", "samples", "sha256"}]``. Each shard is written atomically."""
    entries = []
    for index, start in enumerate(range(0, len(samples), maxcount)):
        chunk = samples[start:start + maxcount]
        data = encode_shard(chunk, encoding)
        name = shard_name(task, index)
        write_bytes(join(root, split, name), data)
        entries.append({"name": name, "samples": len(chunk), "sha256": sha256_bytes(data)})
    return entries


def write_json(url: str, payload: Any) -> None:
    write_bytes(url, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


# ------------------------------------------------------------------------------------------------ reading

def read_manifest(root: str) -> dict[str, Any]:
    """The manifest of a shard root; SiplError says which stage to run when it is missing or unreadable."""
    url = join(root, MANIFEST)
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        raise SiplError(f"{url}: no shard manifest. Run `sipl synthesize` (or `dvc repro synthesize`) first, "
                        "or point shards.root at a folder that has one.") from None
    except OSError as error:
        raise SiplError(f"{url}: cannot read the shard manifest ({error})") from None
    try:
        manifest = json.loads(data)
    except ValueError as error:
        raise SiplError(f"{url}: not valid JSON ({error}); re-run `sipl synthesize`") from None
    if "splits" not in manifest:
        raise SiplError(f"{url}: not a shard manifest (no 'splits' key); re-run `sipl synthesize`")
    return manifest


def data_root(root: str, manifest: dict[str, Any]) -> str:
    """Where the shards a manifest lists live: ``{root}/{generation}`` for a set written in generations (S3),
    else ``root`` itself."""
    generation = manifest.get("generation")
    return join(root, generation) if generation else root


def clean_only_train(manifest: dict[str, Any]) -> bool:
    """Whether the train split holds clean crops only (``shards.train_pairs: false``; manifests written before the
    key hold pairs)."""
    return manifest.get("train_pairs", True) is False


def train_entries(manifest: dict[str, Any], tasks: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """The manifest's train entry of each task; in a clean-only train split (``shards.train_pairs: false``) every
    task reads the one ``clean`` entry."""
    listed = manifest.get("splits", {}).get("train", {})
    if clean_only_train(manifest):
        return {task: listed.get(CLEAN_SET) for task in tasks}
    return {task: listed.get(task) for task in tasks}


def shard_urls(root: str, split: str, task: str | None = None, manifest: dict[str, Any] | None = None) -> list[str]:
    """URLs (local paths or s3://) of the shards of a split, optionally of one task, in manifest order.

    Raises SiplError naming the split/task when there are none."""
    manifest = manifest if manifest is not None else read_manifest(root)
    tasks = manifest["splits"].get(split)
    if not tasks:
        raise SiplError(f"{join(root, MANIFEST)}: split '{split}' has no shards; check splits.* fractions and "
                        "re-run `sipl synthesize`")
    if task is not None and split == "train" and clean_only_train(manifest):
        task = CLEAN_SET  # a clean-only train split: every task reads the clean crops
    if task is not None:
        if task not in tasks or not tasks[task]["shards"]:
            raise SiplError(f"{join(root, MANIFEST)}: task '{task}' has no shards in split '{split}' "
                            f"(have: {sorted(tasks)}); add it to params.yaml tasks and re-run `sipl synthesize`")
        selected = [task]
    else:
        selected = sorted(tasks)
    base = data_root(root, manifest)
    return [join(base, split, entry["name"]) for name in selected for entry in tasks[name]["shards"]]


def iter_tar_members(url: str) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of a tar shard, in order. SiplError names the shard if it is truncated or not a tar."""
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        raise SiplError(f"{url}: shard missing; re-run `sipl synthesize`") from None
    yield from _tar_members(url, data)


def _tar_members(url: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    yield info.name, tar.extractfile(info).read()
    except (tarfile.TarError, EOFError) as error:
        raise SiplError(f"{url}: corrupt shard ({error}); re-run `sipl synthesize`") from None


def shard_entries(root: str, split: str, task: str, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest entries of one split/task with their URLs: ``[{"url", "name", "samples", "sha256"}]``."""
    shard_urls(root, split, task, manifest=manifest)  # SiplError naming split/task when it has no shards
    base = data_root(root, manifest)
    return [{**entry, "url": join(base, split, entry["name"])} for entry in manifest["splits"][split][task]["shards"]]


def verify_shards(entries: list[dict[str, Any]], fix: str = "re-run `sipl synthesize` or `dvc pull`") -> None:
    """Check that every shard exists and has the manifest's sha256 (which also catches a tar cut at a member
    boundary, still a valid tar). Reads each shard once; SiplError names the shard and ``fix``."""
    for entry in entries:
        _checked_bytes(entry, fix)


def _checked_bytes(entry: dict[str, Any], fix: str) -> bytes:
    url = entry["url"]
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        raise SiplError(f"shard {url} is listed in the manifest but missing; {fix}") from None
    except OSError as error:
        raise SiplError(f"shard {url} cannot be read ({error}); {fix}") from None
    if entry.get("sha256") and sha256_bytes(data) != entry["sha256"]:
        raise SiplError(f"shard {url} does not match the manifest (sha256 {sha256_bytes(data)[:12]}… != "
                        f"{entry['sha256'][:12]}…): it is truncated, corrupt or from another run; {fix}")
    return data


def iter_checked_samples(entries: list[dict[str, Any]],
                         fix: str = "re-run `sipl synthesize` or `dvc pull`") -> Iterator[Sample]:
    """Like ``iter_samples`` over manifest entries (``shard_entries``), failing with SiplError when a shard's
    sha256 or its number of samples differs from the manifest, so a reader never scores fewer images than listed."""
    for entry in entries:
        url = entry["url"]
        count = 0
        for sample in _samples_of(url, _tar_members(url, _checked_bytes(entry, fix))):
            count += 1
            yield sample
        if "samples" in entry and count != entry["samples"]:
            raise SiplError(f"shard {url} holds {count} sample(s) but the manifest lists {entry['samples']}; {fix}")


def iter_samples(urls: Iterable[str]) -> Iterator[Sample]:
    """Decode every sample of the given shards, in order (no shuffling; for evaluation and inspection)."""
    for url in urls:
        yield from _samples_of(url, iter_tar_members(url))


def _samples_of(url: str, members: Iterable[tuple[str, bytes]]) -> Iterator[Sample]:
    """Group consecutive tar members sharing a key into samples."""
    group: dict[str, Any] = {}
    for name, data in members:
        key, _, member = name.partition(".")
        if group and group["__key__"] != key:
            yield decode_sample(group)
            group = {}
        group.setdefault("__key__", key)
        group["__url__"] = url
        group[member] = data
    if group:
        yield decode_sample(group)
