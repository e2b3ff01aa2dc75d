"""GPU benchmark, one prepared script (standalone; needs only this repository and its dependencies):

1. paper-profile training steps/s with bf16 autocast at global batch 32 / patch 128 on one GPU (the SIPL step:
   privileged pass + fused pass + dictionary-only pass, AdamW, gradient clipping), with gradient accumulation as
   the fallback when the full batch does not fit;
2. peak GPU memory of that step (torch.cuda.max_memory_allocated);
3. refinement chain time per 256×256 image for each scheme (``official``, ``anchored``), steps 0..K.

Usage: ``python benchmarks/gpu.py`` (``--json`` for JSON only; ``--smoke`` runs a tiny configuration on whatever
device is present, for checking the script itself on CPU). Prints one JSON document at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model_cfg: dict, global_batch: int, micro_batch: int, patch: int, steps: int, warmup: int,
                device: torch.device, bf16: bool) -> dict:
    """Steps/s and peak memory of optimiser steps of ``global_batch`` (micro-batches of ``micro_batch``)."""
    from sipl.losses import l1
    from sipl.models import build_model

    torch.manual_seed(0)
    model = build_model(**model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.999))
    accumulation = global_batch // micro_batch
    lq = torch.rand(micro_batch, 3, patch, patch, device=device)
    gt = torch.rand(micro_batch, 3, patch, patch, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        _sync(device)
        tic = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accumulation):
            with autocast:
                loss = model.training_step(lq, gt, l1, preliminary_weight=0.5)["loss"]
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - tic)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    step_s = sorted(times)[len(times) // 2]
    return {"global_batch": global_batch, "micro_batch": micro_batch, "accumulation": accumulation,
            "patch": patch, "bf16": bf16 and device.type == "cuda", "step_s": step_s, "steps_per_s": 1 / step_s,
            "samples_per_s": global_batch / step_s, "peak_memory_gib": peak,
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}


def refine_times(model_cfg: dict, side: int, max_steps: int, repeats: int, device: torch.device,
                 bf16: bool) -> dict:
    """Seconds per image for the refinement chain 0..max_steps, per scheme (batch 1, inference mode)."""
    from sipl.models import build_model
    from sipl.refine import refine

    torch.manual_seed(0)
    model = build_model(**model_cfg).to(device).eval()
    x = torch.rand(1, 3, side, side, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    out = {}
    for scheme in ("official", "anchored"):
        per_step: dict[int, list[float]] = {}
        for repeat in range(repeats + 1):
            _sync(device)
            tic = time.perf_counter()
            with autocast:
                for step, _ in refine(model, x, max_steps, scheme=scheme):
                    _sync(device)
                    if repeat:
                        per_step.setdefault(step, []).append(time.perf_counter() - tic)
        out[scheme] = {str(k): sorted(v)[len(v) // 2] for k, v in per_step.items()}
    return {"side": side, "cumulative_s_by_step": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model and sizes (checks the script on CPU)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.smoke:
        model_cfg = {"backbone": "nafnet", "size": "tiny", "sipl": True, "width": 8}
        global_batch, patch, side, steps, warmup = 4, 32, 64, 2, 1
    else:
        model_cfg = {"backbone": "promptir", "size": "paper", "sipl": True}
        global_batch, patch, side, steps, warmup = 32, 128, 256, args.steps, 3
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "model": model_cfg, "train": []}
    micro = global_batch
    while micro >= 1:
        try:
            result["train"].append(train_steps(model_cfg, global_batch, micro, patch, steps, warmup, device, True))
            break
        except torch.OutOfMemoryError as error:
            result["train"].append({"global_batch": global_batch, "micro_batch": micro,
                                    "error": f"out of memory: {str(error).splitlines()[0]}"})
            torch.cuda.empty_cache()
            micro //= 2
    result["refine"] = refine_times(model_cfg, side, 3, 3 if not args.smoke else 1, device, True)
    if not args.json:
        for row in result["train"]:
            if "error" in row:
                print(f"train global batch {row['global_batch']} as micro-batch {row['micro_batch']}: {row['error']}")
            else:
                peak = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "n/a"
                print(f"train {model_cfg['backbone']}/{model_cfg['size']} global batch {row['global_batch']} "
                      f"({row['accumulation']} x {row['micro_batch']}), patch {row['patch']}, bf16 {row['bf16']}: "
                      f"{row['steps_per_s']:.2f} steps/s, {row['samples_per_s']:.1f} samples/s, peak {peak}")
        for scheme, times in result["refine"]["cumulative_s_by_step"].items():
            print(f"refine {scheme} {side}x{side}: " + ", ".join(f"step {k}: {v * 1e3:.1f} ms" for k, v in times.items()))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
