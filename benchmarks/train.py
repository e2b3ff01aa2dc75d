"""Training benchmark (CPU): Ray Train scaling, SIPL vs plain step time, achieved GFLOP/s vs matmul GFLOP/s.

Measured in one run:
1. samples/s of the real ``sipl.train.fit`` path (Ray Train, data streaming, DDP) with 1 and 2 workers × 1 CPU ×
   1 thread, each worker training on the profile's per-worker batch (goal: 2 workers ≥ 1.7× on 2 cores), in
   ``--repeats`` alternating 1-worker / 2-worker pairs whose median ratio is the figure (one pair's ratio spreads
   about ±10 % on a shared 2-core machine), and, for reference, 1 worker on the 2-worker global batch (strong
   scaling);
2. one training step (forward + backward) of the SIPL model vs the plain backbone, same backbone and batch;
3. the FLOPs of a SIPL training step (torch's FlopCounterMode) divided by its time, next to the machine's
   single-thread float32 matmul GFLOP/s (goal: ≥ 25 %);
4. the same training loop (``sipl.train.train_worker``: data streaming, DDP, optimiser) in 1 and 2 plain
   ``torch.distributed`` (gloo) processes without Ray, which separates what the loop costs from what Ray costs;
5. the ceiling the machine itself puts on part 1: the same SIPL step timed in one process alone and in two
   processes at once (1 thread each, no Ray, no communication, identical work). Cores that share caches, memory
   bandwidth or a host's hyper-threads slow each other down; no data-parallel framework can beat that ratio.

Run from the project root: ``.venv/bin/python benchmarks/train.py`` (``--no-ray`` skips parts 1 and 4, ``--json`` prints
the figures as JSON). Uses ``data/shards`` when it exists, otherwise small synthetic shards in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipl.env import apply_quiet_defaults  # noqa: E402

apply_quiet_defaults()
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # as `sipl train` sets it

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


def step_time(model, recipe, batch: int, patch: int, repeats: int = 5) -> float:
    """Median seconds of one training step (forward + backward) of ``recipe`` (the profile's ``train`` block, as
    the trainer runs it) on random data."""
    from sipl.train import step_module_for

    step = step_module_for(model, recipe)
    lq, gt = torch.rand(batch, 3, patch, patch), torch.rand(batch, 3, patch, patch)
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        tic = time.perf_counter()
        step(lq, gt)["loss"].backward()
        if i:
            times.append(time.perf_counter() - tic)
    return sorted(times)[len(times) // 2]


def step_flops(model, recipe, batch: int, patch: int) -> int:
    """FLOPs of one training step of ``recipe`` as counted by torch (convolutions, matmuls; forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sipl.train import step_module_for

    step = step_module_for(model, recipe)
    lq, gt = torch.rand(batch, 3, patch, patch), torch.rand(batch, 3, patch, patch)
    with FlopCounterMode(display=False) as counter:
        step(lq, gt)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _concurrent_steps(model_args: dict, recipe, batch: int, patch: int, steps: int, barrier, results) -> None:
    """One process of ``concurrent_scaling``: times ``steps`` SIPL training steps after ``barrier``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from sipl.models import build_model
    from sipl.train import step_module_for

    model = build_model(**model_args)
    step = step_module_for(model, recipe)
    lq, gt = torch.rand(batch, 3, patch, patch), torch.rand(batch, 3, patch, patch)
    times = []
    for i in range(-2, steps):  # two warm-up steps
        if i == 0:
            barrier.wait()
        model.zero_grad(set_to_none=True)
        tic = time.perf_counter()
        # the same step-seeded choices in every process, so each does identical work
        step(lq, gt, torch.Generator().manual_seed(max(i, 0)))["loss"].backward()
        times.append(time.perf_counter() - tic)
    results.put(sum(times[2:]))


def concurrent_scaling(model_args: dict, recipe, batch: int, patch: int, steps: int = 20) -> dict[str, float]:
    """Seconds per SIPL step in 1 process alone and in 2 processes at once, and the throughput ratio 2 processes /
    1 process (2.0 = no contention between the cores)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    seconds = {}
    for count in (1, 2):
        barrier, results = context.Barrier(count), context.Queue()
        workers = [context.Process(target=_concurrent_steps,
                                   args=(model_args, recipe, batch, patch, steps, barrier, results))
                   for _ in range(count)]
        for worker in workers:
            worker.start()
        totals = [results.get() for _ in workers]
        for worker in workers:
            worker.join()
        seconds[count] = max(totals) / steps
    return {"step_s_1_process": seconds[1], "step_s_2_processes": seconds[2],
            "speedup_2_processes": 2 * seconds[1] / seconds[2]}


class _DDPSession:
    """A ``train_worker`` session over plain torch.distributed: DDP wrap, no checkpoints."""

    def restore(self, load):
        return None

    def prepare(self, module, find_unused_parameters=False):
        import torch.distributed as dist

        if not dist.is_initialized():
            return module
        return torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=find_unused_parameters)

    def report(self, metrics, checkpoint_dir):
        pass


def _ddp_rank(rank: int, world: int, port: int, spec: dict, results) -> None:
    import torch.distributed as dist

    from sipl.train import train_worker

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metrics = train_worker(spec, rank, world, _DDPSession())
    finally:
        if world > 1:
            dist.destroy_process_group()
    if rank == 0:
        results.put(metrics["summary"]["samples_per_s"])


class _BenchmarkData:
    """The shards the scaling runs train on: ``data/shards`` when synthesized, else small synthetic shards in a temp
    folder (removed by ``cleanup``). ``run_params`` gives one run's validated params."""

    def __init__(self, base) -> None:
        self.base = base
        self.folders: list[Path] = []
        shard_root = base.shards.root
        self.tasks = None
        if shard_root.startswith("s3://"):
            self.shard_root = shard_root
        elif Path(ROOT, shard_root, "manifest.json").is_file():
            self.shard_root = str(Path(ROOT, shard_root))
        else:
            from tests.test_data import make_shards

            self.folders.append(Path(tempfile.mkdtemp(prefix="sipl-bench-")))
            self.shard_root = str(make_shards(self.folders[-1] / "shards", size=96,
                                              samples={"denoise": 64, "lowlight": 64}))
            self.tasks = {"denoise": {"family": "noise", "steps": [{"name": "gaussian_noise", "sigma": 25}]},
                          "lowlight": {"family": "lowlight", "steps": [{"name": "low_light"}]}}

    def run_params(self, workers: int, global_batch: int, steps: int, loader_workers: int):
        """Params of one timed run: ``steps`` steps of ``global_batch`` on ``workers`` workers × 1 CPU × 1 thread,
        no validation or checkpoint before the end."""
        from sipl.config import parse_params

        raw = self.base.model_dump(mode="json")
        raw["shards"]["root"] = self.shard_root
        if self.tasks:
            raw["tasks"] = self.tasks
        raw["profiles"][raw["profile"]]["train"].update({
            "steps": steps, "global_batch": global_batch, "max_worker_batch": None, "val_every": 10 ** 6,
            "checkpoint_every": 10 ** 6, "log_every": steps, "loader_workers": loader_workers})
        raw["ray"].update({"num_workers": workers, "cpus_per_worker": 1, "threads_per_worker": 1,
                           "run_name": f"bench-{workers}w-{time.time_ns()}"})
        return parse_params(raw, source="benchmark")

    def cleanup(self) -> None:
        import shutil

        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


def ddp_throughput(data: _BenchmarkData, steps: int, worker_batch: int) -> dict[int, float]:
    """samples/s of ``train_worker`` in 1 and 2 gloo processes (1 thread, no DataLoader process, ``worker_batch``
    samples per process), without Ray."""
    import socket

    import torch.multiprocessing as mp

    from sipl.train import make_spec

    out = {}
    for world in (1, 2):
        spec = make_spec(data.run_params(world, worker_batch * world, steps, 0), num_workers=world)
        spec["threads"] = 1
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        results = mp.get_context("spawn").SimpleQueue()
        mp.spawn(_ddp_rank, args=(world, port, spec, results), nprocs=world, join=True)
        out[world] = results.get()
    return out


def ray_throughput(data: _BenchmarkData, runs: list[tuple[int, int]], steps: int,
                   loader_workers: int) -> list[float]:
    """samples/s of ``sipl.train.fit`` for each ``(workers, global batch)`` of ``runs``, in that order (same params and
    steps otherwise; each Ray worker gets one CPU, one torch thread and ``loader_workers`` DataLoader processes)."""
    import shutil

    import ray

    from sipl.train import fit

    out = []
    for count, global_batch in runs:
        project = Path(tempfile.mkdtemp(prefix="sipl-bench-run-"))
        # Each run starts its own local Ray instance, as `sipl train` does.
        temp_dir = tempfile.mkdtemp(prefix="sipl-ray-", dir="/tmp")
        ray.init(num_cpus=max(c for c, _ in runs), include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        try:
            summary = fit(data.run_params(count, global_batch, steps, loader_workers), project_dir=project)
        finally:
            ray.shutdown()
            shutil.rmtree(project, ignore_errors=True)
            shutil.rmtree(temp_dir, ignore_errors=True)
        out.append(summary["samples_per_s"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--steps", type=int, default=60, help="training steps per Ray run")
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="DataLoader processes per Ray worker (default 0: each worker is one process on one "
                             "core, so 1 vs 2 workers compares 1 vs 2 cores; 1 lets a single worker use both)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating 1- and 2-worker Ray runs; the speed-up is the median pair's")
    parser.add_argument("--concurrent-steps", type=int, default=20,
                        help="SIPL steps per process for the machine's 1-vs-2-process ceiling")
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
    sipl_model = build_model(**model_cfg.build_arguments(sipl=True, tasks=list(params.tasks)))
    plain_model = build_model(**model_cfg.build_arguments(sipl=False, tasks=list(params.tasks)))
    figures["sipl_step_s"] = step_time(sipl_model, cfg, batch, cfg.patch)
    figures["plain_step_s"] = step_time(plain_model, cfg, batch, cfg.patch)
    figures["sipl_over_plain"] = figures["sipl_step_s"] / figures["plain_step_s"]
    flops = step_flops(sipl_model, cfg, batch, cfg.patch)
    figures["sipl_step_gflop"] = flops / 1e9
    figures["train_gflops_1thread"] = flops / figures["sipl_step_s"] / 1e9
    figures["matmul_gflops_1thread"] = matmul_gflops(1)
    figures["train_fraction_of_matmul"] = figures["train_gflops_1thread"] / figures["matmul_gflops_1thread"]

    figures.update(concurrent_scaling(model_cfg.build_arguments(sipl=True, tasks=list(params.tasks)), cfg, batch, cfg.patch,
                                      args.concurrent_steps))

    if not args.no_ray:
        data = _BenchmarkData(params)
        try:
            loop = ddp_throughput(data, args.steps, batch)
            # weak scaling: each worker keeps the per-worker batch (the data-parallel speed-up); strong scaling: the
            # global batch stays and each worker's batch halves (smaller batches cost more per sample on CPU).
            # 1 and 2 workers alternate, so that a slow spell of the machine does not land on one side only.
            weak = [(1, batch), (2, 2 * batch)] * args.repeats
            rates = ray_throughput(data, weak + [(1, 2 * batch)], args.steps, args.loader_workers)
        finally:
            data.cleanup()
        figures["samples_per_s_1_process_no_ray"] = loop[1]
        figures["samples_per_s_2_processes_no_ray"] = loop[2]
        figures["speedup_2_processes_no_ray"] = loop[2] / loop[1]
        figures["loader_workers"] = args.loader_workers
        pairs = [(rates[2 * i], rates[2 * i + 1]) for i in range(args.repeats)]
        ratios = [two / one for one, two in pairs]
        median = statistics.median_low(ratios)
        one, two = pairs[ratios.index(median)]
        figures["samples_per_s_1_worker_runs"] = [one for one, _ in pairs]
        figures["samples_per_s_2_workers_runs"] = [two for _, two in pairs]
        figures["speedup_2_workers_runs"] = ratios
        figures["samples_per_s_1_worker"] = one
        figures["samples_per_s_2_workers"] = two
        figures["speedup_2_workers"] = median
        figures["samples_per_s_1_worker_global_batch"] = rates[-1]
        median_two = statistics.median(figures["samples_per_s_2_workers_runs"])
        figures["speedup_2_workers_same_global_batch"] = median_two / rates[-1]

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
    print(f"  the machine's ceiling, same SIPL step, no Ray: 1 process {figures['step_s_1_process'] * 1e3:.0f} ms, 2 "
          f"processes at once {figures['step_s_2_processes'] * 1e3:.0f} ms each -> "
          f"{figures['speedup_2_processes']:.2f}x")
    if not args.no_ray:
        print(f"  the training loop in plain torch.distributed (gloo) processes, no Ray: 1 process "
              f"{figures['samples_per_s_1_process_no_ray']:.1f}, 2 processes "
              f"{figures['samples_per_s_2_processes_no_ray']:.1f} samples/s -> "
              f"{figures['speedup_2_processes_no_ray']:.2f}x")
        runs = ", ".join(f"{one:.1f} -> {two:.1f} ({ratio:.2f}x)" for one, two, ratio in
                         zip(figures["samples_per_s_1_worker_runs"], figures["samples_per_s_2_workers_runs"],
                             figures["speedup_2_workers_runs"]))
        print(f"  Ray Train samples/s ({args.loader_workers} loader process(es) per worker), {batch} samples per "
              f"worker, 1 -> 2 workers, {args.repeats} alternating pair(s): {runs}; median pair: 1 worker "
              f"{figures['samples_per_s_1_worker']:.1f}, 2 workers {figures['samples_per_s_2_workers']:.1f} -> "
              f"{figures['speedup_2_workers']:.2f}x (goal >= 1.7x)")
        print(f"  same global batch {2 * batch}: 1 worker {figures['samples_per_s_1_worker_global_batch']:.1f} "
              f"-> 2 workers (median) {figures['speedup_2_workers_same_global_batch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
