"""The benchmarks run end to end on tiny settings (their figures are not checked, only that every case runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(tmp_path, *args):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "model.py"), "--backbones", "nafnet", "--sizes", "tiny",
                    "--json", str(out), *args], check=True, cwd=ROOT, capture_output=True, timeout=300)
    return json.loads(out.read_text())["nafnet/tiny"]


def test_mac_ratios_on_the_meta_device(tmp_path):
    row = run_benchmark(tmp_path, "--macs-only", "--overrides", '{"dict_sizes": [4, 4, 4]}')
    assert row["plain_forward_GMAC"] > 0
    assert 1 < row["sipl_pass_mac_x"] < row["anchored_0..3_mac_x"] < row["official_0..3_mac_x"]


def test_every_timed_case_runs(tmp_path):
    row = run_benchmark(tmp_path, "--px", "32", "--train-px", "16", "--repeats", "1", "--steps", "1")
    for case in ("sipl_pass", "anchored_0..1", "official_0..1"):
        assert row[f"{case}_x"] > 0
    for case in ("w0", "w0.5", "w0.5_share", "gt_w0", "gt_w0.5", "gt_w0.5_share"):
        assert row[f"train_sipl_{case}_vs_train_plain"] > 0


def test_train_benchmark_without_ray_reports_every_figure():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--no-ray", "--json",
                             "--concurrent-steps", "2"], check=True, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    figures = json.loads(result.stdout[result.stdout.index("{"):])
    assert figures["sipl_step_s"] > 0 and figures["plain_step_s"] > 0 and figures["sipl_step_gflop"] > 0
    assert 0 < figures["train_fraction_of_matmul"]
    # two processes at once can neither take less time per step than none at all nor reach more than 2x
    assert figures["step_s_2_processes"] > 0 and 0 < figures["speedup_2_processes"] <= 2.5


@pytest.mark.slow
def test_train_benchmark_scaling_pairs_on_ray():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--json", "--steps", "3",
                             "--repeats", "2", "--concurrent-steps", "1"], check=True, cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    figures = json.loads(result.stdout[result.stdout.index("{"):])
    ratios = figures["speedup_2_workers_runs"]
    assert len(ratios) == len(figures["samples_per_s_1_worker_runs"]) == 2
    assert len(figures["samples_per_s_2_workers_runs"]) == 2
    assert all(r > 0 for r in figures["samples_per_s_1_worker_runs"] + figures["samples_per_s_2_workers_runs"])
    # the reported pair is one of the measured pairs, the lower middle one
    assert figures["speedup_2_workers"] == min(ratios)
    assert (figures["samples_per_s_1_worker"], figures["samples_per_s_2_workers"]) in zip(
        figures["samples_per_s_1_worker_runs"], figures["samples_per_s_2_workers_runs"])
    assert figures["samples_per_s_1_process_no_ray"] > 0 and figures["samples_per_s_2_processes_no_ray"] > 0
    assert figures["samples_per_s_1_worker_global_batch"] > 0 and figures["speedup_2_workers_same_global_batch"] > 0
