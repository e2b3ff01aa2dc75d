import os
from pathlib import Path

import pytest

# Quiet, loopback-only tool settings for every test process and its children.
for _key, _value in {
    "DVC_NO_ANALYTICS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}.items():
    os.environ.setdefault(_key, _value)

# `sipl synthesize` forks its worker pool from the process that calls it; in the test process, OpenCV has by then run
# in other tests, and a thread pool started before a fork can leave a child waiting forever on a lock that one of
# the parent's threads held (seen as a hang of tests/test_synthesize.py in a full run). One OpenCV thread here.
import cv2  # noqa: E402

cv2.setNumThreads(1)

# Exported ONNX graphs (sipl.models.onnx_engine) go to a cache of this test session, shared with its child processes.
if "SIPL_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["SIPL_CACHE_DIR"] = tempfile.mkdtemp(prefix="sipl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SIPL_CACHE_DIR"], True)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3_endpoint(tmp_path, monkeypatch):
    """A real S3 endpoint (moto_server on 127.0.0.1) with the environment pointing at it."""
    from tests.services import moto_s3

    with moto_s3(tmp_path / "logs") as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield env
