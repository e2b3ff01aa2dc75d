"""Training benchmark (CPU): Ray Train scaling, SIPL vs plain step time, achieved GFLOP/s vs matmul GFLOP/s.

Measured in one run:
1. samples/s of the real ``sipl.train.fit`` path (Ray Train, DataLoader, DDP) with 1 and 2 workers × 1 CPU at the
   same global batch (goal: 2 workers ≥ 1.7× on 2 cores);
2. one training step (forward + backward) of the SIPL model vs the plain backbone, same backbone and batch;
3. the FLOPs of a SIPL training step (torch's FlopCounterMode) divided by its time, next to the machine's
   single-thread float32 matmul GFLOP/s (goal: ≥ 25 %).

Run from the project root: ``.venv/bin/python benchmarks/train.py`` (``--no-ray`` skips part 1, ``--json`` prints
the figures as JSON). Uses ``data/shards`` when it exists, otherwise small synthetic shards in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipl.env import apply_quiet_defaults  # noqa: E402

apply_quiet_defaults()
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

import torch  # noqa: E402


def matmul_gflops(threads: int = 1, n: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` float32 n×n matmul rate with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tic)
    return 2 * n ** 3 / best / 1e9


def step_time(model, batch: int, patch: int, repeats: int = 3) -> float:
    """Median seconds of one training step (forward + backward) on random data."""
    from sipl.losses import l1

    lq, gt = torch.rand(batch, 3, patch, patch), torch.rand(batch, 3, patch, patch)
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        tic = time.perf_counter()
        model.training_step(lq, gt, l1, preliminary_weight=0.5)["loss"].backward()
        if i:
            times.append(time.perf_counter() - tic)
    return sorted(times)[len(times) // 2]


def step_flops(model, batch: int, patch: int) -> int:
    """FLOPs of one training step as counted by torch (convolutions, matmuls; forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sipl.losses import l1

    lq, gt = torch.rand(batch, 3, patch, patch), torch.rand(batch, 3, patch, patch)
    with FlopCounterMode(display=False) as counter:
        model.training_step(lq, gt, l1, preliminary_weight=0.5)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def ray_throughput(params_path: Path, workers: list[int], steps: int) -> dict[int, float]:
    """samples/s of ``sipl.train.fit`` per worker count (same params, global batch and steps)."""
    import ray

    from sipl.config import load_params, parse_params
    from sipl.train import fit

    base = load_params(params_path)
    shard_root = base.shards.root
    projects: list[Path] = []
    if not Path(ROOT, shard_root, "manifest.json").is_file() and not shard_root.startswith("s3://"):
        from tests.test_data import make_shards

        projects.append(Path(tempfile.mkdtemp(prefix="sipl-bench-")))
        shard_root = str(make_shards(projects[-1] / "shards", size=96,
                                     samples={"denoise": 64, "lowlight": 64}))
        tasks = {"denoise": {"family": "noise", "steps": [{"name": "gaussian_noise", "sigma": 25}]},
                 "lowlight": {"family": "lowlight", "steps": [{"name": "low_light"}]}}
    else:
        shard_root = str(Path(ROOT, shard_root)) if not shard_root.startswith("s3://") else shard_root
        tasks = None
    import shutil

    temp_dir = tempfile.mkdtemp(prefix="sipl-ray-", dir="/tmp")
    ray.init(num_cpus=max(workers), include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    out = {}
    try:
        for count in workers:
            raw = base.model_dump(mode="json")
            raw["shards"]["root"] = shard_root
            if tasks:
                raw["tasks"] = tasks
            train = raw["profiles"][raw["profile"]]["train"]
            train.update({"steps": steps, "val_every": 10 ** 6, "checkpoint_every": 10 ** 6, "log_every": steps})
            raw["ray"].update({"num_workers": count, "cpus_per_worker": 1, "threads_per_worker": 1,
                               "run_name": f"bench-{count}w-{time.time_ns()}"})
            project = Path(tempfile.mkdtemp(prefix="sipl-bench-run-"))
            projects.append(project)
            summary = fit(parse_params(raw, source="benchmark"), project_dir=project)
            out[count] = summary["samples_per_s"]
    finally:
        ray.shutdown()
        for folder in [*projects, Path(temp_dir)]:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--steps", type=int, default=30, help="training steps per Ray run")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray scaling measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from sipl.config import load_params
    from sipl.models import build_model

    params = load_params(args.params)
    cfg, model_cfg = params.train, params.model
    batch = max(1, cfg.global_batch // 2)
    figures: dict[str, object] = {"profile": params.profile, "patch": cfg.patch, "worker_batch": batch,
                                  "cpu_count": os.cpu_count(), "torch": torch.__version__}

    torch.set_num_threads(1)
    torch.manual_seed(0)
    sipl_model = build_model(model_cfg.backbone, model_cfg.size, sipl=True, **model_cfg.overrides)
    plain_model = build_model(model_cfg.backbone, model_cfg.size, sipl=False, **model_cfg.overrides)
    figures["sipl_step_s"] = step_time(sipl_model, batch, cfg.patch)
    figures["plain_step_s"] = step_time(plain_model, batch, cfg.patch)
    figures["sipl_over_plain"] = figures["sipl_step_s"] / figures["plain_step_s"]
    flops = step_flops(sipl_model, batch, cfg.patch)
    figures["sipl_step_gflop"] = flops / 1e9
    figures["train_gflops_1thread"] = flops / figures["sipl_step_s"] / 1e9
    figures["matmul_gflops_1thread"] = matmul_gflops(1)
    figures["train_fraction_of_matmul"] = figures["train_gflops_1thread"] / figures["matmul_gflops_1thread"]

    if not args.no_ray:
        rates = ray_throughput(Path(args.params), [1, 2], args.steps)
        figures["samples_per_s_1_worker"] = rates[1]
        figures["samples_per_s_2_workers"] = rates[2]
        figures["speedup_2_workers"] = rates[2] / rates[1] if rates[1] else float("nan")

    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"profile {params.profile}: {model_cfg.backbone}/{model_cfg.size}, patch {cfg.patch}, "
          f"worker batch {batch}, {os.cpu_count()} CPUs")
    print(f"  step time, 1 thread: SIPL {figures['sipl_step_s'] * 1e3:.0f} ms, plain {figures['plain_step_s'] * 1e3:.0f}"
          f" ms (SIPL/plain {figures['sipl_over_plain']:.2f}x)")
    print(f"  SIPL step: {figures['sipl_step_gflop']:.2f} GFLOP -> {figures['train_gflops_1thread']:.2f} GFLOP/s; "
          f"matmul {figures['matmul_gflops_1thread']:.2f} GFLOP/s -> "
          f"{100 * figures['train_fraction_of_matmul']:.0f} % (goal >= 25 %)")
    if not args.no_ray:
        print(f"  Ray Train samples/s: 1 worker {figures['samples_per_s_1_worker']:.1f}, 2 workers "
              f"{figures['samples_per_s_2_workers']:.1f} -> {figures['speedup_2_workers']:.2f}x (goal >= 1.7x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
