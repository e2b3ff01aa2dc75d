"""The Prefect flow `sipl`: its pieces (fast) and a real server + `sipl serve` + `prefect deployment run` (slow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines import dvc_runner
from pipelines.flows import metrics_table
from sipl.config import ConfigError, load_params
from sipl.errors import SiplError
from tests.conftest import REPO_ROOT
from tests.pipeline_fixtures import cli_env, copy_repo, pipeline_repo, run  # noqa: F401  (fixture)
from tests.services import create_bucket, free_port, stop_process_group, venv_tool, wait_http

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
BUCKET = "sipl-prefect"
SECRET = "prefect-test-secret-value-7"


# ---------------------------------------------------------------------------------------------- pieces (fast)

def test_flow_parameters_map_to_dvc_set_param_overrides():
    assert dvc_runner.overrides_for(3, "small", ["profiles.small.train.steps=5"]) == [
        "refine_steps=3", "profile=small", "profiles.small.train.steps=5"]
    assert dvc_runner.overrides_for() == []
    with pytest.raises(SiplError, match="KEY=VALUE"):
        dvc_runner.overrides_for(overrides=["refine_steps"])


def test_flow_parameters_validate_like_the_cli_sends_them():
    from prefect.exceptions import ParameterTypeError

    from pipelines.flows import sipl_flow

    assert sipl_flow.validate_parameters({"refine_steps": 3})["refine_steps"] == 3
    assert sipl_flow.validate_parameters({"refine_steps": "auto", "profile": "small"})["profile"] == "small"
    with pytest.raises(ParameterTypeError):
        sipl_flow.validate_parameters({"refine_steps": "many"})


def test_overrides_edit_params_like_exp_run_and_bad_ones_leave_the_file_intact(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    original = (tmp_path / "params.yaml").read_text()
    dvc_runner.apply_params_overrides(tmp_path, ["refine_steps=2", "profiles.tiny.train.steps=7"])
    params = load_params(tmp_path / "params.yaml")
    assert params.refine_steps == 2 and params.train.steps == 7
    assert "# The single source of truth" in (tmp_path / "params.yaml").read_text()  # comments kept

    (tmp_path / "params.yaml").write_text(original)
    with pytest.raises(ConfigError, match="refine_steps"):
        dvc_runner.apply_params_overrides(tmp_path, ["refine_steps=99"])  # > refine.max_steps
    assert (tmp_path / "params.yaml").read_text() == original
    with pytest.raises(SiplError, match="cannot apply overrides"):
        dvc_runner.apply_params_overrides(tmp_path, ["no_such_key=1"])
    assert (tmp_path / "params.yaml").read_text() == original


def test_streamed_lines_are_redacted_and_errors_summarised(tmp_path):
    env = dvc_runner.tool_env({"PATH": "/usr/bin:/bin", "AWS_SECRET_ACCESS_KEY": "very-secret-key-123"})
    script = ("import os,sys\nprint('step 1')\nprint('key', os.environ['AWS_SECRET_ACCESS_KEY'])\n"
              "print('url s3://user:pa55@host/b')\nprint('sipl train: error: shard missing', file=sys.stderr)\n"
              "sys.exit(2)\n")
    seen: list[str] = []
    code, tail = dvc_runner.stream_command([sys.executable, "-c", script], tmp_path, seen.append, env=env)
    assert code == 2
    assert seen == ["step 1", "key ***", "url s3://***@host/b", "sipl train: error: shard missing"]
    assert dvc_runner.error_summary(tail) == "sipl train: error: shard missing"


def test_metrics_table_rows_per_task_then_groups():
    metrics = {"tasks": {"dehaze": {"psnr": 20.123456, "ssim": 0.8, "input_psnr": 15.0, "note": "x"}},
               "groups": {"all": {"psnr": 20.1, "ssim": 0.8}}}
    assert metrics_table(metrics) == [
        {"task": "dehaze", "psnr": 20.1235, "ssim": 0.8, "input_psnr": 15.0},
        {"task": "[all]", "psnr": 20.1, "ssim": 0.8},
    ]


@pytest.mark.parametrize("api_url, expected", [
    (None, "PREFECT_API_URL is not set"),
    ("http://127.0.0.1:{port}/api", "unreachable"),
])
def test_serve_without_a_server_says_what_to_start(api_url, expected, tmp_path):
    env = cli_env(tmp_path, PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url.format(port=free_port())
    result = run(["sipl", "serve"], REPO_ROOT, env, timeout=120, check=False)
    assert result.returncode == 2
    assert expected in result.stdout and "prefect server start" in result.stdout
    assert "Traceback" not in result.stdout


def test_serve_outside_a_repository_says_so(tmp_path):
    env = cli_env(tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    result = run([sys.executable, "-m", "pipelines.serve"], tmp_path, env, timeout=120, check=False)
    assert result.returncode == 2
    assert "not inside a git repository" in result.stdout and "Traceback" not in result.stdout


# ------------------------------------------------------------------------------------- real server (slow)

def _api(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _trigger(repo: Path, env: dict, *params: str) -> str:
    argv = [venv_tool("prefect"), "deployment", "run", "sipl/full-pipeline"]
    for param in params:
        argv += ["--param", param]
    out = run(argv, repo, env, timeout=120).stdout
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, out
    return match.group(1)


def _log_entries(api: str, run_id: str) -> list[dict]:
    """Every log entry the server holds for a flow run, oldest first (the API pages by 200)."""
    entries: list[dict] = []
    while True:
        page = _api(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC",
                                          "limit": 200, "offset": len(entries)})
        entries += page
        if len(page) < 200:
            return entries


def _flow_run_logs(api: str, run_id: str, timeout_s: float = 60.0) -> str:
    """All log messages of a flow run, oldest first.

    The run's process posts its logs in batches and may still be sending them after the server marks the run
    terminal, so this waits for the flow's own closing line ("Finished in state ...", no task run) first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        entries = _log_entries(api, run_id)
        closed = any(e["task_run_id"] is None and e["message"].startswith("Finished in state") for e in entries)
        if closed or time.monotonic() > deadline:
            return "\n".join(entry["message"] for entry in entries)
        time.sleep(1)


def _wait_terminal(api: str, run_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        flow_run = _api(api, f"/flow_runs/{run_id}")
        if flow_run["state_type"] in TERMINAL:
            return flow_run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished after {timeout_s}s: {flow_run['state_type']}")


@pytest.fixture
def prefect_services(pipeline_repo, s3_endpoint, tmp_path):
    """A reproduced project copy with a DVC remote on S3 (moto), a real Prefect server on 127.0.0.1 and
    `sipl serve` in the copy."""
    repo = copy_repo(pipeline_repo["repo"], tmp_path / "repo")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = cli_env(tmp_path, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api,
                  PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_SERVER_UI_ENABLED="false",
                  AWS_SECRET_ACCESS_KEY=SECRET)
    create_bucket(s3_endpoint, BUCKET)
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/store"], repo, env)
    logs = tmp_path / "prefect-logs"
    logs.mkdir()
    tic = time.perf_counter()
    server = subprocess.Popen([venv_tool("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=tmp_path, stdout=open(logs / "server.log", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    serve = None
    try:
        wait_http(f"{api}/health", 90, server)
        server_s = time.perf_counter() - tic
        serve = subprocess.Popen(["sipl", "serve"], env=env, cwd=repo, stdout=open(logs / "serve.log", "wb"),
                                 stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            assert serve.poll() is None, (logs / "serve.log").read_text()
            try:
                _api(api, "/deployments/name/sipl/full-pipeline")
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, (logs / "serve.log").read_text()
                time.sleep(0.5)
        yield {"repo": repo, "env": env, "api": api, "logs": logs, "server_s": server_s}
    finally:
        # serve first: with the server gone its graceful shutdown would hang
        if serve is not None:
            stop_process_group(serve)
        stop_process_group(server)


@pytest.mark.slow
def test_deployment_run_records_experiment_pushes_publishes_and_fails_clearly(prefect_services):
    repo, env, api = prefect_services["repo"], prefect_services["env"], prefect_services["api"]
    tic = time.perf_counter()
    run_id = _trigger(repo, env, "refine_steps=0")
    flow_run = _wait_terminal(api, run_id, 300)
    run_s = time.perf_counter() - tic
    assert flow_run["state_type"] == "COMPLETED", (prefect_services["logs"] / "serve.log").read_text()[-4000:]

    text = _flow_run_logs(api, run_id)
    assert "Running stage 'select'" in text and "Stage 'train' didn't change, skipping" in text
    assert "Running stage 'train'" not in text  # nothing recomputed that DVC had up to date
    assert "$ dvc push --remote storage" in text, text[-3000:]
    assert SECRET not in text
    assert "in sync" in run(["dvc", "status", "--cloud"], repo, env).stdout  # the run pushed everything

    artifacts = _api(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    by_key = {a["key"]: a for a in artifacts}
    table = json.loads(by_key["sipl-test-metrics"]["data"])
    assert {row["task"] for row in table} >= {"denoise_25", "dehaze"}
    assert all(isinstance(row["psnr"], float) for row in table)
    assert "reports/index.html" in by_key["sipl-report"]["data"]
    assert SECRET not in json.dumps(artifacts)

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    revs = {rev.get("name"): rev for commit in shown for exp in commit.get("experiments") or []
            for rev in exp.get("revs") or []}
    assert flow_run["name"] in revs, list(revs)
    assert revs[flow_run["name"]]["data"]["params"]["params.yaml"]["data"]["refine_steps"] == 0
    print(f"\n[timing] Prefect server ready {prefect_services['server_s']:.1f}s; trigger -> Completed "
          f"(select + report + exp save) {run_s:.1f}s")

    # A stage that fails: its own error line ends up in the flow run's state message.
    failing = _trigger(repo, env, 'overrides=["prefect.retries=0", "sources=[{kind:folder,path:/nonexistent/clean}]"]')
    failed = _wait_terminal(api, failing, 180)
    assert failed["state_type"] == "FAILED"
    message = failed["state"]["message"]
    assert "sipl synthesize: error" in message and "/nonexistent/clean" in message, message
    assert "Traceback" not in message
