"""``sipl doctor``: check the repository, DVC, params and the services the pipeline talks to; say what to fix.

Each check prints ``ok``, ``warn`` (only some commands need it) or ``FAIL`` (``dvc repro`` cannot work) with the
command or setting that fixes it. Exit code 1 when something FAILs. ``--init-repo`` first makes the current
directory a git + DVC repository if it is not one yet (idempotent; used by ``make pipeline``).
Credentials are never printed: only whether they are set and whether the service accepts them.
"""

from __future__ import annotations

from sipl import env as _env  # noqa: F401

import argparse
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from pipelines import dvc_runner


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "FAIL"
    message: str


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init-repo", action="store_true",
                        help="git init / dvc init here when missing (idempotent), then check")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for each service (default 20)")


# ------------------------------------------------------------------------------------------------ checks

def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)


def init_repo(cwd: Path) -> list[str]:
    """Make ``cwd`` a git repository with a DVC project if it is not one; returns what was done."""
    done = []
    if _git(cwd, "rev-parse", "--show-toplevel").returncode != 0:
        _git(cwd, "init", "-q")
        done.append("git init")
    root = Path(_git(cwd, "rev-parse", "--show-toplevel").stdout.strip())
    env = dvc_runner.tool_env()
    if not (root / ".dvc").is_dir():
        subprocess.run(dvc_runner.dvc_cmd("init", "-q"), cwd=root, env=env, check=True, timeout=120)
        done.append("dvc init")
    subprocess.run(dvc_runner.dvc_cmd("config", "core.analytics", "false"), cwd=root, env=env, check=True,
                   timeout=120)
    return done


def check_repo(cwd: Path) -> tuple[list[Check], Path | None]:
    try:
        root = dvc_runner.find_repo_root(cwd)
    except Exception as error:  # SiplError with the fix in its message
        return [Check("repository", "FAIL", str(error))], None
    checks = [Check("repository", "ok", f"git + DVC project at {root}")]
    name = _git(root, "config", "user.name").stdout.strip()
    email = _git(root, "config", "user.email").stdout.strip()
    if name and email:
        checks.append(Check("git identity", "ok", "set (needed by `dvc exp run` and the Prefect flow)"))
    else:
        checks.append(Check("git identity", "warn", "user.name / user.email not set: `dvc exp run` and the Prefect "
                            "flow need them; run `git config user.name NAME && git config user.email EMAIL`"))
    if _git(root, "rev-parse", "--verify", "-q", "HEAD").returncode != 0:
        checks.append(Check("git commit", "warn", "the repository has no commit yet: `dvc exp run` needs one "
                            "(`git add -A && git commit -m init`)"))
    return checks, root


def params_path(root: Path, given: str | None) -> Path:
    """The params file to check: ``--params`` as given (relative to the working directory); by default the
    project's ``params.yaml`` (the one `dvc repro` reads), wherever in the project doctor runs."""
    if given in (None, dvc_runner.PARAMS_FILE) and not Path(dvc_runner.PARAMS_FILE).is_file():
        return root / dvc_runner.PARAMS_FILE
    return Path(given or dvc_runner.PARAMS_FILE)


def check_params(root: Path, path: Path | None = None) -> tuple[list[Check], object | None]:
    from sipl.config import ConfigError, load_params

    path = path or root / dvc_runner.PARAMS_FILE
    name = str(path)
    try:
        params = load_params(path)
    except ConfigError as error:
        return [Check(name, "FAIL", str(error))], None
    checks = [Check(name, "ok", f"valid (profile {params.profile}, {len(params.tasks)} tasks)")]
    if path.resolve() != (root / dvc_runner.PARAMS_FILE).resolve():
        checks.append(Check(name, "warn", f"`dvc repro` reads {root / dvc_runner.PARAMS_FILE}, not this file; run "
                            f"the stage commands with --params {name}, or copy it there"))
    if params.shards.root.startswith("s3://"):
        checks.append(Check("shards.root", "warn", f"{params.shards.root} is on S3: the DVC pipeline versions "
                            "shards at data/shards; run `sipl synthesize` and `sipl train` directly for S3 shards "
                            "(docs/orchestration.md) or set shards.root: data/shards for `dvc repro`"))
    return checks, params


def check_stage_deps(root: Path) -> list[Check]:
    """Every stage dependency that no stage produces must exist (else `dvc repro` fails on it)."""
    data = yaml.safe_load((root / dvc_runner.DVC_FILE).read_text()) or {}
    stages = data.get("stages") or {}
    produced = set()
    for stage in stages.values():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section) or []:
                produced.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    missing = sorted({f"{name}: {dep}" for name, stage in stages.items() for dep in stage.get("deps") or []
                      if dep not in produced and not (root / dep).exists()})
    if missing:
        return [Check("dvc.yaml deps", "FAIL", "missing files the stages depend on: " + "; ".join(missing))]
    return [Check("dvc.yaml deps", "ok", f"{len(stages)} stages, all code dependencies present")]


_REMOTE_PROBE = r"""
import json, sys
from dvc.repo import Repo
name = sys.argv[1]
try:
    repo = Repo(".")
    odb = repo.cloud.get_remote_odb(name)
    protocols = odb.fs.protocol if isinstance(odb.fs.protocol, (tuple, list)) else (odb.fs.protocol,)
    if set(protocols) & {"s3", "gs", "gcs", "azure"}:
        # list the bucket, not the prefix: a fresh remote has no prefix yet, a missing bucket must fail
        odb.fs.ls(odb.path.split("/")[0])
    else:
        odb.fs.exists(odb.path)
    print(json.dumps({"ok": True}))
except Exception as error:
    print(json.dumps({"ok": False, "type": type(error).__name__, "message": str(error)}))
"""


def check_remote(root: Path, timeout_s: float) -> list[Check]:
    # A diagnosis wants a quick answer: 2 attempts, unless the user set their own.
    env = dvc_runner.tool_env({**os.environ, "AWS_MAX_ATTEMPTS": os.environ.get("AWS_MAX_ATTEMPTS", "2")})
    name = dvc_runner.default_remote(root, env)
    if not name:
        return [Check("DVC remote", "warn", "none configured: artifacts stay in this clone. To share them: "
                      "`dvc remote add -d storage s3://BUCKET/PREFIX` (docs/orchestration.md)")]
    try:
        out = subprocess.run([sys.executable, "-c", _REMOTE_PROBE, name], cwd=root, env=env, capture_output=True,
                             text=True, timeout=timeout_s)
        result = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else \
            {"ok": False, "type": "probe", "message": out.stderr.strip()[-300:]}
    except subprocess.TimeoutExpired:
        return [Check("DVC remote", "FAIL", f"remote '{name}' did not answer within {timeout_s:.0f}s: check its url / "
                      "endpointurl (`dvc remote list`) and AWS_ENDPOINT_URL, and that the storage service runs")]
    if result["ok"]:
        return [Check("DVC remote", "ok", f"remote '{name}' reachable with the configured credentials")]
    message = dvc_runner.redact(result["message"], dvc_runner.secret_values())
    kind = result["type"]
    if "credential" in message.lower() or kind in ("NoCredentialsError", "PartialCredentialsError"):
        fix = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or `dvc remote modify --local "
               f"{name} access_key_id ...` and `secret_access_key ...`)")
    elif "NoSuchBucket" in message or "does not exist" in message:
        fix = "create the bucket, or fix the url with `dvc remote modify " + name + " url s3://BUCKET/PREFIX`"
    elif "InvalidAccessKeyId" in message or "SignatureDoesNotMatch" in message or "Forbidden" in message:
        fix = "the credentials are refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    else:
        fix = "check the remote's url / endpointurl (`dvc remote list`), AWS_ENDPOINT_URL and the credentials"
    return [Check("DVC remote", "FAIL", f"remote '{name}': {kind}: {message.splitlines()[0] if message else ''}; {fix}")]


def check_prefect(timeout_s: float) -> list[Check]:
    from pipelines.prefect_server import START_SERVER_HINT, check_prefect_api

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return [Check("Prefect API", "warn", "PREFECT_API_URL not set (only `sipl serve` / `prefect deployment run` "
                      f"need it): {START_SERVER_HINT}")]
    try:
        check_prefect_api(url, timeout_s=min(timeout_s, 5.0))
    except Exception as error:
        return [Check("Prefect API", "FAIL", str(error))]
    return [Check("Prefect API", "ok", f"{url} answers")]


def check_ray(timeout_s: float) -> list[Check]:
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return [Check("Ray", "ok", "RAY_ADDRESS not set: `sipl train` starts a local Ray instance")]
    if address == "auto" or address.startswith("local"):
        return [Check("Ray", "ok", f"RAY_ADDRESS={address}")]
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        return [Check("Ray", "FAIL", f"RAY_ADDRESS={address} is not HOST:PORT (e.g. 10.0.0.1:6379, the address "
                      "`ray start --head` printed)")]
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=min(timeout_s, 5.0)):
            pass
    except OSError as error:
        return [Check("Ray", "FAIL", f"RAY_ADDRESS={address} unreachable ({error}): start the cluster head with "
                      "`ray start --head --port 6379` or unset RAY_ADDRESS to train on a local instance")]
    return [Check("Ray", "ok", f"cluster head {address} answers")]


def check_s3_env(params) -> list[Check]:
    uses_s3 = params is not None and (params.shards.root.startswith("s3://")
                                      or params.ray.storage_path.startswith("s3://")
                                      or any(s.kind == "s3" for s in params.sources))
    if not uses_s3:
        return []
    have = all(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    if have:
        return [Check("S3 credentials", "ok", "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY set")]
    return [Check("S3 credentials", "warn", "params use s3:// paths but AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                  "are not set here (fine when ~/.aws or an instance role provides them); set AWS_ENDPOINT_URL for "
                  "a non-AWS S3 service")]


def run_checks(cwd: Path, timeout_s: float, params_file: str | None = None) -> list[Check]:
    checks, root = check_repo(cwd)
    if root is None:
        if params_file not in (None, dvc_runner.PARAMS_FILE):
            checks += check_params(cwd, Path(params_file))[0]
        return checks + check_prefect(timeout_s) + check_ray(timeout_s)
    params_checks, params = check_params(root, params_path(root, params_file))
    checks += params_checks
    checks += check_stage_deps(root)
    checks += check_remote(root, timeout_s)
    checks += check_s3_env(params)
    checks += check_prefect(timeout_s)
    checks += check_ray(timeout_s)
    return checks


def run(args: argparse.Namespace) -> int:
    cwd = Path.cwd()
    if args.init_repo:
        for action in init_repo(cwd):
            print(f"done: {action}")
    checks = run_checks(cwd, args.timeout, args.params)
    width = max(len(c.name) for c in checks)
    for check in checks:
        print(f"{check.status:>4}  {check.name:<{width}}  {check.message}")
    failed = [c for c in checks if c.status == "FAIL"]
    print(f"\n{len(failed)} problem(s) to fix" if failed else "\nready: `dvc repro` can run")
    return 1 if failed else 0
