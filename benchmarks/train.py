"""Training benchmark (CPU): Ray Train scaling, SIPL vs plain step time, achieved GFLOP/s vs matmul GFLOP/s.

Measured in one run:
1. samples/s of the real ``sipl.training.launcher.fit`` path (Ray Train, data streaming, DDP) with 1 and 2 workers
   × 1 CPU × 1 thread, each worker training on the profile's per-worker batch (goal: 2 workers ≥ 1.8× on 2 cores), in
   ``--repeats`` alternating 1-worker / 2-worker pairs whose median ratio is the figure (one pair's ratio spreads
   about ±10 % on a shared 2-core machine), and, for reference, 1 worker on the 2-worker global batch (strong
   scaling);
2. the trainer's step (forward with the degradation head's labels and extra crops, backward, clipping, AdamW) of
   the SIPL model vs the plain backbone, same backbone and batch (goal: SIPL ≤ 2× plain), and the same SIPL step in
   the reference recipe (N×C×H×W layout, AdamW's per-tensor loop), the three taking turns step by step; wall time
   and the process's CPU time, which another load on the machine does not inflate;
3. the FLOPs of a SIPL training step (torch's FlopCounterMode) divided by its time, next to the machine's
   single-thread float32 matmul GFLOP/s (goal: ≥ 40 %);
4. the same training loop (``sipl.training.loop.train_worker``: data streaming, DDP, optimiser) in 1 and 2 plain
   ``torch.distributed`` (gloo) processes without Ray, which separates what the loop costs from what Ray costs;
5. the ceiling the machine itself puts on part 1: the same SIPL step timed in one process alone and in two
   processes at once (1 thread each, no Ray, no communication, identical work). Cores that share caches, memory
   bandwidth or a host's hyper-threads slow each other down; no data-parallel framework can beat that ratio.

Run from the project root: ``.venv/bin/python benchmarks/train.py`` (``--no-ray`` skips parts 1 and 4, ``--json`` prints
the figures as JSON, ``--train-override '{"channels_last": false, "fused_optimizer": false}'`` runs every part with
the reference recipe). Uses ``data/shards`` when it exists, otherwise small synthetic shards in a temp folder.
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


# The step the trainer ran before its layout and optimiser became knobs: N×C×H×W maps, AdamW's per-tensor loop.
REFERENCE_RECIPE = {"channels_last": False, "fused_optimizer": False}


def matmul_gflops(threads: int = 1, n: int = 1024, repeats: int = 10) -> dict[str, float]:
    """Best-of-``repeats`` float32 n×n matmul rate with ``threads`` intra-op threads, by wall time (``"wall"``) and by
    the process's CPU time (``"cpu"``: what the machine's other load does not inflate, unlike wall time)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = {"wall": float("inf"), "cpu": float("inf")}
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        a @ b
        best["wall"] = min(best["wall"], time.perf_counter() - wall)
        best["cpu"] = min(best["cpu"], time.process_time() - cpu)
    return {kind: 2 * n ** 3 / max(seconds, 1e-9) / 1e9 for kind, seconds in best.items()}


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **_) -> int:
    """FLOPs of a convolution's backward from the shapes torch's FlopCounterMode passes: the input gradient and the
    weight gradient (each when requested by ``output_mask``) cost what the forward costs.

    torch's own formula leaves out ``groups`` for these two terms and so counts a depthwise convolution's backward
    as if it were dense: for a 3×3 depthwise conv on 16 channels 17× its forward instead of 2×, which turned the
    step's GFLOP/s of this network of depthwise and pointwise convs into 4-5× what it achieves."""
    import math

    positions = math.prod(x_shape) if transposed else math.prod(grad_out_shape)
    forward = 2 * positions * math.prod(w_shape[1:])
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def attention_flops(query_shape, key_shape, value_shape, *_, **__) -> int:
    """FLOPs of scaled dot-product attention (q·kᵀ and the weighted sum of v) for q B×H×Sq×D, k B×H×Sk×D,
    v B×H×Sk×Dv."""
    batch, heads, queries, depth = query_shape
    return 2 * batch * heads * queries * key_shape[-2] * (depth + value_shape[-1])


def attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *_, **__) -> int:
    """FLOPs of its backward: the gradients of q, k, v and of the attention weights, twice the forward."""
    return 2 * attention_flops(query_shape, key_shape, value_shape)


class TrainerStep:
    """One optimiser step of the trainer on random data, as ``train_worker`` runs it for one micro-batch: the
    profile's step module (with degradation labels and the head's extra crops when the model has a degradation
    head), backward, gradient clipping and AdamW, in the recipe's memory layout with its optimiser kernel.

    ``step(index)`` seeds the step's random choices (``self_privileged``, the ``preliminary_share`` split) with
    ``index``, so two recipes timed on the same indices do the same passes."""

    def __init__(self, model_args: dict, recipe, batch: int, patch: int, seed: int = 0) -> None:
        from sipl.models import build_model
        from sipl.training.step import build_optimizer, memory_format_of, step_module_for, to_memory_format

        torch.manual_seed(seed)
        layout = memory_format_of(recipe)
        self.model = to_memory_format(build_model(**model_args), layout)
        self.module = step_module_for(self.model, recipe)
        self.optimizer = build_optimizer(self.model, recipe)
        self.clip = recipe.grad_clip or float("inf")
        generator = torch.Generator().manual_seed(seed)

        def images(count: int) -> torch.Tensor:
            return torch.rand(count, 3, patch, patch, generator=generator).contiguous(memory_format=layout)

        self.lq, self.gt = images(batch), images(batch)
        classes = len(getattr(self.model, "degradation_classes", None) or [])
        self.labels = torch.arange(batch) % classes if classes else None
        extra = recipe.head_samples * batch if classes else 0
        self.head_batch = (images(extra), images(extra), torch.arange(extra) % classes) if extra else None

    def loss(self, index: int) -> torch.Tensor:
        """The step's total loss (forward only)."""
        generator = torch.Generator().manual_seed(index)
        return self.module(self.lq, self.gt, generator, self.labels, self.head_batch)["loss"]

    def __call__(self, index: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(index).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()

    def flops(self, index: int) -> int:
        """FLOPs of the step's forward + backward: torch's FlopCounterMode (convolutions, matmuls), with the
        convolution backward counted by ``conv_backward_flops`` and CPU attention, which torch leaves out, by
        ``attention_flops`` / ``attention_backward_flops``. Elementwise work and norms are not counted."""
        from torch.utils.flop_counter import FlopCounterMode

        aten = torch.ops.aten
        mapping = {aten.convolution_backward: conv_backward_flops,
                   aten._scaled_dot_product_flash_attention_for_cpu: attention_flops,
                   aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward_flops}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            self.loss(index).backward()
        self.model.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def time_steps(steps: dict[str, TrainerStep], repeats: int = 7) -> dict[str, dict[str, list[float]]]:
    """Seconds of ``repeats`` steps of each of ``steps``, the recipes taking turns step by step (so a slow spell of
    a shared machine hits all of them) after one warm-up round; per name ``{"wall": [...], "cpu": [...]}`` (the
    process's CPU time, which the machine's other load does not inflate)."""
    out = {name: {"wall": [], "cpu": []} for name in steps}
    for index in range(repeats + 1):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step(index)
            if index:
                out[name]["wall"].append(time.perf_counter() - wall)
                out[name]["cpu"].append(time.process_time() - cpu)
    return out


def _concurrent_steps(model_args: dict, recipe, batch: int, patch: int, steps: int, keep_memory: bool, barrier,
                      results) -> None:
    """One process of ``concurrent_scaling``: times ``steps`` SIPL training steps after ``barrier``."""
    from sipl.training.allocator import keep_freed_memory

    torch.set_num_threads(1)
    if keep_memory:
        keep_freed_memory()
    step = TrainerStep(model_args, recipe, batch, patch)
    times = []
    for i in range(-2, steps):  # two warm-up steps
        if i == 0:
            barrier.wait()
        tic = time.perf_counter()
        # the same step-seeded choices in every process, so each does identical work
        step(max(i, 0))
        times.append(time.perf_counter() - tic)
    results.put(sum(times[2:]))


def concurrent_scaling(model_args: dict, recipe, batch: int, patch: int, steps: int = 20,
                       keep_memory: bool = True) -> dict[str, float]:
    """Seconds per SIPL step in 1 process alone and in 2 processes at once, and the throughput ratio 2 processes /
    1 process (2.0 = no contention between the cores); ``keep_memory`` as ``ray.keep_freed_memory``."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    seconds = {}
    for count in (1, 2):
        barrier, results = context.Barrier(count), context.Queue()
        workers = [context.Process(target=_concurrent_steps,
                                   args=(model_args, recipe, batch, patch, steps, keep_memory, barrier, results))
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
        import warnings

        import torch.distributed as dist

        # as RaySession: depthwise-conv gradients have other strides than DDP's buckets (a copy, not an error)
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        if not dist.is_initialized():
            return module
        return torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=find_unused_parameters)

    def report(self, metrics, checkpoint_dir):
        pass


def _ddp_rank(rank: int, world: int, port: int, spec: dict, results) -> None:
    import torch.distributed as dist

    from sipl.training.loop import train_worker

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
            "checkpoint_every": 10 ** 6, "log_every": steps, "loader_workers": loader_workers,
            # throughput does not depend on where the weights start; the stand-in tasks would not fit the shipped head
            "init_weights": None})
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

    from sipl.training.launcher import make_spec

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
    """samples/s of ``sipl.training.launcher.fit`` for each ``(workers, global batch)`` of ``runs``, in that order
    (same params and steps otherwise; each Ray worker gets one CPU, one torch thread and ``loader_workers`` DataLoader
    processes)."""
    import shutil

    import ray

    from sipl.training.launcher import fit

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
    parser.add_argument("--step-repeats", type=int, default=7,
                        help="timed steps per recipe in the step comparison (the recipes take turns)")
    parser.add_argument("--train-override", type=json.loads, default={},
                        help='JSON object of keys of the profile\'s train block to change for every part, e.g. '
                             '\'{"channels_last": false, "fused_optimizer": false}\' for the reference layout and '
                             'optimiser in the Ray runs too')
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray scaling measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from sipl.config import load_params, parse_params
    from sipl.training.allocator import keep_freed_memory

    params = load_params(args.params)
    if args.train_override:
        raw = params.model_dump(mode="json")
        raw["profiles"][raw["profile"]]["train"].update(args.train_override)
        params = parse_params(raw, source="--train-override")
    cfg, model_cfg = params.train, params.model
    batch = max(1, cfg.global_batch // 2)
    figures: dict[str, object] = {"profile": params.profile, "patch": cfg.patch, "worker_batch": batch,
                                  "head_crops": cfg.head_samples * batch if model_cfg.degradation_head else 0,
                                  "channels_last": cfg.channels_last, "fused_optimizer": cfg.fused_optimizer,
                                  "keep_freed_memory": params.ray.keep_freed_memory,
                                  "cpu_count": os.cpu_count(), "torch": torch.__version__,
                                  "load_average": list(os.getloadavg())}

    torch.set_num_threads(1)
    if params.ray.keep_freed_memory:  # as the training workers do
        keep_freed_memory()
    sipl_args = model_cfg.build_arguments(sipl=True, tasks=list(params.tasks))
    plain_args = model_cfg.build_arguments(sipl=False, tasks=list(params.tasks))
    reference = cfg.model_copy(update=REFERENCE_RECIPE)
    steps = {"sipl": TrainerStep(sipl_args, cfg, batch, cfg.patch),
             "plain": TrainerStep(plain_args, cfg, batch, cfg.patch),
             "sipl_reference": TrainerStep(sipl_args, reference, batch, cfg.patch)}
    timed = time_steps(steps, args.step_repeats)
    median = {name: {kind: statistics.median(values) for kind, values in times.items()}
              for name, times in timed.items()}
    figures["sipl_step_s"] = median["sipl"]["wall"]
    figures["plain_step_s"] = median["plain"]["wall"]
    figures["sipl_over_plain"] = median["sipl"]["wall"] / median["plain"]["wall"]
    figures["sipl_step_cpu_s"] = median["sipl"]["cpu"]
    figures["plain_step_cpu_s"] = median["plain"]["cpu"]
    figures["sipl_over_plain_cpu"] = median["sipl"]["cpu"] / median["plain"]["cpu"]
    figures["reference_step_s"] = median["sipl_reference"]["wall"]
    figures["reference_step_cpu_s"] = median["sipl_reference"]["cpu"]
    figures["reference_over_sipl_cpu"] = median["sipl_reference"]["cpu"] / median["sipl"]["cpu"]
    # the step's FLOPs depend on its seeded choices: averaged over the timed indices
    flops = statistics.mean(steps["sipl"].flops(index) for index in range(1, args.step_repeats + 1))
    matmul = matmul_gflops(1)
    figures["sipl_step_gflop"] = flops / 1e9
    figures["train_gflops_1thread"] = flops / median["sipl"]["wall"] / 1e9
    figures["train_gflops_1thread_cpu"] = flops / median["sipl"]["cpu"] / 1e9
    figures["reference_gflops_1thread_cpu"] = flops / median["sipl_reference"]["cpu"] / 1e9
    figures["matmul_gflops_1thread"] = matmul["wall"]
    figures["matmul_gflops_1thread_cpu"] = matmul["cpu"]
    figures["train_fraction_of_matmul"] = figures["train_gflops_1thread"] / matmul["wall"]
    figures["train_fraction_of_matmul_cpu"] = figures["train_gflops_1thread_cpu"] / matmul["cpu"]
    figures["reference_fraction_of_matmul_cpu"] = figures["reference_gflops_1thread_cpu"] / matmul["cpu"]

    figures.update(concurrent_scaling(sipl_args, cfg, batch, cfg.patch, args.concurrent_steps,
                                      params.ray.keep_freed_memory))

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
    load = ", ".join(f"{value:.2f}" for value in figures["load_average"])
    print(f"profile {params.profile}: {model_cfg.backbone}/{model_cfg.size}, patch {cfg.patch}, "
          f"worker batch {batch} (+ {figures['head_crops']} head crops), channels_last {cfg.channels_last}, "
          f"fused AdamW {cfg.fused_optimizer}, keep_freed_memory {params.ray.keep_freed_memory}, "
          f"{os.cpu_count()} CPUs, load average at start {load}")
    print(f"  trainer step (forward, backward, clipping, AdamW), 1 thread, median of {args.step_repeats}, wall / CPU: "
          f"SIPL {figures['sipl_step_s'] * 1e3:.0f} / {figures['sipl_step_cpu_s'] * 1e3:.0f} ms, plain "
          f"{figures['plain_step_s'] * 1e3:.0f} / {figures['plain_step_cpu_s'] * 1e3:.0f} ms (SIPL/plain "
          f"{figures['sipl_over_plain']:.2f}x / {figures['sipl_over_plain_cpu']:.2f}x, goal <= 2x)")
    print(f"  reference SIPL step (N×C×H×W, AdamW loop), same run: {figures['reference_step_s'] * 1e3:.0f} / "
          f"{figures['reference_step_cpu_s'] * 1e3:.0f} ms -> this recipe's step takes "
          f"{1 / figures['reference_over_sipl_cpu']:.2f}x its CPU time")
    print(f"  SIPL step: {figures['sipl_step_gflop']:.2f} GFLOP -> {figures['train_gflops_1thread']:.1f} GFLOP/s wall, "
          f"{figures['train_gflops_1thread_cpu']:.1f} per CPU second (reference "
          f"{figures['reference_gflops_1thread_cpu']:.1f}); matmul {figures['matmul_gflops_1thread']:.1f} wall, "
          f"{figures['matmul_gflops_1thread_cpu']:.1f} CPU -> {100 * figures['train_fraction_of_matmul']:.0f} % wall, "
          f"{100 * figures['train_fraction_of_matmul_cpu']:.0f} % CPU (reference "
          f"{100 * figures['reference_fraction_of_matmul_cpu']:.0f} %; goal >= 40 %)")
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
              f"{figures['speedup_2_workers']:.2f}x (goal >= 1.8x)")
        print(f"  same global batch {2 * batch}: 1 worker {figures['samples_per_s_1_worker_global_batch']:.1f} "
              f"-> 2 workers (median) {figures['speedup_2_workers_same_global_batch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
