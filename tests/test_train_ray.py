"""Ray Train integration (slow): 2 workers × 1 CPU, one Ray instance for the module.

Covers a full fit with a worker killed mid-run (the run resumes from the last checkpoint and finishes, loss goes
down, replicas stay in sync, models/ + metrics + plots are exported) and a run interrupted after a checkpoint then
restarted with the same params (continues from the saved step)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
import json

import numpy as np
import pytest

from sipl.config import parse_params
from tests.test_data import make_shards, tiny_params

pytestmark = pytest.mark.slow
SMALL = {"width": 8, "middle_blocks": 1}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One local Ray instance for the module, started with an S3 endpoint (moto) in its environment so that
    every Ray process (controller, workers) can reach s3:// storage."""
    import ray

    from tests.services import create_bucket, moto_s3

    with moto_s3(tmp_path_factory.mktemp("moto")) as env:
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        create_bucket(env, "runs")
        temp_dir = tempfile.mkdtemp(prefix="sipl-ray-", dir="/tmp")  # short: Ray's Unix socket paths must fit
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=True)
        try:
            yield env
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _params(shard_root, **train):
    raw = tiny_params(shard_root, **train).model_dump(mode="json")
    raw["profiles"]["tiny"]["model"]["overrides"] = SMALL
    raw["ray"].update({"num_workers": 2, "cpus_per_worker": 1, "max_failures": 2, "run_name": "test"})
    return parse_params(raw, source="test")


def _kill_rank_when(pid_dir, rank, min_step, killed, timeout_s=240):
    path = os.path.join(pid_dir, f"rank{rank}.json")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        if info["step"] >= min_step:
            os.kill(info["pid"], signal.SIGKILL)
            killed.append(info)
            return
        time.sleep(0.02)


def test_fit_survives_worker_kill(ray_local, tmp_path):
    from sipl.training.launcher import fit

    shard_root = make_shards(tmp_path / "shards")
    params = _params(shard_root, steps=24, checkpoint_every=4, val_every=12, log_every=4)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    killed: list[dict] = []
    watcher = threading.Thread(target=_kill_rank_when, args=(str(pid_dir), 1, 6, killed), daemon=True)
    watcher.start()
    summary = fit(params, project_dir=tmp_path, pid_dir=str(pid_dir))
    watcher.join(timeout=1)
    assert killed, "the watcher never saw rank 1 reach step 6"
    assert summary["steps"] == 24
    assert summary["resumed_from"] and 4 <= summary["resumed_from"][0] <= killed[0]["step"]
    assert summary["replicas_in_sync"] is True
    assert (tmp_path / "models" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "metrics" / "train.json").read_text())["steps"] == 24
    rows = (tmp_path / "plots" / "train.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("loss")]) for r in rows[1:]]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


def test_restart_resumes_from_saved_step_on_s3(ray_local, tmp_path):
    """Interrupted after the step-4 checkpoint, restarted with the same params: continues at step 4. The run's
    checkpoints live on S3 (ray.storage_path: s3://...)."""
    import s3fs

    from sipl.training.launcher import fit

    shard_root = make_shards(tmp_path / "shards")
    params = _params(shard_root, steps=8, checkpoint_every=4, val_every=8)
    raw = params.model_dump(mode="json")
    raw["ray"]["storage_path"] = "s3://runs/sipl"
    params = parse_params(raw, source="test")
    assert fit(params, project_dir=tmp_path, stop_at_step=4) == {"stopped_at": 4}
    assert not (tmp_path / "models").exists()
    summary = fit(params, project_dir=tmp_path)
    assert summary["steps"] == 8 and summary["resumed_from"] == [4]
    assert (tmp_path / "models" / "model.safetensors").is_file()
    stored = s3fs.S3FileSystem(skip_instance_cache=True).find("runs/sipl")
    assert any(path.endswith("state.safetensors") for path in stored)


def test_corrupt_sample_fails_with_clear_error(ray_local, tmp_path):
    """A sample that passes the up-front checks but cannot be decoded stops the run (corrupt_samples: fail) with
    an error naming the task and the sample."""
    import hashlib
    import io
    import tarfile

    from sipl.errors import SiplError
    from sipl.training.launcher import fit

    shard_root = make_shards(tmp_path / "shards")
    manifest_path = shard_root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["splits"]["train"]["denoise"]["shards"]:
        path = shard_root / "train" / entry["name"]
        buffer = io.BytesIO()
        with tarfile.open(path) as source, tarfile.open(fileobj=buffer, mode="w") as target:
            for info in source:
                data = b"garbage" if info.name.endswith(".gt.npy") else source.extractfile(info).read()
                info.size = len(data)
                target.addfile(info, io.BytesIO(data))
        path.write_bytes(buffer.getvalue())
        entry["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    params = _params(shard_root, steps=4, corrupt_samples="fail", task_weights={"denoise": 1.0, "lowlight": 0.0})
    raw = params.model_dump(mode="json")
    raw["ray"]["max_failures"] = 0
    with pytest.raises(SiplError, match=r"task 'denoise': corrupt shard data .*denoise__train"):
        fit(parse_params(raw, source="test"), project_dir=tmp_path)
