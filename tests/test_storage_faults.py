"""Faults during work (issue 29): an S3 endpoint that dies mid-write, a transient drop, a full disk, an output folder
that stops taking files, a damaged ONNX cache.

The S3 tests run a real ``moto_server`` on 127.0.0.1 behind ``tests.faultproxy.FaultProxy``, which drops every
connection after the N-th request (or a few of them) and can be restored. Every command must end with one line
naming the endpoint, the object and what to do (exit 3), never a traceback; the complete set written before must
still read and verify after a failed run over it; the same run must succeed once the proxy passes traffic again.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import boto3
import pytest

from sipl import storage
from sipl.cli import main
from sipl.data.shards import iter_checked_samples, read_manifest, shard_entries
from sipl.storage import StorageError
from tests.faultproxy import FaultProxy
from tests.services import create_bucket, forget_s3_clients, moto_s3
from tests.test_bad_input import _png, _rain_layout, _synth_params, _synthesize

SECRET = "sEcReT-never-printed-29"


@pytest.fixture(scope="module")
def s3_behind_proxy(tmp_path_factory):
    """moto_server, and the environment pointing every S3 client of this process at a fault proxy in front of it
    (3 attempts per request keep a total outage to a few seconds per request)."""
    with moto_s3(tmp_path_factory.mktemp("moto")) as env:
        port = int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
        with FaultProxy(port) as proxy, pytest.MonkeyPatch.context() as patch:
            for key, value in {**env, "AWS_ENDPOINT_URL": proxy.url, "AWS_MAX_ATTEMPTS": "3",
                               "AWS_SECRET_ACCESS_KEY": SECRET}.items():
                patch.setenv(key, value)
            patch.delenv("AWS_RETRY_MODE", raising=False)
            forget_s3_clients()
            yield {"direct": env, "proxy": proxy}
    forget_s3_clients()


@pytest.fixture
def s3(s3_behind_proxy, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # synthesize mirrors an S3 manifest to ./data/shards
    s3_behind_proxy["proxy"].restore()
    yield s3_behind_proxy
    s3_behind_proxy["proxy"].restore()


def _objects(env: dict[str, str], bucket: str) -> dict[str, bytes]:
    """Every object of ``bucket`` with its bytes, read around the proxy."""
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _verified(root: str) -> dict:
    """The manifest at ``root`` after reading every shard it lists through the checked reader (sha256 and sample
    count against the manifest): what train and evaluate do."""
    manifest = read_manifest(root)
    for split, tasks in manifest["splits"].items():
        for task, entry in tasks.items():
            samples = list(iter_checked_samples(shard_entries(root, split, task, manifest)))
            assert len(samples) == entry["samples"] > 0
    return manifest


def _one_error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"sipl {command}: error:")]
    assert len(lines) == 1, err
    assert SECRET not in err
    return lines[0]


def _requests_of(proxy: FaultProxy, run) -> int:
    before = proxy.passed
    run()
    return proxy.passed - before


# ------------------------------------------------------------------------------------------------ synthesize

@pytest.mark.slow
def test_synthesize_over_a_complete_s3_set_survives_a_dying_endpoint(s3, tmp_path, capsys):
    proxy, bucket = s3["proxy"], "faults-synth"
    create_bucket(s3["direct"], bucket)
    root = f"s3://{bucket}/shards"

    def params(name: str, seed_offset: int) -> Path:
        def edit(raw):
            raw["shards"].update(root=root, maxcount=1)  # one shard per sample: many writes to cut between
            raw["crops"]["train"]["per_image"] = 3
            raw["seed"] += seed_offset
        return _synth_params(tmp_path, edit, name=name)

    first = params("first.yaml", 0)
    requests = _requests_of(proxy, lambda: main(_synthesize(first)) == 0 or pytest.fail("first run failed"))
    before, earlier = _verified(root), _objects(s3["direct"], bucket)
    assert before["generation"] and all(key == "shards/manifest.json" or key.startswith(
        f"shards/{before['generation']}/") for key in earlier)
    capsys.readouterr()

    # Another seed: same shard names, new bytes. The endpoint dies half-way through the writes.
    other = params("other.yaml", 1)
    proxy.fail_after(requests // 3)
    assert main(_synthesize(other)) == 3
    line = _one_error_line(capsys.readouterr().err, "synthesize")
    assert f"S3 endpoint {proxy.url}: cannot write {root}/gen-" in line, line
    assert "dropped the connection" in line and "AWS_ENDPOINT_URL" in line and "re-run" in line, line
    assert f"nothing was replaced: {root}/manifest.json still names the earlier complete set" in line, line
    assert proxy.dropped > 0

    proxy.restore()
    assert _verified(root) == before  # the earlier complete set still reads and verifies...
    now = _objects(s3["direct"], bucket)
    assert {key: now[key] for key in earlier} == earlier  # ...byte for byte; the cut run wrote beside it
    assert any(key.startswith("shards/gen-") and not key.startswith(f"shards/{before['generation']}/") for key in now)

    assert main(_synthesize(other)) == 0  # the same run, once the endpoint answers again
    after = _verified(root)
    assert after["seed"] == before["seed"] + 1 and after["generation"] != before["generation"]
    left = _objects(s3["direct"], bucket)
    assert sorted({key.split("/")[1] for key in left}) == sorted([after["generation"], "manifest.json"]), \
        "older generations and the unfinished one are removed once the new set is current"
    assert json.loads(left["shards/manifest.json"]) == after


@pytest.mark.slow
def test_a_transient_drop_within_the_retry_budget_costs_only_a_warning(s3, tmp_path, capsys):
    proxy, bucket = s3["proxy"], "faults-blip"
    create_bucket(s3["direct"], bucket)
    root = f"s3://{bucket}/shards"
    params = _synth_params(tmp_path, lambda raw: raw["shards"].update(root=root))
    dropped = proxy.dropped
    proxy.drop(after=2, count=2)  # the bucket check and one write pass, the next two requests are dropped
    assert main(_synthesize(params)) == 0
    err = capsys.readouterr().err
    assert proxy.dropped - dropped == 2
    warnings = [line for line in err.splitlines() if line.startswith("sipl: warning: S3 endpoint")]
    assert len(warnings) == 1 and f"{proxy.url}: a request to write {root}/gen-" in warnings[0], err
    assert "retrying" in warnings[0] and "error" not in err and "Traceback" not in err, err
    _verified(root)


# ------------------------------------------------------------------------------------------ import-benchmark

@pytest.mark.slow
def test_import_benchmark_to_s3_keeps_the_earlier_import_and_recovers(s3, tmp_path, capsys):
    proxy, bucket = s3["proxy"], "faults-import"
    create_bucket(s3["direct"], bucket)
    out = f"s3://{bucket}/rain"
    three, two = _rain_layout(tmp_path / "rain3", 3), _rain_layout(tmp_path / "rain2", 2)

    def command(folder: Path) -> list[str]:
        return ["import-benchmark", "rain100l", str(folder), "-o", out]

    # A first import into a new prefix that fails leaves nothing a reader would take for an import...
    proxy.fail_after(2)
    assert main(command(three)) == 3
    line = _one_error_line(capsys.readouterr().err, "import-benchmark")
    assert f"S3 endpoint {proxy.url}: cannot" in line and out in line, line
    assert "rain/manifest.json" not in _objects(s3["direct"], bucket)
    proxy.restore()
    # ...and does not block the same import once the endpoint answers (what it left is its own).
    assert main(command(three)) == 0
    requests = _requests_of(proxy, lambda: main(command(three)) == 0 or pytest.fail("re-import failed"))
    first = _verified(out)
    assert first["splits"]["test"]["derain"]["samples"] == 3
    earlier = _objects(s3["direct"], bucket)
    assert all(key == "rain/manifest.json" or key.startswith(f"rain/{first['generation']}/") for key in earlier)

    # A re-import of 2 pairs cut off half-way: the 3-pair import still reads and verifies, byte for byte.
    proxy.fail_after(requests // 2)
    assert main(command(two)) == 3
    line = _one_error_line(capsys.readouterr().err, "import-benchmark")
    assert f"nothing was replaced: {out}/manifest.json still names the earlier complete set" in line, line
    proxy.restore()
    assert _verified(out) == first
    now = _objects(s3["direct"], bucket)
    assert {key: now[key] for key in earlier} == earlier
    assert main(command(two)) == 0
    second = _verified(out)
    assert second["splits"]["test"]["derain"]["samples"] == 2
    assert {key.split("/")[1] for key in _objects(s3["direct"], bucket)} == {second["generation"], "manifest.json"}


@pytest.mark.slow
def test_a_set_written_before_generations_reads_and_is_replaced_whole(s3, tmp_path):
    """An S3 import in the flat layout of earlier versions (``{root}/test/...``, a manifest without generation)
    still reads; the next import writes a generation, switches the manifest and then removes the flat objects."""
    from sipl.data.benchmark_import import import_benchmark
    from sipl.data.shards import write_json

    bucket = "faults-legacy"
    create_bucket(s3["direct"], bucket)
    out = f"s3://{bucket}/rain"
    local = import_benchmark("rain100l", _rain_layout(tmp_path / "rain3", 3), str(tmp_path / "flat"))
    for path in sorted((tmp_path / "flat").rglob("*")):  # the same files, flat on S3, as earlier versions wrote
        if path.is_file():
            storage.write(f"{out}/{path.relative_to(tmp_path / 'flat').as_posix()}", path.read_bytes())
    write_json(f"{out}/manifest.json", local)
    assert "generation" not in local and _verified(out) == local
    assert main(["import-benchmark", "rain100l", str(_rain_layout(tmp_path / "rain2", 2)), "-o", out]) == 0
    current = _verified(out)
    assert current["splits"]["test"]["derain"]["samples"] == 2
    assert sorted(_objects(s3["direct"], bucket)) == sorted(
        ["rain/manifest.json", f"rain/{current['generation']}/skipped.json",
         f"rain/{current['generation']}/test/derain-000000.tar"])


# --------------------------------------------------------------------------------------------------- readers

@pytest.fixture
def s3_set(s3, tmp_path):
    """A complete shard set on S3 and its params file."""
    bucket = "faults-read"
    create_bucket(s3["direct"], bucket)
    def edit(raw):
        raw["shards"].update(root=f"s3://{bucket}/shards")
        raw["eval"] = {**raw.get("eval", {}), "engine": "eager", "classical": False}
    params = _synth_params(tmp_path, edit)
    assert main(_synthesize(params)) == 0
    return {**s3, "params": params, "root": f"s3://{bucket}/shards"}


@pytest.mark.slow
def test_train_and_evaluate_say_one_sentence_when_the_endpoint_drops(s3_set, tmp_path, capsys):
    from tests.test_evaluate import write_tiny_model

    proxy, root, params = s3_set["proxy"], s3_set["root"], str(s3_set["params"])
    manifest = read_manifest(root)
    capsys.readouterr()
    proxy.fail_after(2)  # the bucket check and the manifest pass; the first shard size check is dropped
    assert main(["train", "--params", params, "--check"]) == 3
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"S3 endpoint {proxy.url}: cannot check {root}/{manifest['generation']}/train/" in line, line

    model = write_tiny_model(tmp_path / "models")
    proxy.fail_after(1)  # the manifest passes; the first shard read is dropped
    assert main(["evaluate", "--params", params, "--model", str(model), "--benchmarks", str(tmp_path / "none"),
                 "--out", str(tmp_path / "eval")]) == 3
    line = _one_error_line(capsys.readouterr().err, "evaluate")
    assert f"cannot read {root}/{manifest['generation']}/" in line and ".tar" in line, line
    assert not (tmp_path / "eval" / "metrics" / "eval_steps.json").exists()


@pytest.mark.slow
def test_training_stream_raises_the_storage_error_even_when_corrupt_samples_are_skipped(s3_set):
    from sipl.data.loader import StreamConfig, TrainStream, check_shards

    proxy, root = s3_set["proxy"], s3_set["root"]
    urls = check_shards(root, ["denoise_25"], "train")
    stream = TrainStream(StreamConfig(task_urls=urls, weights={"denoise_25": 1.0}, patch=16, seed=1,
                                      shuffle_buffer=2, corrupt_samples="skip"))
    proxy.fail_after(0)
    with pytest.raises(StorageError) as caught:
        next(iter(stream))
    assert str(caught.value).startswith(f"S3 endpoint {proxy.url}: cannot open {root}/"), caught.value
    proxy.restore()
    assert next(iter(stream))["gt"].shape == (16, 16, 3)


def test_a_storage_failure_inside_ray_becomes_a_storage_error_naming_the_run_storage():
    from types import SimpleNamespace

    from sipl.training.launcher import _failure

    params = SimpleNamespace(ray=SimpleNamespace(storage_path="s3://runs/ray"),
                             shards=SimpleNamespace(root="s3://data/shards"))
    ray_text = ("Training worker failed.\nTraceback (most recent call last):\n  File \"x.py\", line 3, in report\n"
                "botocore.exceptions.EndpointConnectionError: Could not connect to the endpoint URL: "
                "\"http://10.0.0.9:9000/runs/ray/sipl-abc/checkpoint_000002/model.pt\"")
    error = _failure(RuntimeError(ray_text), "sipl-abc", params)
    assert isinstance(error, StorageError)
    assert "s3://runs/ray" in str(error) and "EndpointConnectionError" in str(error) and "resumes" in str(error)
    worker = ("Caught StorageError in DataLoader worker process 0.\n"
              "sipl.storage.StorageError: Caught StorageError in DataLoader worker process 0.\nOriginal Traceback:\n"
              "sipl.storage.StorageError: S3 endpoint http://x: cannot read s3://data/shards/a.tar: dropped")
    error = _failure(RuntimeError(worker), "sipl-abc", params)
    assert isinstance(error, StorageError) and str(error).endswith("cannot read s3://data/shards/a.tar: dropped")
    plain = _failure(RuntimeError("sipl.errors.SiplError: task 'x': corrupt shard data"), "sipl-abc", params)
    assert not isinstance(plain, StorageError) and "corrupt shard data" in str(plain)


def test_storage_errors_are_classified_and_never_show_credentials(monkeypatch):
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://user:pw@10.0.0.9:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    refused = ClientError({"Error": {"Code": "SignatureDoesNotMatch", "Message": f"bad signature {SECRET}"}},
                          "PutObject")
    cases = {
        EndpointConnectionError(endpoint_url="http://10.0.0.9:9000/b/k"): "could not be reached",
        NoCredentialsError(): "no usable S3 credentials",
        refused: "refused the credentials",
        ClientError({"Error": {"Code": "SlowDown", "Message": "slow"}}, "PutObject"): "throttling",
    }
    for error, expected in cases.items():
        message = str(storage.describe(error, "write", "s3://b/k"))
        assert message.startswith("S3 endpoint http://***@10.0.0.9:9000: cannot write s3://b/k: "), message
        assert expected in message and SECRET not in message and "pw" not in message, message
    assert storage.describe(FileNotFoundError("s3://b/k"), "read", "s3://b/k") is None
    assert storage.describe(ValueError("a bug"), "read", "s3://b/k") is None


# ------------------------------------------------------------------------------------- the Prefect flow's push

@pytest.mark.slow
def test_a_failed_dvc_push_is_one_sentence_naming_remote_endpoint_and_object(s3, tmp_path):
    from pipelines import dvc_runner

    proxy, bucket = s3["proxy"], "faults-push"
    create_bucket(s3["direct"], bucket)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dvc_runner.tool_env()
    assert env["AWS_RETRY_MODE"] == "standard" and env["AWS_MAX_ATTEMPTS"] == "3"  # the user's value is kept

    def run(*argv: str) -> None:
        subprocess.run(list(argv), cwd=repo, env=env, check=True, capture_output=True)

    run("git", "init", "-q")
    run(*dvc_runner.dvc_cmd("init", "-q"))
    (repo / "result.txt").write_text("metrics\n")
    run(*dvc_runner.dvc_cmd("add", "-q", "result.txt"))
    run(*dvc_runner.dvc_cmd("remote", "add", "-d", "storage", f"s3://{bucket}/store"))
    proxy.fail_after(0)
    code, tail = dvc_runner.stream_command(dvc_runner.dvc_cmd("push", "--remote", "storage"), repo, lambda _: None,
                                           env=env)
    assert code != 0
    message = dvc_runner.push_failure(repo, "storage", tail, ["remote 'storage': unreachable"])
    assert "\n" not in message and SECRET not in message
    assert message.startswith(f"dvc push to remote 'storage' (s3://{bucket}/store, endpoint {proxy.url}) failed"), \
        message
    assert "could not be reached or dropped the connection" in message and f"{proxy.url}/{bucket}" in message
    assert f"run `dvc push` in {repo}" in message and "sipl doctor: remote 'storage'" in message
    proxy.restore()
    assert dvc_runner.stream_command(dvc_runner.dvc_cmd("push"), repo, lambda _: None, env=env)[0] == 0


# ---------------------------------------------------------------------------------------------- local disks

def _disk_full_for(monkeypatch, names: set[str]) -> list[str]:
    """Make ``sipl.atomic_files`` write the files named ``names`` to /dev/full: the kernel answers ENOSPC, as a
    full disk does, on the real write. Returns the list of files it refused."""
    import builtins

    from sipl import atomic_files

    refused = []

    def fake_open(path, mode="r", *args, **kwargs):
        final = Path(path).name.split(".tmp")[0].lstrip(".").rsplit(".", 1)[0]
        if "w" in mode and final in names:
            refused.append(final)
            return builtins.open("/dev/full", mode, *args, **kwargs)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic_files, "open", fake_open, raising=False)
    return refused


def test_a_full_disk_names_the_folder_and_keeps_the_earlier_local_set(tmp_path, monkeypatch, capsys):
    params = _synth_params(tmp_path)
    out = tmp_path / "shards-out"
    assert main(_synthesize(params)) == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    chosen = sorted(p for p in before if p.suffix == ".tar")[-1]
    shard = chosen.name
    refused = _disk_full_for(monkeypatch, {shard})
    capsys.readouterr()
    assert main(_synthesize(params)) == 1
    line = _one_error_line(capsys.readouterr().err, "synthesize")
    folder = tmp_path / "shards-out.partial" / chosen.parent.name
    assert refused == [shard]
    assert line == (f"sipl synthesize: error: {folder}: no space left on the device (or quota exceeded) while writing "
                    f"{shard}; free space in {folder} or point the output elsewhere, then re-run (files are written "
                    "under temporary names, so nothing half-written was left in place)")
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert not (tmp_path / "shards-out.partial").exists()


def test_restore_stops_at_an_output_it_cannot_write_and_counts_what_was_done(tmp_path, monkeypatch, capsys):
    from tests.test_evaluate import write_tiny_model

    model = write_tiny_model(tmp_path / "models")
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        _png(tmp_path / "in" / f"{name}.png", seed)
    (tmp_path / "in" / "a_broken.png").write_bytes(b"not a png")  # read (and failed) before b.png
    out = tmp_path / "out"
    _disk_full_for(monkeypatch, {"b.png"})
    code = main(["restore", "--params", "absent.yaml", "--model", str(model), "--engine", "eager", "--steps", "0",
                 "--no-progress", str(tmp_path / "in"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no temporary leftovers either
    line = _one_error_line(err, "restore")
    assert line == (f"sipl restore: error: {out / 'b.png'}: cannot write it (No space left on device), so the run "
                    f"stopped there: 1 written, 2 failed (this one included), 1 not attempted "
                    f"({tmp_path / 'in' / 'c.png'}); free space in {out} (or give another -o) and re-run with the "
                    "failed and not attempted inputs")
    assert f"1 written to {out}" in err and "2 failed, 1 not attempted" in err
