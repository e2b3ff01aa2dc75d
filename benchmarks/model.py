"""Cost of SIPL per backbone and size on CPU: parameters, MACs and wall time, as ratios to the plain forward pass.

    python benchmarks/model.py                       # every backbone, tiny and paper, 256×256, 1 thread
    python benchmarks/model.py --sizes tiny --quick  # a couple of minutes on 2 cores
    python benchmarks/model.py --json out.json       # also write the table
    python benchmarks/model.py --macs-only           # MAC ratios only (meta device, seconds, any size)

Measured per backbone/size (batch 1, fixed threads, median of ``--repeats`` runs after one warm-up; the cases are
timed round-robin so that load from other processes spreads over all of them):
plain forward; one SIPL pass (dictionary-only, i.e. refinement step 0); refinement steps 0..3 under each scheme;
a training step (forward + backward) of the plain model, of SIPL with the official recipe (preliminary_weight=0) and
with our preliminary loss (0.5). MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (convs and matmuls;
inference cases only, see ``measure``).
Goals: anchored 0..3 <= 4.5 plain forwards, official <= 7.5; SIPL training step <= 1.3× plain (<= 1.8× with the
preliminary loss).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from sipl.models import BACKBONES, build_model
from sipl.refine import refine


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def macs(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def measure(backbone: str, size: str, px: int, repeats: int, steps: int, macs_only: bool = False) -> dict[str, float]:
    torch.manual_seed(0)
    device = torch.device("meta" if macs_only else "cpu")  # meta: shapes only, MACs in seconds at any size
    with device:
        plain, sipl = build_model(backbone, size, sipl=False), build_model(backbone, size, sipl=True)
    x = torch.rand(1, 3, px, px, generator=torch.Generator().manual_seed(0)).to(device)
    gt = torch.rand(1, 3, px, px, generator=torch.Generator().manual_seed(1)).to(device)

    def infer(model):
        model.eval()
        return lambda: model(x)

    def chain(scheme):
        return lambda: list(refine(sipl, x, steps, scheme=scheme))

    def train(model, weight):
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            model.training_step(x, gt, l1, preliminary_weight=weight)["loss"].backward()
        return step

    def nograd(fn):
        def run():
            with torch.inference_mode():
                fn()
        return run

    cases = {
        "plain_forward": nograd(infer(plain)),
        "sipl_pass": nograd(infer(sipl)),
        "anchored_0..%d" % steps: chain("anchored"),
        "official_0..%d" % steps: chain("official"),
        "train_plain": train(plain, 0.0),
        "train_sipl_w0": train(sipl, 0.0),
        "train_sipl_w0.5": train(sipl, 0.5),
    }
    row: dict[str, float] = {
        "params_plain_M": sum(p.numel() for p in plain.parameters()) / 1e6,
        "params_sipl_M": sum(p.numel() for p in sipl.parameters()) / 1e6,
    }
    # Training steps are timed only: FlopCounterMode (torch 2.13) counts a grouped conv's backward as if it were
    # dense (65× for a 64-channel depthwise 3×3), which makes backward MACs meaningless for these networks.
    counted = [name for name in cases if not name.startswith("train")]
    for name in counted:
        row[f"{name}_GMAC"] = macs(cases[name]) / 1e9
    for name in counted:
        row[f"{name}_mac_x"] = row[f"{name}_GMAC"] / row["plain_forward_GMAC"]
    if macs_only:
        return row
    for fn in cases.values():
        fn()  # warm-up
    # Round-robin over the cases so that load from other processes spreads evenly over them.
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        row[f"{name}_s"] = statistics.median(values)
        row[f"{name}_min_s"] = min(values)
    for name in cases:
        row[f"{name}_x"] = row[f"{name}_s"] / row["plain_forward_s"]
    row["train_sipl_w0_vs_train_plain"] = row["train_sipl_w0_s"] / row["train_plain_s"]
    row["train_sipl_w0.5_vs_train_plain"] = row["train_sipl_w0.5_s"] / row["train_plain_s"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated (default: all)")
    parser.add_argument("--sizes", default="tiny,paper", help="comma-separated tiny,small,paper")
    parser.add_argument("--px", type=int, default=256, help="square input side (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="refinement steps 0..K (default 3)")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--macs-only", action="store_true", help="count MACs on the meta device, no timing (fast)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    results = {}
    timing = "MACs only" if args.macs_only else f"median of {repeats}"
    print(f"# torch {torch.__version__}, {args.threads} threads, {args.px}x{args.px}, batch 1, {timing}")
    header = (f"{'model':<18}{'params M (plain/sipl)':>22}{'plain GMAC':>11}{'plain s':>9}{'sipl pass':>10}"
              f"{'anch 0..K':>10}{'offi 0..K':>10}{'train sipl/plain':>17}{'w/ prelim':>10}")
    print(header)
    for size in args.sizes.split(","):
        for backbone in args.backbones.split(","):
            row = measure(backbone, size, args.px, repeats, args.steps, args.macs_only)
            results[f"{backbone}/{size}"] = row
            k = args.steps
            if args.macs_only:
                print(f"{backbone + '/' + size:<18}{row['params_plain_M']:>10.3f} / {row['params_sipl_M']:<9.3f}"
                      f"{row['plain_forward_GMAC']:>11.2f}{'-':>9}{row['sipl_pass_mac_x']:>9.2f}x"
                      f"{row[f'anchored_0..{k}_mac_x']:>9.2f}x{row[f'official_0..{k}_mac_x']:>9.2f}x"
                      f"{'-':>17}{'-':>10}  (MAC ratios)", flush=True)
                continue
            print(f"{backbone + '/' + size:<18}{row['params_plain_M']:>10.3f} / {row['params_sipl_M']:<9.3f}"
                  f"{row['plain_forward_GMAC']:>11.2f}{row['plain_forward_s']:>9.3f}"
                  f"{row['sipl_pass_x']:>9.2f}x{row[f'anchored_0..{k}_x']:>9.2f}x{row[f'official_0..{k}_x']:>9.2f}x"
                  f"{row['train_sipl_w0_vs_train_plain']:>16.2f}x{row['train_sipl_w0.5_vs_train_plain']:>9.2f}x")
            print(f"{'  (MAC ratios)':<51}{row['sipl_pass_mac_x']:>9.2f}x{row[f'anchored_0..{k}_mac_x']:>9.2f}x"
                  f"{row[f'official_0..{k}_mac_x']:>9.2f}x", flush=True)
    if args.json:
        with open(args.json + ".tmp", "w") as handle:
            json.dump(results, handle, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
