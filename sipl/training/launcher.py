"""The driver side of training: check the shards and plan the run, run Ray Train, export the result.

``make_spec`` checks the shards and derives everything the workers need (before any worker starts); ``fit`` starts
or joins Ray and runs the ``TorchTrainer`` whose workers each run ``sipl.training.loop.train_worker``; ``export``
writes ``models/``, ``metrics/train.json`` and ``plots/train.csv`` from the final checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from sipl.atomic_files import write_json_atomic, write_text_atomic
from sipl.errors import SiplError
from sipl.models.files import save_model
from sipl.training.checkpoint import export_weights
from sipl.training.loop import LOSS_PREFIX, Throughput, say, summary_of, train_worker
from sipl.training.sessions import RaySession


def fingerprint(params, train_urls: dict[str, list[str]], manifest: dict | None) -> str:
    """Short hash of everything that defines a run's optimisation: model, train recipe, seed, tasks, train data
    (the manifest's shard checksums). The worker count is not part of it: the global batch fixes the recipe."""
    from sipl.data.shards import train_entries

    data = {}
    entries = train_entries(manifest or {}, sorted(train_urls))
    for task in sorted(train_urls):
        entry = entries[task] or {}
        data[task] = [s.get("sha256") or s.get("name") for s in entry.get("shards", [])]
    payload = {"model": params.model.model_dump(mode="json"), "train": params.train.model_dump(mode="json"),
               "seed": params.seed, "data": data}
    if params.train.init_weights is not None:  # the bytes, not the path, define where the run starts
        from sipl.training.init_weights import weights_digest

        payload["train"]["init_weights"] = weights_digest(params.train.init_weights, _init_key(params))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def _init_key(params) -> str:
    return f"{params.source} profiles.{params.profile}.train.init_weights"


def _checked_init_weights(params) -> str | None:
    """The absolute path of ``train.init_weights`` (Ray workers do not run in this folder), after checking the file
    against the model the profile builds; None when training starts from scratch."""
    if params.train.init_weights is None:
        return None
    from sipl.models import build_model
    from sipl.training.init_weights import read_initial_weights, weights_file

    key = _init_key(params)
    path = weights_file(params.train.init_weights, key).resolve()
    read_initial_weights(path, build_model(**params.model.build_arguments(tasks=list(params.tasks))), key)
    return str(path)


def make_spec(params, *, stop_at_step: int | None = None, pid_dir: str | None = None,
              num_workers: int | None = None) -> dict[str, Any]:
    """Check the shards and derive everything the workers need (raises SiplError before any worker starts)."""
    from dataclasses import asdict

    from sipl.data.loader import check_shards, task_weights
    from sipl.data.shards import clean_only_train, is_remote, read_manifest
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
    if clean_only_train(manifest) and not cfg.fresh_degradations:
        raise SiplError(f"{root}: the train shards hold clean crops only (shards.train_pairs: false), but "
                        f"profiles.{params.profile}.train.fresh_degradations is false, so nothing would degrade "
                        "them; set fresh_degradations: true, or shards.train_pairs: true and re-run `sipl synthesize`")
    tasks = list(params.tasks)
    train_urls = check_shards(root, tasks, "train", manifest=manifest)
    val_urls = check_shards(root, tasks, "val", required=False, manifest=manifest)
    init_weights = _checked_init_weights(params)
    weights = task_weights({t: params.tasks[t].family for t in tasks}, cfg.task_weights)
    threads = params.ray.threads_per_worker or max(1, int(params.ray.cpus_per_worker))
    task_steps = ({t: params.tasks[t].model_dump(mode="json")["steps"] for t in tasks}
                  if cfg.fresh_degradations else None)
    return {"params": params.model_dump(mode="json"), "train_urls": train_urls, "val_urls": val_urls,
            "task_steps": task_steps, "init_weights": init_weights,
            "weights": weights, "plan": asdict(plan), "fingerprint": fingerprint(params, train_urls, manifest),
            "threads": threads, "steps": cfg.steps, "stop_at_step": stop_at_step, "pid_dir": pid_dir}


def _ray_entry(spec: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer."""
    from sipl.env import apply_quiet_defaults

    apply_quiet_defaults()
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    say(f"rank {context.get_world_rank()}/{context.get_world_size()} on node "
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

        from sipl import storage

        # The endpoint and the retry policy (sipl.storage) travel inside the (pickled) filesystem: Ray's controller
        # and workers use them too.
        storage.configure()
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
        say(f"run {run_name} in {params.ray.storage_path}: {params.ray.num_workers} worker(s), "
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
            raise _failure(error, run_name, params) from None
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


def _failure(error: BaseException, run_name: str, params) -> SiplError:
    """The error ``sipl train`` reports for a failed Ray run: a worker's StorageError as it was raised, another
    storage failure (e.g. writing a checkpoint to ``ray.storage_path`` on S3) as a StorageError naming the endpoint
    and the run's storage, else the worker's own SiplError message (exit 2)."""
    from sipl import storage

    message = _root_message(error)
    if _raised_as(error, "StorageError"):
        return storage.StorageError(f"training run {run_name} failed: {message}")
    line = storage.failure_in_text(str(error))
    if line is not None:
        resume = ("re-run `sipl train` when the endpoint answers: the run resumes from its last checkpoint that was "
                  "written completely")
        return storage.StorageError(
            f"training run {run_name} failed: S3 endpoint {storage.endpoint()}: a storage request failed after its "
            f"retries ({line}); the run's storage is {params.ray.storage_path} and its shards {params.shards.root}; "
            f"check that the endpoint is up and reachable (AWS_ENDPOINT_URL) and the credentials, then {resume}")
    return SiplError(f"training run {run_name} failed: {message}")


def _raised_as(error: BaseException, name: str) -> bool:
    return any(line.split(":", 1)[0].strip().endswith(name) for line in str(error).splitlines() if ":" in line)


def _root_message(error: BaseException) -> str:
    """The message of the first ``SiplError`` (or ``StorageError``) raised in a worker, from Ray's wrapped error
    text. Only lines of the form ``...SiplError: message`` count (the traceback also quotes source lines that
    construct one), and not the line a DataLoader worker's error is re-raised with (``Caught X in DataLoader``)."""
    text = str(error)
    for line in text.splitlines():
        for name in ("SiplError:", "StorageError:"):
            if name in line and not line.split(name, 1)[-1].strip().startswith("Caught "):
                return line.split(name, 1)[-1].strip()
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
