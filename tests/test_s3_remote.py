"""DVC remote on S3 (moto_server on 127.0.0.1): push / pull round trip and `sipl doctor`'s remote diagnostics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.pipeline_fixtures import (cli_env, copy_repo, git_commit_all, make_project, pipeline_repo,  # noqa: F401
                                     run)
from tests.services import create_bucket, free_port

BUCKET = "sipl-dvc"
SECRET = "sEcReT-value-for-the-test-42"


def _dvc_tracked_files(repo: Path) -> dict[str, str]:
    """sha256 of every file under the DVC-cached outputs (shards, model, selection, report, sample grids)."""
    files = {}
    for top in ["data/shards", "models", "reports", "plots/samples"]:
        for path in sorted((repo / top).rglob("*")):
            if path.is_file() and path.name != ".gitignore":
                files[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@pytest.mark.slow
def test_push_then_pull_in_a_fresh_clone_restores_identical_artifacts(pipeline_repo, s3_endpoint, tmp_path):
    source = copy_repo(pipeline_repo["repo"], tmp_path / "source")
    env = cli_env(tmp_path, AWS_SECRET_ACCESS_KEY=SECRET)
    create_bucket(s3_endpoint, BUCKET)
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/store"], source, env)
    git_commit_all(source, "S3 remote")
    assert SECRET not in (source / ".dvc" / "config").read_text()
    pushed = run(["dvc", "push"], source, env)
    assert SECRET not in pushed.stdout
    expected = _dvc_tracked_files(source)
    assert any(p.startswith("data/shards/") for p in expected) and "models/model.safetensors" in expected

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(source), str(clone)], tmp_path, env)
    assert not (clone / "models" / "model.safetensors").exists()
    run(["dvc", "pull"], clone, env)
    assert _dvc_tracked_files(clone) == expected
    assert "up to date" in run(["dvc", "status"], clone, env).stdout
    assert "in sync" in run(["dvc", "status", "--cloud"], clone, env).stdout
    doctor = run(["sipl", "doctor"], clone, env, timeout=120, check=False)
    assert "reachable with the configured credentials" in doctor.stdout and SECRET not in doctor.stdout


@pytest.mark.slow
def test_doctor_explains_remote_problems_without_printing_credentials(s3_endpoint, tmp_path):
    repo = make_project(tmp_path / "repo")
    env = cli_env(tmp_path, AWS_SECRET_ACCESS_KEY=SECRET, AWS_MAX_ATTEMPTS="1")
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/store"], repo, env)

    def doctor(environment: dict[str, str]) -> str:
        result = run(["sipl", "doctor", "--timeout", "60"], repo, environment, timeout=120, check=False)
        assert "Traceback" not in result.stdout and SECRET not in result.stdout
        return result.stdout

    missing_bucket = doctor(env)
    assert "FAIL  DVC remote" in missing_bucket and "create the bucket" in missing_bucket

    create_bucket(s3_endpoint, BUCKET)
    assert "reachable with the configured credentials" in doctor(env)

    no_credentials = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    no_credentials.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
                          AWS_EC2_METADATA_DISABLED="true")
    out = doctor(no_credentials)
    assert "NoCredentialsError" in out and "AWS_ACCESS_KEY_ID" in out

    unreachable = dict(env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    out = doctor(unreachable)
    assert "FAIL  DVC remote" in out and "AWS_ENDPOINT_URL" in out
