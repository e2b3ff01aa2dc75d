"""Training: the per-worker loop (``train_worker``) and the Ray Train launcher (``fit``).

The loop is the same with or without Ray: ``train_worker(spec, rank, world, session)`` where ``session`` provides
checkpoint restore/report and model wrapping. ``RaySession`` maps them to ``ray.train.get_checkpoint`` /
``ray.train.report`` / ``ray.train.torch.prepare_model`` (DDP); ``LocalSession`` keeps checkpoints in a folder and
is what the fast tests and the benchmarks use.

DDP: ``training_step`` runs several passes (privileged encoder pass without gradients, dictionary-only pass,
fused pass), so the model is wrapped in ``_StepModule`` whose ``forward`` *is* the training step; DDP then sees one
forward per micro-batch and all-reduces the gradients in backward (``find_unused_parameters`` on, because plain
mode or a zero preliminary weight leaves parameters without gradients).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sipl.atomic_files import write_json_atomic, write_text_atomic
from sipl.errors import SiplError
from sipl.models.files import save_model
from sipl.seeding import derive_seed
from sipl.training.checkpoint import export_weights, load_training_state, save_training_state

log = logging.getLogger("sipl.train")

LOSS_PREFIX = "loss"


def _loss_column(term: str) -> str:
    return "loss" if term == "loss" else f"loss_{term}"


# ---------------------------------------------------------------------------------------------- the step

class _StepModule(torch.nn.Module):
    """Routes ``forward(lq, gt)`` to ``model.training_step`` so a DDP wrapper all-reduces its gradients."""

    def __init__(self, model: torch.nn.Module, pixel_loss: Callable, **step_options: Any):
        """``step_options``: keyword arguments of ``SIPLModel.training_step`` (ignored by plain models)."""
        super().__init__()
        self.model = model
        self.pixel_loss = pixel_loss
        self.step_options = step_options

    def forward(self, lq: torch.Tensor, gt: torch.Tensor, generator: torch.Generator | None = None,
                labels: torch.Tensor | None = None,
                head_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``head_batch``: (lq, gt, labels) crops that train only the degradation head."""
        options = self.step_options
        degradation_weight = options.get("degradation_weight", 0.0)
        head_affine = options.get("affine_weight", 0.0)
        if not getattr(self.model, "sipl", False):
            out = self.model.training_step(lq, gt, self.pixel_loss, labels=labels,
                                           degradation_weight=degradation_weight, affine_weight=head_affine)
        else:
            out = self.model.training_step(lq, gt, self.pixel_loss, generator=generator, labels=labels, **options)
        if head_batch is not None:
            # computed even at zero weights: the classifier then stays in the graph, as DDP expects of every
            # parameter the unused-parameter probe saw used
            terms = self.model.head_step(*head_batch, self.pixel_loss, degradation_weight, head_affine)
            out.update(terms)
            out["loss"] = out["loss"] + terms["head_loss"]
        return out


def step_module_for(model: torch.nn.Module, cfg) -> _StepModule:
    """The training step of a ``sipl.config.TrainConfig`` recipe (loss terms and SIPL step options) for ``model``."""
    from sipl.training.losses import from_config

    return _StepModule(model, from_config(cfg.loss), preliminary_weight=cfg.loss.preliminary,
                       random_proxy=cfg.random_proxy, self_privileged=cfg.self_privileged,
                       privileged_source=cfg.privileged_source, preliminary_share=cfg.preliminary_share,
                       degradation_weight=cfg.loss.degradation, affine_weight=cfg.loss.head_affine)


def memory_format_of(cfg) -> torch.memory_format:
    """The memory layout a ``TrainConfig`` trains in: ``torch.channels_last`` or ``torch.contiguous_format``."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def to_memory_format(model: torch.nn.Module, memory_format: torch.memory_format) -> torch.nn.Module:
    """Put every 4-D parameter and buffer of ``model`` in ``memory_format``, in place (``Module.to`` refuses
    channels_last for a model that also holds 5-D parameters, such as PromptIR's prompts); returns ``model``."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=memory_format)
    return model


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """The recipe's AdamW (``lr``, ``betas``, ``weight_decay``); ``fused_optimizer`` selects torch's fused kernel,
    which updates every parameter in one pass instead of a Python loop of small ops per tensor."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             fused=bool(cfg.fused_optimizer) or None)


def degradation_labels(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor | None:
    """Class index (into ``model.degradation_classes``) of every sample of a batch: ``"clean"`` for identity pairs
    (keys ending in ``#clean``), else the sample's task; None when the model has no degradation head."""
    from sipl.config import CLEAN_CLASS

    classes = list(getattr(model, "degradation_classes", None) or [])
    if not classes:
        return None
    index = {name: i for i, name in enumerate(classes)}
    missing = [field for field in ("keys", "tasks") if field not in batch]
    if missing:
        raise SiplError(f"a batch for a model with a degradation head needs {missing} (the loader's sample keys "
                        "and task names)")
    try:
        return torch.tensor([index[CLEAN_CLASS if key.endswith("#clean") else task]
                             for key, task in zip(batch["keys"], batch["tasks"])], dtype=torch.long)
    except KeyError as error:
        raise SiplError(f"training sample of task {error} has no class in the model's degradation head "
                        f"({classes}); the model was built for other tasks") from None


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
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    model_params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


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


def accumulate_gradients(wrapped: torch.nn.Module, batches: list[dict[str, Any]], device: torch.device,
                         autocast=None, step_seed: int | None = None,
                         memory_format: torch.memory_format = torch.channels_last) -> dict[str, float]:
    """Forward/backward over the micro-batches of one optimiser step; gradients accumulate in ``.grad``.

    Each micro-batch loss is divided by the number of micro-batches, so the gradient is that of the mean loss over
    the worker's batch; DDP (if ``wrapped`` is one) all-reduces only on the last micro-batch. Returns the mean of
    each loss term (floats).

    ``step_seed``: every micro-batch of every rank draws the step's random choices (``self_privileged``, the
    ``preliminary_share`` split, ``random_proxy``) from a generator seeded with it. The same draw everywhere keeps
    the ranks' step costs equal (an independent draw per rank makes the fast rank wait at the all-reduce) and
    keeps one worker × accumulation equal to several workers; ``None`` uses torch's global generator.

    ``memory_format``: the layout the images are handed to the model in (the model's own, ``memory_format_of``)."""
    from sipl.data.loader import to_float

    def images(key: str) -> torch.Tensor:
        return to_float(batch[key], device).contiguous(memory_format=memory_format)

    terms: dict[str, float] = {}
    count = len(batches)
    for index, batch in enumerate(batches):
        lq, gt = images("lq"), images("gt")
        last = index == count - 1
        sync = wrapped.no_sync() if not last and hasattr(wrapped, "no_sync") else contextlib.nullcontext()
        with sync:
            generator = torch.Generator().manual_seed(step_seed) if step_seed is not None else None
            inner = _inner_model(wrapped)
            labels = degradation_labels(inner, batch)
            head_batch = None
            if "head_lq" in batch:
                head_labels = degradation_labels(inner, {"keys": [""] * len(batch["head_labels"]),
                                                         "tasks": batch["head_labels"]})
                head_batch = (images("head_lq"), images("head_gt"), head_labels)
            with autocast or contextlib.nullcontext():
                out = wrapped(lq, gt, generator, labels, head_batch)
            (out["loss"] / count).backward()
        for name, value in out.items():
            terms[name] = terms.get(name, 0.0) + float(value.detach()) / count
    return terms


def _inner_model(wrapped: torch.nn.Module) -> torch.nn.Module:
    """The restoration model inside a step module, DDP-wrapped or not."""
    inner = getattr(wrapped, "module", wrapped)
    return getattr(inner, "model", inner)


def unused_parameters(step_module: _StepModule, device: torch.device, side: int = 32) -> list[str]:
    """Names of parameters that get no gradient from one training step (DDP must be told about them).

    Probed on two random side×side samples; gradients are cleared afterwards and the torch RNG state is kept."""
    rng_state = torch.get_rng_state()
    probe = torch.rand(2, 2, 3, side, side, device=device)  # 2 samples: preliminary_share needs a split
    step_module.model.zero_grad(set_to_none=True)
    step_module(probe[0], probe[1])["loss"].backward()
    unused = [name for name, p in step_module.model.named_parameters() if p.requires_grad and p.grad is None]
    step_module.model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng_state)
    return unused


# --------------------------------------------------------------------------------------------- sessions

class LocalSession:
    """Single-process session: checkpoints are folders ``{directory}/checkpoint_{step:08d}``; keeps the newest
    ``keep``. Used by tests and benchmarks (and it is what ``train_worker`` sees with one local process)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep
        self.reports: list[dict[str, Any]] = []

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.directory.glob("checkpoint_*"))
        return found[-1] if found else None

    def restore(self, load: Callable[[str], dict]) -> dict | None:
        latest = self.latest_checkpoint()
        return load(str(latest)) if latest else None

    def prepare(self, module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        return module

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"checkpoint_{int(metrics['step']):08d}"
        staging = self.directory / f".{final.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_dir, staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in sorted(self.directory.glob("checkpoint_*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class RaySession:
    """Session inside a Ray Train worker."""

    def restore(self, load: Callable[[str], dict]) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load(directory)

    def prepare(self, module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        import warnings

        import ray.train.torch

        # Depthwise-conv gradients have other strides than DDP's buckets: a copy, not an error.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters})

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


# ------------------------------------------------------------------------------------------ worker loop

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


def _say(message: str) -> None:
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

    torch.manual_seed(params.seed)
    memory_format = memory_format_of(cfg)
    model = to_memory_format(build_model(**model_cfg.build_arguments(tasks=list(params.tasks))).to(device),
                             memory_format)
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
            _say(f"resuming from step {info['step']}")
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
                _say(f"{message}")
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
                _say(f"step {step}/{total} {losses} lr {lr:.2e} {speed:.1f} samples/s "
                      f"ETA {_format_eta(eta)}")
        if rank == 0 and val_sets and (step % cfg.val_every == 0 or is_last):
            state["val"] = validate(eval_model, val_sets, device)
            row = row or {"step": step}
            row["val_psnr"] = float(np.mean([v["psnr"] for v in state["val"].values()]))
            row["val_input_psnr"] = float(np.mean([v["input_psnr"] for v in state["val"].values()]))
            _say(f"val step {step}: " + ", ".join(
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


# ---------------------------------------------------------------------------------------- driver side

def fingerprint(params, train_urls: dict[str, list[str]], manifest: dict | None) -> str:
    """Short hash of everything that defines a run's optimisation: model, train recipe, seed, tasks, train data
    (the manifest's shard checksums). The worker count is not part of it: the global batch fixes the recipe."""
    data = {}
    for task in sorted(train_urls):
        entry = (manifest or {}).get("splits", {}).get("train", {}).get(task, {})
        data[task] = [s.get("sha256") or s.get("name") for s in entry.get("shards", [])]
    payload = {"model": params.model.model_dump(mode="json"), "train": params.train.model_dump(mode="json"),
               "seed": params.seed, "data": data}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def make_spec(params, *, stop_at_step: int | None = None, pid_dir: str | None = None,
              num_workers: int | None = None) -> dict[str, Any]:
    """Check the shards and derive everything the workers need (raises SiplError before any worker starts)."""
    from dataclasses import asdict

    from sipl.data.loader import check_shards, task_weights
    from sipl.data.shards import is_remote, read_manifest
    from sipl.training.schedule import batch_plan

    from sipl.models.registry import check_arguments

    cfg = params.train
    try:  # before Ray starts: an unknown override would otherwise fail inside every worker
        check_arguments(params.model.backbone, params.model.size, params.model.overrides)
    except ValueError as error:
        raise SiplError(f"{params.source} profiles.{params.profile}.model.overrides: {error}") from None
    workers = num_workers or params.ray.num_workers
    plan = batch_plan(cfg.global_batch, workers, cfg.max_worker_batch, params.profile)
    if cfg.preliminary_share is not None and cfg.loss.preliminary > 0 and plan.micro_batch < 2:
        raise SiplError(f"profiles.{params.profile}.preliminary_share={cfg.preliminary_share} splits each worker "
                        f"batch between the dictionary-only and the fused path, but a worker batch here is "
                        f"{plan.micro_batch} sample(s) ({cfg.global_batch} global, {workers} workers): raise "
                        f"profiles.{params.profile}.global_batch or max_worker_batch, or set preliminary_share: null")
    # Ray workers do not run in the driver's working directory: hand them absolute local shard paths.
    root = params.shards.root if is_remote(params.shards.root) else str(Path(params.shards.root).resolve())
    manifest = read_manifest(root)
    tasks = list(params.tasks)
    train_urls = check_shards(root, tasks, "train", manifest=manifest)
    val_urls = check_shards(root, tasks, "val", required=False, manifest=manifest)
    weights = task_weights({t: params.tasks[t].family for t in tasks}, cfg.task_weights)
    threads = params.ray.threads_per_worker or max(1, int(params.ray.cpus_per_worker))
    task_steps = ({t: params.tasks[t].model_dump(mode="json")["steps"] for t in tasks}
                  if cfg.fresh_degradations else None)
    return {"params": params.model_dump(mode="json"), "train_urls": train_urls, "val_urls": val_urls,
            "task_steps": task_steps,
            "weights": weights, "plan": asdict(plan), "fingerprint": fingerprint(params, train_urls, manifest),
            "threads": threads, "steps": cfg.steps, "stop_at_step": stop_at_step, "pid_dir": pid_dir}


def _ray_entry(spec: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer."""
    from sipl.env import apply_quiet_defaults

    apply_quiet_defaults()
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    _say(f"rank {context.get_world_rank()}/{context.get_world_size()} on node "
         f"{ray.get_runtime_context().get_node_id()}")
    train_worker(spec, context.get_world_rank(), context.get_world_size(), RaySession(),
                 device=ray.train.torch.get_device())


def ray_temp_dir(project_dir: str | os.PathLike) -> str:
    """Ray's temp dir: ``.ray/tmp`` under the project, unless that path is too long for Ray's Unix sockets
    (``{temp}/session_<date>_<pid>/sockets/plasma_store`` must stay under 107 bytes); then a short per-user
    folder in the system temp directory."""
    candidate = Path(project_dir, ".ray", "tmp").resolve()
    if len(str(candidate)) <= 40:
        return str(candidate)
    return str(Path(tempfile.gettempdir(), f"sipl-ray-{os.getuid()}"))


def ensure_ray(params, project_dir: str | os.PathLike = ".") -> bool:
    """Connect to ``RAY_ADDRESS`` if set, else start a local instance sized for the run; True when this call
    started or connected (the caller then shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    from sipl.raylogs import quiet_driver_logs

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        quiet_driver_logs()
        return True
    need = math.ceil(params.ray.num_workers * params.ray.cpus_per_worker)
    temp_dir = ray_temp_dir(project_dir)
    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=max(need, os.cpu_count() or 1), include_dashboard=False, _temp_dir=temp_dir,
             log_to_driver=True)
    quiet_driver_logs()
    return True


def storage_for(storage_path: str, project_dir: str | os.PathLike = ".") -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: an absolute local path, or for ``s3://`` a pyarrow
    filesystem wrapping s3fs (so endpoint and credentials come from the same environment as the shards)."""
    if storage_path.startswith("s3://"):
        import pyarrow.fs
        import s3fs

        # The endpoint travels inside the (pickled) filesystem: Ray's controller and workers use it too.
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        s3 = s3fs.S3FileSystem(endpoint_url=endpoint) if endpoint else s3fs.S3FileSystem()
        filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(s3))
        return storage_path[len("s3://"):].rstrip("/"), filesystem
    return str(Path(project_dir, storage_path).resolve()), None


def fit(params, *, project_dir: str | os.PathLike = ".", stop_at_step: int | None = None,
        pid_dir: str | None = None) -> dict[str, Any]:
    """Run the TorchTrainer for ``params`` and export the result; returns the summary (``metrics/train.json``).

    Resumes automatically: the Ray run is named ``{ray.run_name}-{fingerprint}``, so the same params find the
    same run in ``ray.storage_path`` and Ray Train hands its latest checkpoint to the workers."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = make_spec(params, stop_at_step=stop_at_step, pid_dir=pid_dir)
    started = ensure_ray(params, project_dir)
    try:
        storage_path, filesystem = storage_for(params.ray.storage_path, project_dir)
        run_name = f"{params.ray.run_name}-{spec['fingerprint']}"
        _say(f"run {run_name} in {params.ray.storage_path}: {params.ray.num_workers} worker(s), "
              f"global batch {spec['plan']['global_batch']} = {params.ray.num_workers} x "
              f"{spec['plan']['accumulation']} x {spec['plan']['micro_batch']}")
        trainer = TorchTrainer(
            train_loop_per_worker=_ray_entry,
            train_loop_config=spec,
            scaling_config=ScalingConfig(num_workers=params.ray.num_workers, use_gpu=params.ray.use_gpu,
                                         resources_per_worker={"CPU": params.ray.cpus_per_worker}),
            run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=filesystem,
                                 failure_config=FailureConfig(max_failures=params.ray.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=params.train.keep_checkpoints)),
        )
        try:
            result = trainer.fit()
        except Exception as error:  # Ray wraps worker errors (TrainingFailedError); surface the cause
            raise SiplError(f"training run {run_name} failed: {_root_message(error)}") from None
        metrics = dict(result.metrics or {})
        if metrics.get("failed"):
            raise SiplError(f"training run {run_name}: {metrics['failed']}")
        if result.checkpoint is None:
            raise SiplError(f"training run {run_name} produced no checkpoint")
        if stop_at_step is not None and int(metrics.get("step", 0)) < params.train.steps:
            return {"stopped_at": int(metrics.get("step", 0))}
        with result.checkpoint.as_directory() as directory:
            return export(directory, Path(project_dir), params)
    finally:
        if started:
            import ray

            ray.shutdown()


def _root_message(error: BaseException) -> str:
    """The message of the first ``SiplError`` raised in a worker, from Ray's wrapped error text. Only lines of the
    form ``...SiplError: message`` count: the traceback also quotes source lines that construct a SiplError."""
    text = str(error)
    for line in text.splitlines():
        if "SiplError:" in line:
            return line.split("SiplError:", 1)[-1].strip()
    return text.strip().splitlines()[-1] if text.strip() else type(error).__name__


def export(checkpoint_dir: str | os.PathLike, out_dir: Path, params) -> dict[str, Any]:
    """From a final training checkpoint write ``models/``, ``metrics/train.json`` and ``plots/train.csv``
    under ``out_dir`` (each atomically); returns the summary."""
    from sipl.models import build_model

    weights, info = export_weights(checkpoint_dir)
    summary = info.get("summary") or summary_of(info, Throughput(), float(info.get("wall_s", 0.0)), time.perf_counter())
    model = build_model(**info["model_config"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise SiplError(f"checkpoint {checkpoint_dir} does not fit the model that the current code builds from "
                        f"{info['model_config']} ({str(error).splitlines()[1].strip() if chr(10) in str(error) else error}); "
                        "the model code changed since training: retrain (change ray.run_name or remove the run "
                        "folder under ray.storage_path)") from None
    save_model(model, out_dir / "models", {
        "profile": info.get("profile", params.profile), "fingerprint": info.get("fingerprint"),
        "weights": "ema" if info.get("has_ema") else "model",
        "training": {k: v for k, v in summary.items() if k != "val"}, "val": summary.get("val", {}),
        "train_config": params.train.model_dump(mode="json"), "tasks": sorted(params.tasks)})
    write_json_atomic(out_dir / "metrics" / "train.json", summary)
    write_text_atomic(out_dir / "plots" / "train.csv", history_csv(info.get("history", [])))
    return summary


def history_csv(history: list[dict[str, Any]]) -> str:
    """CSV text (header + one row per logged step): step, each loss, lr, val_psnr, val_input_psnr."""
    columns = ["step"]
    for row in history:
        for key in row:
            if key not in columns:
                columns.append(key)
    columns = ["step"] + sorted(c for c in columns if c.startswith(LOSS_PREFIX)) + \
        [c for c in ("lr", "val_psnr", "val_input_psnr") if c in columns]
    lines = [",".join(columns)]
    for row in history:
        lines.append(",".join("" if row.get(c) is None else f"{row[c]:.6g}" for c in columns))
    return "\n".join(lines) + "\n"
