"""Helpers for the end-to-end pipeline tests: a throw-away copy of the project with a shrunken tiny profile.

``pipeline_repo`` (session-scoped, shared by every module that imports it) copies the working tree's files into a
temporary directory, shrinks params.yaml so the whole ``dvc repro`` takes a minute or two on 2 cores, commits it with
a local git identity and runs ``dvc repro`` once. Tests that change the repository work on ``copy_repo`` copies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

# Two tasks (as params.yaml defines them), a handful of small crops, 20 optimiser steps on one Ray worker,
# one refinement step.
KEEP_TASKS = ("denoise_25", "dehaze")
SHRINK: dict[str, Any] = {
    "crops": {
        "train": {"size": 48, "per_image": 2, "multiple": 16, "max_side": None},
        "val": {"size": 48, "per_image": 1, "multiple": 16, "max_side": None},
        "test": {"size": None, "per_image": 1, "multiple": 16, "max_side": 64},
    },
    "shards": {"root": "data/shards", "maxcount": 4, "encoding": "npy"},
    "profiles.tiny.train": {
        "steps": 20, "global_batch": 4, "patch": 32, "warmup_steps": 2, "val_every": 20, "val_max_samples": 4,
        "log_every": 5, "checkpoint_every": 20, "loader_workers": 0, "shuffle_buffer": 8,
        "init_weights": None,  # two tasks: the shipped model's head has 12 classes (tests/test_shipped_model.py)
    },
    "ray": {"num_workers": 1, "cpus_per_worker": 1},
    "refine": {"max_steps": 1, "schemes": ["anchored"], "scheme": "anchored"},
    "eval": {"max_images_per_task": 1, "classical": False, "sample_grid_images": 1},
}

GIT_IDENTITY = {"user.name": "sipl-test", "user.email": "sipl-test@localhost"}


def project_files() -> list[str]:
    """Files of the working tree that git tracks or would track (committed or not; ignored ones excluded)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                         capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (REPO_ROOT / f).is_file()]


def copy_project(dest: Path) -> Path:
    """Copy the project's files (not .venv, data or outputs) into ``dest``."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    return dest


def shrink_params(path: Path, changes: dict[str, Any] = SHRINK) -> None:
    """Keep only KEEP_TASKS, then overwrite blocks of ``path``: each key of ``changes`` is a dotted path whose
    mapping updates what is there key by key (any other value replaces it)."""
    data = yaml.safe_load(path.read_text())
    data["tasks"] = {name: data["tasks"][name] for name in KEEP_TASKS}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def cli_env(workdir: Path, **extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses: this venv first on PATH, analytics off, per-test DVC site cache."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({
        "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(workdir / ".dvc-site-cache"),
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
        "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
    })
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, output (stdout + stderr) in ``.stdout``; on failure raise with the output attached."""
    result = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` exited {result.returncode}:\n{result.stdout[-6000:]}")
    return result


def git_commit_all(repo: Path, message: str) -> None:
    env = cli_env(repo.parent)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", message], repo, env)


def make_project(dest: Path) -> Path:
    """A shrunken, committed copy of the project in ``dest`` (a git + DVC repository, nothing run yet)."""
    dest.mkdir(parents=True, exist_ok=True)
    copy_project(dest)
    shrink_params(dest / "params.yaml")
    env = cli_env(dest.parent)
    run(["git", "init", "-q"], dest, env)
    for key, value in GIT_IDENTITY.items():
        run(["git", "config", key, value], dest, env)
    git_commit_all(dest, "project copy with a shrunken tiny profile")
    return dest


def copy_repo(src: Path, dest: Path) -> Path:
    """A full copy of a reproduced repository (git history, DVC cache, outputs) to change freely."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(".ray"))
    return dest


_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory) -> dict[str, Any]:
    """The shrunken project after one full ``dvc repro``, committed (dvc.lock, metrics) as the baseline.

    Returns ``{"repo": Path, "repro_s": wall seconds, "log": dvc repro output}``; built once per session."""
    if "pipeline" not in _SHARED:
        base = tmp_path_factory.mktemp("pipeline")
        repo = make_project(base / "repo")
        env = cli_env(base)
        tic = time.perf_counter()
        result = run(["dvc", "repro"], repo, env, timeout=900)
        _SHARED["pipeline"] = {"repo": repo, "repro_s": time.perf_counter() - tic, "log": result.stdout,
                               "env": env}
        git_commit_all(repo, "reproduced")
    return _SHARED["pipeline"]
