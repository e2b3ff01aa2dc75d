"""GPU benchmark, one prepared script for a GPU machine (needs only this repository, torch, PyYAML, pydantic and
safetensors; no data, no Ray).

Measures, for a profile of ``params.yaml`` (default ``paper``: PromptIR at the paper size):

1. training steps/s at the profile's global batch and patch with bf16 autocast (the profile's ``bf16``), using the
   trainer's own step (``sipl.training.step.step_module_for``, ``accumulate_gradients``, AdamW, gradient clipping,
   EMA), for the plain backbone, the profile's SIPL recipe and the cheaper ``ground_truth`` + ``preliminary_share``
   recipe; when a global batch does not fit, it halves the micro-batch and accumulates (as the trainer does with
   ``max_worker_batch``) and says so;
2. peak GPU memory of each (``torch.cuda.max_memory_allocated``);
3. the refinement chain's cumulative time per 256×256 image for steps 0..K under each scheme, next to the plain
   backbone's forward and one SIPL pass of the same run (ratios as in ``benchmarks/model.py``).

Usage: ``python benchmarks/gpu.py [--profile paper] [--steps 10] [--out result.json]``; ``--smoke`` shrinks
everything to the ``tiny`` profile at toy sizes so the script can be checked on a CPU. Prints a table, then one JSON
document (also written to ``--out``, atomically, after every section so that a run cut short keeps what it has).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def train_recipe(model_args: dict, recipe, global_batch: int, micro_batch: int, patch: int, steps: int,
                 warmup: int, device: torch.device, bf16: bool) -> dict:
    """Median time of optimiser steps of ``global_batch`` samples split into micro-batches of ``micro_batch``.

    ``recipe`` is a ``sipl.config.profiles.TrainConfig``; inputs are random uint8 patches (N×patch×patch×3) fed
    through the trainer's own conversion, so the step is the trainer's step minus data loading."""
    from sipl.models import build_model
    from sipl.training.step import (accumulate_gradients, build_optimizer, ema_update, memory_format_of,
                                    step_module_for, to_memory_format)

    torch.manual_seed(0)
    memory_format = memory_format_of(recipe)
    model = to_memory_format(build_model(**model_args).to(device), memory_format)
    ema = copy.deepcopy(model).requires_grad_(False) if recipe.ema_decay else None
    optimizer = build_optimizer(model, recipe)
    step_module = step_module_for(model, recipe)
    generator = torch.Generator().manual_seed(0)
    batches = [{"lq": torch.randint(0, 256, (micro_batch, patch, patch, 3), dtype=torch.uint8, generator=generator),
                "gt": torch.randint(0, 256, (micro_batch, patch, patch, 3), dtype=torch.uint8, generator=generator)}
               for _ in range(global_batch // micro_batch)]
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    classes = list(getattr(model, "degradation_classes", None) or [])
    if classes:  # a degradation head trains on each sample's class and, with head_samples, on extra crops
        extra = recipe.head_samples * micro_batch
        for batch in batches:
            batch.update(keys=[str(i) for i in range(micro_batch)],
                         tasks=[classes[i % len(classes)] for i in range(micro_batch)])
            if extra:
                crops = torch.randint(0, 256, (2, extra, patch, patch, 3), dtype=torch.uint8, generator=generator)
                batch.update(head_lq=crops[0].to(device), head_gt=crops[1].to(device),
                             head_labels=[classes[i % len(classes)] for i in range(extra)])
    use_bf16 = bf16 and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        _sync(device)
        tic = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        terms = accumulate_gradients(step_module, batches, device, autocast, memory_format=memory_format)
        if recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        if ema is not None:
            ema_update(ema, model, recipe.ema_decay)
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - tic)
    step_s = _median(times)
    return {"global_batch": global_batch, "micro_batch": micro_batch, "accumulation": global_batch // micro_batch,
            "patch": patch, "bf16": use_bf16, "step_s": step_s, "steps_per_s": 1 / step_s,
            "samples_per_s": global_batch / step_s,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "final_loss_terms": {k: round(v, 5) for k, v in terms.items()}}


def train_with_fallback(model_args: dict, recipe, global_batch: int, micro_batch: int, **kwargs) -> list[dict]:
    """``train_recipe``, halving the micro-batch on out-of-memory; every attempt is one row."""
    rows = []
    while micro_batch >= 1:
        try:
            rows.append(train_recipe(model_args, recipe, global_batch, micro_batch, **kwargs))
            return rows
        except torch.OutOfMemoryError as error:
            rows.append({"global_batch": global_batch, "micro_batch": micro_batch,
                         "error": f"out of memory: {str(error).splitlines()[0]}"})
            torch.cuda.empty_cache()
            micro_batch //= 2
    return rows


@torch.inference_mode()
def inference_times(model_args: dict, side: int, max_steps: int, repeats: int, device: torch.device,
                    bf16: bool) -> dict:
    """Seconds per 1×3×side×side image: plain backbone forward, one SIPL pass, and the cumulative time of the
    refinement chain after each step 0..max_steps per scheme (medians of ``repeats`` after one warm-up)."""
    from sipl.models import build_model
    from sipl.models.refine import refine

    torch.manual_seed(0)
    sipl_model = build_model(**{**model_args, "sipl": True}).to(device).eval()
    plain_model = build_model(**{**model_args, "sipl": False}).to(device).eval()
    x = torch.rand(1, 3, side, side, device=device)
    use_bf16 = bf16 and device.type == "cuda"

    def timed(fn) -> float:
        samples = []
        for repeat in range(repeats + 1):
            _sync(device)
            tic = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                fn()
            _sync(device)
            if repeat:
                samples.append(time.perf_counter() - tic)
        return _median(samples)

    privileged = sipl_model.encode_privileged(x)
    out = {"side": side, "bf16": use_bf16, "plain_forward_s": timed(lambda: plain_model(x)),
           "sipl_pass_s": timed(lambda: sipl_model(x, privileged=privileged)), "chain_cumulative_s": {}}
    for scheme in ("official", "anchored"):
        per_step: dict[int, list[float]] = {}
        for repeat in range(repeats + 1):
            _sync(device)
            tic = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                for step, _ in refine(sipl_model, x, max_steps, scheme=scheme):
                    _sync(device)
                    if repeat:
                        per_step.setdefault(step, []).append(time.perf_counter() - tic)
        out["chain_cumulative_s"][scheme] = {str(k): _median(v) for k, v in per_step.items()}
    return out


def restore_speed(model_args: dict, height: int, width: int, device: torch.device, engine: str = "auto") -> dict:
    """Seconds per megapixel of ``sipl.restore.restore_array`` (the `sipl restore` path: default tiles, the
    ``--device`` engine of ``sipl.models.runtime``) on one synthetic height×width photo: step 0 and the chains
    0..3 of both schemes (untrained weights: speed does not depend on them)."""
    import numpy as np

    from sipl.models import build_model
    from sipl.models.runtime import for_inference
    from sipl.restore import choose_tile, restore_array

    torch.manual_seed(0)
    runner = for_inference(build_model(**model_args), engine, device.type)
    image = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    restore_array(runner, image[:256, :256], 0, "anchored", None)  # warm-up
    figures = {"size": [height, width]}
    for steps, scheme in ((0, "anchored"), (3, "anchored"), (3, "official")):
        _sync(device)
        start = time.perf_counter()
        restore_array(runner, image, steps, scheme, choose_tile(height, width, None))
        _sync(device)
        seconds = time.perf_counter() - start
        figures[f"{scheme} 0..{steps}" if steps else "step 0"] = {
            "seconds": round(seconds, 3), "s_per_mp": round(seconds / (height * width / 1e6), 4)}
    if device.type == "cuda":
        figures["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 1024**3, 3)
    return figures


def _write(result: dict, path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)


def _print_table(result: dict) -> None:
    for name, rows in result["train"].items():
        for row in rows:
            if "error" in row:
                print(f"train {name:<22} batch {row['global_batch']} as micro-batch {row['micro_batch']}: "
                      f"{row['error']}")
                continue
            peak = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "n/a"
            print(f"train {name:<22} batch {row['global_batch']} ({row['accumulation']}x{row['micro_batch']}) "
                  f"patch {row['patch']} bf16 {row['bf16']}: {row['steps_per_s']:.2f} steps/s "
                  f"{row['samples_per_s']:.1f} samples/s  peak {peak}")
    inference = result.get("inference")
    if inference:
        plain = inference["plain_forward_s"]
        print(f"inference {inference['side']}² bf16 {inference['bf16']}: plain forward {plain * 1e3:.1f} ms, "
              f"SIPL pass {inference['sipl_pass_s'] / plain:.2f}x")
        for scheme, times in inference["chain_cumulative_s"].items():
            print(f"  {scheme:<9} " + ", ".join(f"0..{k}: {v * 1e3:.1f} ms ({v / plain:.2f}x)"
                                                 for k, v in times.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--profile", default="paper", choices=["tiny", "small", "paper"])
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps per recipe (after 3 warm-up)")
    parser.add_argument("--side", type=int, default=256, help="image side for the inference timings")
    parser.add_argument("--max-steps", type=int, default=3, help="refinement steps 0..K")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each inference measurement")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny profile at toy sizes (checks the script on CPU)")
    args = parser.parse_args()

    from sipl.config import load_params

    params = load_params(args.params)
    profile = params.profiles["tiny" if args.smoke else args.profile]
    model_cfg, recipe = profile.model, profile.train
    global_batch, patch, side, steps, warmup, repeats = (recipe.global_batch, recipe.patch, args.side, args.steps, 3,
                                                         args.repeats)
    if args.smoke:
        global_batch, patch, side, steps, warmup, repeats = 4, 32, 48, 2, 1, 1
    micro_batch = min(global_batch, recipe.max_worker_batch or global_batch)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "profile": "tiny" if args.smoke else args.profile,
                    "model": model_cfg.build_arguments(tasks=list(params.tasks)), "train": {}, "inference": None}
    recipes = {
        "plain": (model_cfg.build_arguments(sipl=False, tasks=list(params.tasks)), recipe),
        f"sipl {recipe.privileged_source}": (model_cfg.build_arguments(tasks=list(params.tasks)), recipe),
        "sipl ground_truth+share": (model_cfg.build_arguments(tasks=list(params.tasks)),
                                    recipe.model_copy(update={"privileged_source": "ground_truth",
                                                              "preliminary_share": 0.5})),
    }
    for name, (model_args, step_recipe) in recipes.items():
        result["train"][name] = train_with_fallback(model_args, step_recipe, global_batch, micro_batch, patch=patch,
                                                    steps=steps, warmup=warmup, device=device, bf16=recipe.bf16)
        _write(result, args.out)
        print(f"[{time.strftime('%H:%M:%S')}] train {name} done", flush=True)
    result["inference"] = inference_times(model_cfg.build_arguments(tasks=list(params.tasks)), side, args.max_steps, repeats, device,
                                          recipe.bf16)
    _write(result, args.out)
    # `sipl restore --device cuda` on a 12 MP photo (a 96×128 toy in --smoke), for every profile's model.
    restore_size = (96, 128) if args.smoke else (3000, 4000)
    result["restore"] = {}
    for name in (["tiny"] if args.smoke else ["tiny", "small", "paper"]):
        result["restore"][name] = restore_speed(params.profiles[name].model.build_arguments(tasks=list(params.tasks)),
                                                *restore_size, device,
                                                "eager" if args.smoke else "auto")
        _write(result, args.out)
        print(f"[{time.strftime('%H:%M:%S')}] restore {name} done: {result['restore'][name]}", flush=True)
    _print_table(result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
