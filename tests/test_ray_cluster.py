"""`sipl train` on an existing two-node Ray cluster (both nodes on 127.0.0.1) with its shards on S3 (moto)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import boto3
import pytest
import yaml

from sipl.data.shards import data_root, train_entries
from tests.pipeline_fixtures import cli_env, make_project, run
from tests.services import create_bucket, free_port, stop_process_group, venv_tool

BUCKET = "sipl-shards"


@contextlib.contextmanager
def ray_node(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`ray start ... --block` in its own process group (so stopping it stops exactly this node's processes)."""
    head_only = ["--include-dashboard=false"] if "--head" in argv else []
    process = subprocess.Popen([venv_tool("ray"), "start", "--block", "--disable-usage-stats", *head_only, *argv],
                               env=env, stdout=open(log, "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        stop_process_group(process, timeout_s=20)


def _wait_started(process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Wait until `ray start` reports the node up (Ray Train then waits for the CPUs of both nodes itself)."""
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)


def _manifest(env: dict[str, str], shards_root: str) -> dict:
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    key = shards_root.split("/", 3)[3] + "/manifest.json"
    return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


@pytest.mark.slow
def test_two_node_cluster_trains_from_s3_shards_each_worker_reading_its_part(s3_endpoint, tmp_path):
    repo = make_project(tmp_path / "repo")
    shards_root = f"s3://{BUCKET}/shards"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shards"]["root"] = shards_root
    params["ray"].update(num_workers=2, cpus_per_worker=1, storage_path=str(tmp_path / "ray-results"))
    params["profiles"]["tiny"]["train"].update(steps=6, global_batch=4, log_every=3, val_every=6, checkpoint_every=6)
    (repo / "cluster.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = cli_env(tmp_path)  # carries the S3 endpoint and credentials: every node reads shards with them
    create_bucket(s3_endpoint, BUCKET)
    run(["sipl", "synthesize", "--params", "cluster.yaml", "--no-progress"], repo, env)
    manifest = _manifest(s3_endpoint, shards_root)
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp_head = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    temp_worker = tempfile.mkdtemp(prefix="rw", dir="/tmp")
    head_log, worker_log = tmp_path / "head.log", tmp_path / "worker.log"
    head_args = ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                 "--temp-dir", temp_head]
    with contextlib.ExitStack() as cleanup, ray_node(head_args, env, head_log) as head:
        for directory in (temp_head, temp_worker):  # Ray's short temp dirs (socket paths must stay short)
            cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
        _wait_started(head, head_log)
        with ray_node(["--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                       "--temp-dir", temp_worker], env, worker_log) as worker:
            _wait_started(worker, worker_log)
            tic = time.perf_counter()
            result = run(["sipl", "train", "--params", "cluster.yaml"], repo, dict(env, RAY_ADDRESS=address),
                         timeout=600)
            train_s = time.perf_counter() - tic

    output = result.stdout
    assert (repo / "models" / "model.safetensors").is_file()
    nodes = dict(re.findall(r"\[sipl train\] rank (\d+)/2 on node ([0-9a-f]+)", output))
    assert set(nodes) == {"0", "1"}, output[-4000:]
    assert nodes["0"] != nodes["1"], "both workers landed on the same node"

    reads: dict[tuple[str, str], set[str]] = {}
    for rank, task, urls in re.findall(r"\[sipl data\] rank (\d+) slot \d+/2 task (\S+) reads \d+ shard\(s\) "
                                       r"\(every 1\. sample\): (.+)", output):
        reads.setdefault((task, rank), set()).update(urls.split())
    entries = train_entries(manifest, params["tasks"])
    for task in params["tasks"]:
        # the shards of the set's generation, which the manifest names (sipl.data.publish)
        every = {f"{data_root(shards_root, manifest)}/train/{s['name']}" for s in entries[task]["shards"]}
        assert len(every) >= 2, f"{task}: need at least one shard per worker"
        mine0, mine1 = reads.get((task, "0"), set()), reads.get((task, "1"), set())
        assert mine0 and mine1, output[-4000:]
        assert not mine0 & mine1 and mine0 | mine1 == every
    print(f"\n[timing] sipl train on the 2-node cluster (6 steps, shards on S3): {train_s:.1f}s")
