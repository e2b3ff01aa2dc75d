"""The Prefect flow ``sipl``: run the DVC pipeline stage by stage, record the run as a DVC experiment.

Each stage is one Prefect task running ``dvc repro <stage>``, so DVC decides what is up to date (nothing is
recomputed that DVC would skip); retries come from ``params.prefect``; the stage's output is streamed line by line
into the task's log. Flow parameters (``refine_steps``, ``profile``, free ``overrides``) are applied to
params.yaml exactly as ``dvc exp run -S`` applies them and the finished workspace is saved with ``dvc exp save``
under the flow run's name, so ``dvc exp show`` lists every Prefect run. At the end: a table artifact with the test
metrics per task, a markdown artifact linking the report, and ``dvc push`` when a DVC remote is configured.

Served as the deployment ``sipl/full-pipeline`` by ``sipl serve`` (pipelines/serve.py).
"""

# No `from __future__ import annotations` here: Prefect builds the parameter schema from the real annotations.
from sipl import env as _env  # noqa: F401  (analytics off before Prefect is imported)

import json
import os
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines import dvc_runner
from sipl.config import load_params

FLOW_NAME = "sipl"
DEPLOYMENT_NAME = "full-pipeline"
METRICS_ARTIFACT_KEY = "sipl-test-metrics"
REPORT_ARTIFACT_KEY = "sipl-report"
METRIC_COLUMNS = ("psnr", "ssim", "psnr_y", "ssim_y", "input_psnr", "step0_psnr", "classical_psnr")


class StageFailed(RuntimeError):
    """A DVC command exited non-zero; the message carries the command's own error lines (``tail``: its last
    output lines)."""

    def __init__(self, message: str, tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.tail = list(tail or [])


def _run_dvc(root: Path, *args: str) -> list[str]:
    """Run ``dvc ARGS`` in ``root``, streaming its output to the run logger; raise StageFailed on failure."""
    logger = get_run_logger()
    logger.info("$ dvc %s", " ".join(args))
    code, tail = dvc_runner.stream_command(dvc_runner.dvc_cmd(*args), root, logger.info)
    if code != 0:
        raise StageFailed(f"`dvc {' '.join(args)}` failed (exit {code}):\n{dvc_runner.error_summary(tail)}", tail)
    return tail


@task(name="prepare", cache_policy=NO_CACHE)
def prepare(root: str, overrides: list[str]) -> dict[str, Any]:
    """Apply the run's overrides to params.yaml (as ``dvc exp run -S``), validate, return the prefect settings."""
    logger = get_run_logger()
    repo = Path(root)
    if overrides:
        logger.info("params overrides: %s", " ".join(overrides))
    dvc_runner.apply_params_overrides(repo, overrides)
    params = load_params(repo / dvc_runner.PARAMS_FILE)
    return {"retries": params.prefect.retries, "retry_delay_s": params.prefect.retry_delay_s}


@task(name="dvc-stage", cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(root: str, stage: str) -> str:
    """``dvc repro <stage>``: runs the stage (and anything upstream that changed) only if DVC finds it stale."""
    tail = _run_dvc(Path(root), "repro", stage)
    skipped = any(f"Stage '{stage}' didn't change" in line for line in tail)
    return "skipped" if skipped else "ran"


@task(name="record-experiment", cache_policy=NO_CACHE)
def record_experiment(root: str, name: str) -> str:
    """Save the workspace as the DVC experiment ``name`` (``dvc exp save``), including git-untracked metrics."""
    repo = Path(root)
    include = ["dvc.lock", *dvc_runner.uncached_outputs(repo)]
    include += [str(p.relative_to(repo)) for p in repo.glob("*/.gitignore")]
    args = ["exp", "save", "--force", "--name", name]
    for path in dvc_runner.git_untracked(repo, include):
        args += ["--include-untracked", path]
    _run_dvc(repo, *args)
    return name


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(root: str, experiment: str) -> dict[str, Any]:
    """Table artifact of the test metrics per task (metrics/eval.json) and a markdown artifact linking the report."""
    repo = Path(root)
    metrics_path = repo / "metrics" / "eval.json"
    if not metrics_path.is_file():
        raise StageFailed(f"{metrics_path} missing after the pipeline ran; check the select stage's log")
    metrics = json.loads(metrics_path.read_text())
    rows = metrics_table(metrics)
    create_table_artifact(table=rows, key=METRICS_ARTIFACT_KEY,
                          description=f"Test metrics per task, DVC experiment `{experiment}`")
    report = repo / "reports" / "index.html"
    selected = metrics.get("selected", {})
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY,
        markdown=(f"# sipl run `{experiment}`\n\n"
                  f"- report: [{report}]({report.as_uri()})\n"
                  f"- selected refinement: scheme `{selected.get('scheme')}`, steps `{selected.get('steps')}`\n"
                  f"- compare runs: `dvc exp show` in `{repo}`\n"),
        description="Link to the HTML report of this run",
    )
    return {"rows": rows, "report": str(report)}


def metrics_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{"task", psnr, ssim, ...}`` (rounded) from metrics/eval.json's ``tasks`` block, then its groups."""
    rows = []
    for kind, block in (("task", metrics.get("tasks") or {}), ("group", metrics.get("groups") or {})):
        for name, values in block.items():
            row: dict[str, Any] = {"task": name if kind == "task" else f"[{name}]"}
            for column in METRIC_COLUMNS:
                value = values.get(column)
                if isinstance(value, (int, float)):
                    row[column] = round(float(value), 4)
            rows.append(row)
    return rows


@task(name="dvc-push", cache_policy=NO_CACHE)
def push(root: str, remote: str) -> None:
    """``dvc push`` to the configured default remote (DVC retries transient S3 errors: ``dvc_runner.tool_env``);
    a failure is one sentence naming the remote, its endpoint, the object and what to do, with ``sipl doctor``'s
    diagnosis of the remote."""
    try:
        _run_dvc(Path(root), "push", "--remote", remote)
    except StageFailed as error:
        from pipelines.doctor import check_remote

        hints = [c.message for c in check_remote(Path(root), timeout_s=30.0) if c.status != "ok"]
        raise StageFailed(dvc_runner.push_failure(Path(root), remote, error.tail, hints), error.tail) from None


def _experiment_name() -> str:
    from prefect.runtime import flow_run

    name = flow_run.name or f"sipl-{str(flow_run.id)[:8]}"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


@flow(name=FLOW_NAME, log_prints=True)
def sipl_flow(
    refine_steps: int | Literal["auto"] | None = None,
    profile: Literal["tiny", "small", "paper"] | None = None,
    overrides: list[str] | None = None,
    repo: str | None = None,
    push_to_remote: bool = True,
) -> dict[str, Any]:
    """Run synthesize → benchmarks → train → evaluate → select → report through DVC and record a DVC experiment.

    Args:
        refine_steps: ``auto`` or a step count (``-S refine_steps=...``); None keeps params.yaml's value.
        profile: ``tiny`` / ``small`` / ``paper`` (``-S profile=...``); None keeps params.yaml's value.
        overrides: more ``KEY=VALUE`` overrides in ``dvc exp run -S`` syntax, e.g. ``profiles.tiny.train.steps=200``.
        repo: project root; default: ``SIPL_REPO`` or the working directory of the serving process.
        push_to_remote: ``dvc push`` at the end when a DVC remote is configured.

    Returns:
        ``{"experiment", "stages": {stage: "ran" | "skipped"}, "pushed"}``.
    """
    root = dvc_runner.find_repo_root(repo or os.environ.get("SIPL_REPO") or os.getcwd())
    experiment = _experiment_name()
    all_overrides = dvc_runner.overrides_for(refine_steps, profile, overrides)
    settings = prepare(str(root), all_overrides)
    stage = run_stage.with_options(retries=settings["retries"], retry_delay_seconds=settings["retry_delay_s"])
    outcome = {name: stage(str(root), name) for name in dvc_runner.stage_names(root)}
    record_experiment(str(root), experiment)
    publish_artifacts(str(root), experiment)
    remote = dvc_runner.default_remote(root) if push_to_remote else None
    if remote:
        push.with_options(retries=settings["retries"], retry_delay_seconds=settings["retry_delay_s"])(
            str(root), remote)
    return {"experiment": experiment, "stages": outcome, "pushed": bool(remote)}
