"""The DVC pipeline: dvc.yaml's structure (fast) and real `dvc repro` / `dvc exp run` runs on a shrunken copy (slow)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipelines import doctor, dvc_runner
from sipl.cli import SUBCOMMANDS
from tests.conftest import REPO_ROOT
from tests.pipeline_fixtures import cli_env, copy_repo, pipeline_repo, run  # noqa: F401  (fixture)

STAGES = ["synthesize", "benchmarks", "train", "evaluate", "select", "report"]
# Each of these consumes the previous one's outputs; benchmarks feeds evaluate from beside train.
CHAIN = ["synthesize", "train", "evaluate", "select", "report"]


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())


def _resolve_param(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"dvc.yaml names param {dotted!r}, missing in params.yaml"
        node = node[part]
    return node


def _entries(stage: dict, section: str) -> dict[str, dict]:
    result = {}
    for entry in stage.get(section) or []:
        if isinstance(entry, dict):
            (path, options), = entry.items()
            result[path] = options or {}
        else:
            result[entry] = {}
    return result


# ------------------------------------------------------------------------------------------ structure (fast)

def test_stages_form_the_designed_chain_of_sipl_commands():
    stages = _dvc_yaml()["stages"]
    assert list(stages) == STAGES
    for name, stage in stages.items():
        assert stage["cmd"].split()[:2] == ["sipl", name]
        assert name in SUBCOMMANDS
    # each stage consumes what the previous one produced
    produced = {name: set(_entries(stage, "outs")) | set(_entries(stage, "metrics")) | set(_entries(stage, "plots"))
                for name, stage in stages.items()}
    for before, after in zip(CHAIN, CHAIN[1:]):
        assert produced[before] & set(stages[after]["deps"]), f"{after} does not depend on {before}'s outputs"
    assert produced["benchmarks"] <= set(stages["evaluate"]["deps"])
    # benchmark sets never reach training, and their stage needs no model or training shards
    assert not produced["benchmarks"] & set(stages["train"]["deps"])
    assert not (produced["synthesize"] | produced["train"]) & set(stages["benchmarks"]["deps"])


def test_every_declared_param_exists_and_refine_steps_only_reaches_select():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    readers = {}
    for name, stage in _dvc_yaml()["stages"].items():
        for key in stage.get("params") or []:
            key = key.replace("${profile}", params["profile"])
            _resolve_param(params, key)
            readers.setdefault(key.split(".")[0], set()).add(name)
    assert readers["refine_steps"] == {"select"}
    # `-S 'benchmarks=[...]'` re-runs benchmarks and what reads its output, never synthesize or train
    assert readers["benchmarks"] == {"benchmarks"}
    assert set(_dvc_yaml()["stages"]["benchmarks"]["params"]) == {"seed", "tasks", "benchmarks", "crops.test",
                                                                  "shards.encoding", "shards.maxcount"}
    assert "train" not in readers.get("refine", set()) and "synthesize" not in readers.get("profiles", set())
    train_params = _dvc_yaml()["stages"]["train"]["params"]
    assert "profiles.${profile}" in train_params and "profiles" not in train_params


def test_code_dependencies_exist():
    [check] = doctor.check_stage_deps(REPO_ROOT)
    assert check.status == "ok", check.message


# What sipl/models holds for test time only: training never runs it, so a change there must not re-train.
TEST_TIME_MODEL_CODE = {"sipl/models/refine.py", "sipl/models/tiling.py", "sipl/models/runtime.py",
                        "sipl/models/onnx_engine.py"}


def test_training_depends_on_the_model_code_it_builds_and_no_evaluation_code():
    deps = set(_dvc_yaml()["stages"]["train"]["deps"])
    model_files = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "sipl" / "models").glob("*.py")}
    assert TEST_TIME_MODEL_CODE <= model_files
    # listed file by file: a new model module must be added to dvc.yaml here (or to TEST_TIME_MODEL_CODE)
    assert {d for d in deps if d.startswith("sipl/models")} == model_files - TEST_TIME_MODEL_CODE
    assert {d for d in deps if d.startswith("sipl/evaluation")} == {"sipl/evaluation/metrics.py"}


def test_outputs_match_the_design_table():
    stages = _dvc_yaml()["stages"]
    assert set(_entries(stages["synthesize"], "outs")) == {"data/shards"}
    assert set(_entries(stages["benchmarks"], "outs")) == {"data/benchmarks"}
    assert set(_entries(stages["train"], "outs")) == {"models/model.safetensors", "models/model.json"}
    assert set(_entries(stages["evaluate"], "outs")) == {"plots/sample_images"}  # the report's sample viewer
    assert set(_entries(stages["select"], "outs")) == {"models/selection.json"}
    assert set(_entries(stages["report"], "outs")) == {"reports"}
    metrics = {p: o for s in stages.values() for p, o in _entries(s, "metrics").items()}
    assert set(metrics) == {"metrics/train.json", "metrics/eval_steps.json", "metrics/eval.json",
                            "metrics/benchmarks.json"}
    assert all(o.get("cache") is False for o in metrics.values())
    plots = {p: o for s in stages.values() for p, o in _entries(s, "plots").items()}
    assert plots["plots/psnr_vs_steps.csv"] == {"cache": False, "x": "step", "y": "psnr"}
    assert "plots/train.csv" in plots and "plots/samples" in plots
    every_out = [p for s in stages.values() for sec in ("outs", "metrics", "plots") for p in _entries(s, sec)]
    assert not any(p.startswith(".ray") for p in every_out)
    ignored = subprocess.run(["git", "check-ignore", "-q", ".ray/results"], cwd=REPO_ROOT).returncode == 0
    assert ignored, ".ray/ must stay git-ignored"
    assert set(dvc_runner.uncached_outputs(REPO_ROOT)) >= set(metrics)


def test_doctor_outside_a_repository_says_what_to_do(tmp_path):
    result = run(["sipl", "doctor"], tmp_path, cli_env(tmp_path), timeout=120, check=False)
    assert result.returncode == 1
    assert "not inside a git repository" in result.stdout and "--init-repo" in result.stdout
    assert "Traceback" not in result.stdout


# ------------------------------------------------------------------------------------------ real runs (slow)

def _stages_run(log: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in log]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_repro_end_to_end_then_nothing_to_do(pipeline_repo, tmp_path):
    repo, env = pipeline_repo["repo"], pipeline_repo["env"]
    assert _stages_run(pipeline_repo["log"]) == STAGES
    # Ray Train's cleaner actor polls a state API the local instance lacks; its warning is held back (issue 18)
    assert "actor state. State API may be temporarily unavailable" not in pipeline_repo["log"]
    for path in ["data/shards/manifest.json", "data/benchmarks/index.json", "models/model.safetensors",
                 "models/model.json", "models/selection.json", "metrics/train.json", "metrics/eval_steps.json",
                 "metrics/eval.json", "metrics/benchmarks.json", "plots/train.csv", "plots/psnr_vs_steps.csv",
                 "reports/index.html"]:
        assert (repo / path).is_file(), path
    assert json.loads((repo / "metrics/benchmarks.json").read_text())["sets"] == {}  # `benchmarks: []`
    assert list((repo / "plots/samples").glob("*.png"))
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert set(evaluation["tasks"]) == {"denoise_25", "dehaze"}

    tic = time.perf_counter()
    again = run(["dvc", "repro"], repo, env)
    noop_s = time.perf_counter() - tic
    assert _stages_run(again.stdout) == [], again.stdout
    assert "up to date" in run(["dvc", "status"], repo, env).stdout

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    files = next(iter(shown.values()))["data"]
    assert "metrics/eval.json" in files and "metrics/train.json" in files
    shown_plots = run(["dvc", "plots", "show", "--json", "-o", str(tmp_path / "dvc_plots")], repo, env).stdout
    plots = json.loads(shown_plots)["data"]
    steps_plot = plots["plots/psnr_vs_steps.csv"][0]["content"]
    assert steps_plot["encoding"]["x"]["field"] == "step" and "psnr" in json.dumps(steps_plot["layer"])
    assert "plots/train.csv" in plots and any(key.startswith("plots/samples/") for key in plots)
    print(f"\n[timing] dvc repro (shrunken tiny): {pipeline_repo['repro_s']:.1f}s, no-op repro: {noop_s:.1f}s")


@pytest.mark.slow
def test_exp_run_refine_steps_reruns_only_select_and_report(pipeline_repo, tmp_path):
    repo = copy_repo(pipeline_repo["repo"], tmp_path / "repo")
    env = cli_env(tmp_path)
    weights = _sha(repo / "models/model.safetensors")
    tic = time.perf_counter()
    result = run(["dvc", "exp", "run", "-S", "refine_steps=0", "--name", "steps-zero"], repo, env)
    exp_s = time.perf_counter() - tic
    assert _stages_run(result.stdout) == ["select", "report"], result.stdout
    assert _sha(repo / "models/model.safetensors") == weights
    assert json.loads((repo / "metrics/eval.json").read_text())["selected"]["steps"] == 0

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    names = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                names[rev.get("name")] = rev
    assert "steps-zero" in names, names.keys()
    params = names["steps-zero"]["data"]["params"]["params.yaml"]["data"]
    assert params["refine_steps"] == 0
    print(f"\n[timing] dvc exp run -S refine_steps=0: {exp_s:.1f}s")


@pytest.mark.slow
def test_exp_run_with_benchmark_sets_reruns_no_training(pipeline_repo, tmp_path):
    from tests.test_benchmark_sets import make_clean, make_rain

    repo = copy_repo(pipeline_repo["repo"], tmp_path / "repo")
    env = cli_env(tmp_path)
    weights, shards = _sha(repo / "models/model.safetensors"), _sha(repo / "data/shards/manifest.json")
    clean, rain = make_clean(tmp_path / "clean"), make_rain(tmp_path / "rain100l")
    sets = f"benchmarks=[{{name:dev,kind:clean,path:'{clean}'}},{{name:rain,kind:rain100l,path:'{rain}'}}]"
    tic = time.perf_counter()
    result = run(["dvc", "exp", "run", "-S", sets, "--name", "with-sets"], repo, env)
    exp_s = time.perf_counter() - tic
    assert _stages_run(result.stdout) == ["benchmarks", "evaluate", "select", "report"], result.stdout
    assert _sha(repo / "models/model.safetensors") == weights
    assert _sha(repo / "data/shards/manifest.json") == shards
    document = json.loads((repo / "metrics/benchmarks.json").read_text())
    assert set(document["sets"]) == {"dev", "rain"}
    assert set(document["sets"]["dev"]["tasks"]) == {"denoise_25", "dehaze"}  # the pipeline's tasks
    assert set(document["sets"]["rain"]["tasks"]) == {"derain"}
    assert {"psnr", "input_psnr", "step0_psnr"} <= set(document["sets"]["rain"]["tasks"]["derain"])
    assert "all" in document["sets"]["dev"]["groups"]
    assert "Benchmark sets" in (repo / "reports/index.html").read_text()
    print(f"\n[timing] dvc exp run -S benchmarks=[2 tiny sets]: {exp_s:.1f}s")


@pytest.mark.slow
def test_stage_killed_midway_is_rerun_and_nothing_half_written_is_cached(pipeline_repo, tmp_path):
    repo = copy_repo(pipeline_repo["repo"], tmp_path / "repo")
    env = cli_env(tmp_path)
    lock_before = (repo / "dvc.lock").read_text()
    # Invalidate select (and report), then SIGKILL `dvc repro` and the stage's process while select runs.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["refine_steps"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + 120
        while "> sipl select" not in log_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.05)
        time.sleep(0.3)  # inside `sipl select` (its start-up alone takes longer)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert (repo / "dvc.lock").read_text() == lock_before, "a killed run must not record anything as done"

    result = run(["dvc", "repro"], repo, env)
    assert _stages_run(result.stdout) == ["select", "report"], result.stdout
    assert "up to date" in run(["dvc", "status"], repo, env).stdout
    assert json.loads((repo / "metrics/eval.json").read_text())["selected"]["steps"] == 1
    leftovers = [p for p in repo.rglob("*") if ".dvc" not in p.parts and ".git" not in p.parts
                 and (p.name.endswith(".tmp") or p.name.startswith(".tmp"))]
    assert not leftovers, leftovers
