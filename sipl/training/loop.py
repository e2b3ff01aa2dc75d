"""The per-worker training loop: ``train_worker(spec, rank, world, session)``, the same with or without Ray.

``session`` (``sipl.training.sessions``) provides checkpoint restore/report and model wrapping; the step itself
(``sipl.training.step``) is wrapped for DDP. Rank 0 validates (PSNR per task of the validation shards), writes the
loss history and summarises the run (``summary_of``: the content of ``metrics/train.json``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sipl.atomic_files import write_json_atomic
from sipl.errors import SiplError
from sipl.seeding import derive_seed
from sipl.training.allocator import keep_freed_memory
from sipl.training.checkpoint import load_training_state, save_training_state
from sipl.training.step import (accumulate_gradients, build_optimizer, ema_update, memory_format_of, step_module_for,
                                to_memory_format, unused_parameters)

LOSS_PREFIX = "loss"


def _loss_column(term: str) -> str:
    return "loss" if term == "loss" else f"loss_{term}"


class Throughput:
    """Training samples/s of one run, data loading included. The run's first step is left out once a second one
    exists: it fills the shuffle buffer, builds DDP's buckets and warms the thread pools, which says nothing about
    the steady rate (and on a short run would dominate it)."""

    def __init__(self) -> None:
        self.first: tuple[int, float] | None = None
        self.samples, self.seconds = 0, 0.0

    def add(self, samples: int, seconds: float) -> None:
        if self.first is None:
            self.first = (samples, seconds)
        else:
            self.samples += samples
            self.seconds += seconds

    def samples_per_s(self) -> float:
        samples, seconds = (self.samples, self.seconds) if self.seconds > 0 else (self.first or (0, 0.0))
        return samples / seconds if seconds > 0 else 0.0


@torch.no_grad()
def restore_for_validation(model: torch.nn.Module, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(step-0 output, step-1 output) for lq N×3×H×W in [0,1].

    Step 0 is the dictionary-only restoration; step 1 restores ``lq`` again with privileged features encoded from
    step 0's (clipped) output. A plain model gives its single output twice."""
    first = model(lq)
    if not getattr(model, "sipl", False):
        return first, first
    features = model.encode_privileged(first.clamp(0, 1))
    return first, model(lq, privileged=features)


def validate(model: torch.nn.Module, val_sets: dict[str, list[tuple[np.ndarray, np.ndarray]]],
             device: torch.device, batch: int = 8) -> dict[str, dict[str, float]]:
    """PSNR (RGB, clipped to [0,1]) per task: ``{"psnr"`` (step 1), ``"step0_psnr"``, ``"input_psnr"}``."""
    from sipl.evaluation.metrics import psnr

    was_training = model.training
    model.eval()
    results = {}
    for task, pairs in val_sets.items():
        if not pairs:
            continue
        scores: dict[str, list[float]] = {"psnr": [], "step0_psnr": [], "input_psnr": []}
        groups: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = {}
        for pair in pairs:
            groups.setdefault(pair[0].shape, []).append(pair)
        for group in groups.values():
            for start in range(0, len(group), batch):
                chunk = group[start:start + batch]
                lq = torch.from_numpy(np.stack([p[0] for p in chunk])).to(device).permute(0, 3, 1, 2).float() / 255
                gt = torch.from_numpy(np.stack([p[1] for p in chunk])).to(device).permute(0, 3, 1, 2).float() / 255
                step0, step1 = restore_for_validation(model, lq)
                scores["psnr"] += psnr(step1.float(), gt).tolist()
                scores["step0_psnr"] += psnr(step0.float(), gt).tolist()
                scores["input_psnr"] += psnr(lq, gt).tolist()
        results[task] = {name: float(np.mean(values)) for name, values in scores.items()}
    model.train(was_training)
    return results


def _all_reduce_sum(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _all_gather_objects(value: Any, world: int) -> list[Any]:
    if world <= 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def _param_checksum(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in model.parameters()))


def _write_progress(pid_dir: str | None, rank: int, step: int) -> None:
    if pid_dir:
        write_json_atomic(Path(pid_dir) / f"rank{rank}.json", {"pid": os.getpid(), "step": step})


def say(message: str) -> None:
    """One progress line on stdout (written directly: Ray Train's patched ``print`` would log it twice)."""
    import sys

    sys.stdout.write(f"[sipl train] {message}\n")
    sys.stdout.flush()


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_worker(spec: dict[str, Any], rank: int, world: int, session, device: torch.device | None = None) -> dict:
    """Train one rank until ``spec["steps"]`` (or ``spec["stop_at_step"]``); returns rank 0's last metrics.

    ``spec`` (JSON-able, built by ``make_spec``): ``params`` (validated params as a dict), ``train_urls`` /
    ``val_urls`` (task -> shard URLs), ``weights`` (task -> probability), ``plan`` (BatchPlan fields),
    ``fingerprint``, ``threads``, optional ``stop_at_step`` and ``pid_dir`` (test hooks). Checkpoints go through
    ``session.report`` every ``checkpoint_every`` steps and at the end; on a non-finite loss the run stops
    without saving and the metrics carry ``"failed"`` (the step and the batch's sample keys)."""
    from sipl.config import parse_params
    from sipl.data.loader import StreamConfig, load_val, train_loader
    from sipl.models import build_model
    from sipl.training.schedule import learning_rate

    params = parse_params(spec["params"], source="train spec")
    cfg, model_cfg = params.train, params.model
    plan = spec["plan"]
    device = device or torch.device("cpu")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if params.ray.keep_freed_memory:
        keep_freed_memory()

    torch.manual_seed(params.seed)
    memory_format = memory_format_of(cfg)
    model = build_model(**model_cfg.build_arguments(tasks=list(params.tasks)))
    if spec.get("init_weights"):  # checked by make_spec; a resumed run's checkpoint overrides these below
        from sipl.training.init_weights import load_initial_weights

        load_initial_weights(spec["init_weights"], model)
    model = to_memory_format(model.to(device), memory_format)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay else None
    optimizer = build_optimizer(model, cfg)

    state: dict[str, Any] = {"step": 0, "history": [], "skipped_samples": 0, "samples": 0,
                             "wall_s": 0.0, "val": {}, "resumed_from": []}
    def load(directory: str) -> dict:
        try:
            return load_training_state(directory, model=model, optimizer=optimizer, ema=ema)
        except (RuntimeError, KeyError, ValueError) as error:
            raise SiplError(f"cannot resume from checkpoint {directory}: it does not fit the current model/optimiser "
                            f"({str(error).splitlines()[0]}); change ray.run_name or remove that run's folder under "
                            "ray.storage_path to start over") from None

    info = session.restore(load)
    if info is not None:
        if info.get("fingerprint") != spec["fingerprint"]:
            raise SiplError(f"the checkpoint to resume from belongs to another configuration (fingerprint "
                            f"{info.get('fingerprint')} vs {spec['fingerprint']}); use another ray.run_name")
        state.update({k: info[k] for k in state if k in info})
        state["resumed_from"] = list(state["resumed_from"]) + [int(info["step"])]
        if rank == 0:
            say(f"resuming from step {info['step']}")
    start_step = int(state["step"])
    last_checkpoint = start_step if info is not None else None
    restored_summary = (info or {}).get("summary")

    step_module = step_module_for(model, cfg)
    wrapped = session.prepare(step_module, find_unused_parameters=bool(unused_parameters(step_module, device)))
    stream = StreamConfig(task_urls=spec["train_urls"], weights=spec["weights"], patch=cfg.patch, seed=params.seed,
                          rank=rank, world=world, start_step=start_step, shuffle_buffer=cfg.shuffle_buffer,
                          corrupt_samples=cfg.corrupt_samples, identity_share=cfg.identity_share,
                          channel_shuffle=cfg.channel_shuffle, task_steps=spec.get("task_steps"),
                          head_samples=cfg.head_samples if model_cfg.degradation_head else 0,
                          photometric=cfg.photometric, synthetic_share=cfg.synthetic_share)
    loader = train_loader(stream, plan["micro_batch"], cfg.loader_workers) if start_step < spec["steps"] else None
    val_sets = load_val(spec["val_urls"], cfg.val_max_samples) if rank == 0 else {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.bf16 and device.type == "cuda") \
        else contextlib.nullcontext()
    eval_model = ema if ema is not None else model
    total = int(spec["steps"])
    stop_at = spec.get("stop_at_step")
    accumulation = plan["accumulation"]
    window: dict[str, list[float]] = {}
    metrics: dict[str, Any] = {"step": start_step}
    wall_start = time.perf_counter()
    wall_before = float(state["wall_s"])
    throughput = Throughput()

    def save_and_report(step: int, extra: dict[str, Any]) -> None:
        checksum = _all_gather_objects(_param_checksum(model), world)
        in_sync = max(checksum) - min(checksum) <= 1e-6 * max(1.0, abs(checksum[0]))
        state["wall_s"] = wall_before + time.perf_counter() - wall_start
        report = {"step": step, "replicas_in_sync": bool(in_sync), **extra}
        if isinstance(report.get("summary"), dict):
            report["summary"]["replicas_in_sync"] = bool(in_sync)
        with tempfile.TemporaryDirectory(prefix="sipl-ckpt-") as tmp:
            checkpoint_dir = None
            if rank == 0:
                save_training_state(tmp, model=model, optimizer=optimizer, ema=ema, info={
                    **state, "step": step, "fingerprint": spec["fingerprint"], "model_config": model.config,
                    "profile": params.profile, "summary": report.get("summary")})
                checkpoint_dir = tmp
            session.report(report, checkpoint_dir)
        metrics.update(report)

    step = start_step
    step_start = time.perf_counter()
    while step < total:
        lr = learning_rate(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        tic = time.perf_counter()
        batches = [next(loader) for _ in range(accumulation)]
        terms = accumulate_gradients(wrapped, batches, device, autocast, derive_seed(params.seed, "train-step", step),
                                     memory_format)
        keys = [k for b in batches for k in b["keys"]]
        skipped = sum(b["skipped"] for b in batches)
        names = sorted(terms)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        finite = all(math.isfinite(terms[n]) for n in names) and bool(torch.isfinite(grad_norm))
        packed = torch.tensor([terms[n] if math.isfinite(terms[n]) else 0.0 for n in names]
                              + [0.0 if finite else 1.0, float(skipped)], dtype=torch.float64, device=device)
        packed = _all_reduce_sum(packed, world)
        if packed[len(names)] > 0:
            bad_keys = _all_gather_objects(keys if not finite else [], world)
            bad = sorted({k for ks in bad_keys for k in ks})
            message = (f"non-finite loss or gradient at step {step + 1} (batch samples: {', '.join(bad)}); the "
                       f"last good checkpoint is kept (step {last_checkpoint}). "
                       "Lower train.lr, set train.grad_clip, or check those samples")
            if rank == 0:
                say(f"{message}")
            session.report({"step": step, "failed": message}, None)
            metrics.update({"step": step, "failed": message})
            return metrics
        optimizer.step()
        if ema is not None:
            ema_update(ema, model, cfg.ema_decay)
        step += 1
        state["step"] = step
        state["skipped_samples"] += int(packed[len(names) + 1])
        state["samples"] += plan["global_batch"]
        throughput.add(plan["global_batch"], time.perf_counter() - tic)
        for i, name in enumerate(names):
            window.setdefault(name, []).append(float(packed[i]) / world)
        window.setdefault("lr", []).append(lr)
        _write_progress(spec.get("pid_dir"), rank, step)

        is_last = step == total or step == stop_at
        row = None
        if step % cfg.log_every == 0 or is_last or step % cfg.val_every == 0:
            row = {"step": step, **{_loss_column(n): float(np.mean(v)) for n, v in window.items() if n != "lr"},
                   "lr": window["lr"][-1]}
            window = {}
            if rank == 0:
                speed = throughput.samples_per_s()
                elapsed = time.perf_counter() - step_start
                eta = elapsed / max(1, step - start_step) * (total - step)
                losses = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(LOSS_PREFIX))
                say(f"step {step}/{total} {losses} lr {lr:.2e} {speed:.1f} samples/s "
                      f"ETA {_format_eta(eta)}")
        if rank == 0 and val_sets and (step % cfg.val_every == 0 or is_last):
            state["val"] = validate(eval_model, val_sets, device)
            row = row or {"step": step}
            row["val_psnr"] = float(np.mean([v["psnr"] for v in state["val"].values()]))
            row["val_input_psnr"] = float(np.mean([v["input_psnr"] for v in state["val"].values()]))
            say(f"val step {step}: " + ", ".join(
                f"{t} {v['psnr']:.2f} dB (input {v['input_psnr']:.2f})" for t, v in state["val"].items()))
        if row is not None and rank == 0:
            state["history"].append(row)
        if step % cfg.checkpoint_every == 0 or is_last:
            extra: dict[str, Any] = {k: v for k, v in (state["history"][-1] if state["history"] else {}).items()
                                     if k != "step"}
            if step == total:
                extra["summary"] = summary_of(state, throughput, wall_before, wall_start)
            save_and_report(step, extra)
            last_checkpoint = step
            if step == stop_at:
                return metrics
    if start_step >= total:
        # Restored a finished run: report its final state again so the driver can export it.
        fallback = summary_of(state, Throughput(), wall_before, wall_start)
        save_and_report(total, {"summary": restored_summary or fallback})
    return metrics


def summary_of(state: dict[str, Any], throughput: Throughput, wall_before: float,
               wall_start: float) -> dict[str, Any]:
    """The ``metrics/train.json`` content from the loop state (rank 0)."""
    last = next((row for row in reversed(state["history"]) if any(k.startswith(LOSS_PREFIX) for k in row)), {})
    return {
        "steps": int(state["step"]),
        "wall_s": round(wall_before + time.perf_counter() - wall_start, 3),
        "samples_per_s": round(throughput.samples_per_s(), 3),
        "skipped_samples": int(state["skipped_samples"]),
        "val": {t: {"psnr": round(v["psnr"], 4), "input_psnr": round(v["input_psnr"], 4),
                    "step0_psnr": round(v["step0_psnr"], 4)} for t, v in state["val"].items()},
        "resumed_from": list(state["resumed_from"]),
        **{k: round(v, 6) for k, v in last.items() if k.startswith(LOSS_PREFIX)},
    }
