"""Cost of SIPL per backbone and size on CPU: parameters, MACs and wall time, as ratios to the plain forward pass.

    python benchmarks/model.py                       # every backbone, tiny and paper, 256×256, 1 thread
    python benchmarks/model.py --sizes tiny --quick  # a couple of minutes on 2 cores
    python benchmarks/model.py --json out.json       # also write the table
    python benchmarks/model.py --macs-only           # MAC ratios only (meta device, seconds, any size)
    python benchmarks/model.py --overrides '{"dict_sizes": [32, 32, 16]}'   # a lighter fusion variant

Measured per backbone/size (batch 1, fixed threads, median of ``--repeats`` runs after one warm-up; the cases are
timed round-robin so that load from other processes spreads over all of them):
plain forward; one SIPL pass (dictionary-only, i.e. refinement step 0); refinement steps 0..3 under each scheme;
training steps (forward + backward, batch ``--train-batch`` of ``--train-px`` patches) of the plain model and of SIPL:
the official recipe (privileged features from the no-grad restoration of the ground truth; preliminary_weight 0),
with our preliminary loss on every sample (one more decoder pass) or on a share of the batch inside the one pass
(``preliminary_share`` 0.5), and the same three with privileged features taken from the ground truth itself
(``privileged_source: ground_truth``). MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (convs and
matmuls; inference cases only, see ``measure``).
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
from sipl.models.refine import refine


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def macs(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


TRAIN_CASES = {  # name: training_step keyword arguments
    "train_sipl_w0": {"preliminary_weight": 0.0},
    "train_sipl_w0.5": {"preliminary_weight": 0.5},
    "train_sipl_w0.5_share": {"preliminary_weight": 0.5, "preliminary_share": 0.5},
    "train_sipl_gt_w0": {"preliminary_weight": 0.0, "privileged_source": "ground_truth"},
    "train_sipl_gt_w0.5": {"preliminary_weight": 0.5, "privileged_source": "ground_truth"},
    "train_sipl_gt_w0.5_share": {"preliminary_weight": 0.5, "privileged_source": "ground_truth",
                                 "preliminary_share": 0.5},
}


def measure(backbone: str, size: str, px: int, repeats: int, steps: int, macs_only: bool = False,
            train_px: int = 128, train_batch: int = 2, overrides: dict | None = None,
            training: bool = True) -> dict[str, float]:
    torch.manual_seed(0)
    device = torch.device("meta" if macs_only else "cpu")  # meta: shapes only, MACs in seconds at any size
    with device:
        plain = build_model(backbone, size, sipl=False)
        sipl = build_model(backbone, size, sipl=True, **(overrides or {}))
    x = torch.rand(1, 3, px, px, generator=torch.Generator().manual_seed(0)).to(device)
    patches = torch.rand(2, train_batch, 3, train_px, train_px, generator=torch.Generator().manual_seed(1))

    def infer(model):
        model.eval()
        return lambda: model(x)

    def chain(scheme):
        return lambda: list(refine(sipl, x, steps, scheme=scheme))

    def train(model, **kwargs):
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            generator = torch.Generator().manual_seed(0)  # the same split of the batch in every repeat
            model.training_step(patches[0], patches[1], l1, generator=generator, **kwargs)["loss"].backward()
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
    }
    if training:
        cases["train_plain"] = train(plain)
        cases.update({name: train(sipl, **kwargs) for name, kwargs in TRAIN_CASES.items()})
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
    for name in TRAIN_CASES if training else ():
        row[f"{name}_vs_train_plain"] = row[f"{name}_s"] / row["train_plain_s"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated (default: all)")
    parser.add_argument("--sizes", default="tiny,paper", help="comma-separated tiny,small,paper")
    parser.add_argument("--px", type=int, default=256, help="square input side (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="refinement steps 0..K (default 3)")
    parser.add_argument("--train-px", type=int, default=128, help="training patch side (default 128, the paper's)")
    parser.add_argument("--train-batch", type=int, default=2, help="training batch (default 2; >= 2 for the share)")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--macs-only", action="store_true", help="count MACs on the meta device, no timing (fast)")
    parser.add_argument("--overrides", type=json.loads, default=None,
                        help='SIPL model arguments, JSON (e.g. \'{"dict_sizes": [32, 32, 16]}\')')
    parser.add_argument("--no-train", action="store_true", help="inference cases only")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    results = {}
    timing = "MACs only" if args.macs_only else f"median of {repeats}"
    print(f"# torch {torch.__version__}, {args.threads} threads, {args.px}x{args.px} batch 1 (inference), "
          f"{args.train_px}x{args.train_px} batch {args.train_batch} (training), {timing}"
          + (f", SIPL overrides {json.dumps(args.overrides)}" if args.overrides else ""))
    print(f"{'model':<18}{'params M (plain/sipl)':>22}{'plain GMAC':>11}{'plain s':>9}{'sipl pass':>10}"
          f"{'anch 0..K':>10}{'offi 0..K':>10}")
    train_header = "".join(f"{name.removeprefix('train_sipl_'):>15}" for name in TRAIN_CASES)
    for size in args.sizes.split(","):
        for backbone in args.backbones.split(","):
            row = measure(backbone, size, args.px, repeats, args.steps, args.macs_only, args.train_px,
                          args.train_batch, args.overrides, not args.no_train)
            results[f"{backbone}/{size}"] = row
            k = args.steps
            name = f"{backbone}/{size}"
            params = f"{row['params_plain_M']:>10.3f} / {row['params_sipl_M']:<9.3f}{row['plain_forward_GMAC']:>11.2f}"
            mac_ratios = (f"{row['sipl_pass_mac_x']:>9.2f}x{row[f'anchored_0..{k}_mac_x']:>9.2f}x"
                          f"{row[f'official_0..{k}_mac_x']:>9.2f}x")
            if args.macs_only:
                print(f"{name:<18}{params}{'-':>9}{mac_ratios}  (MAC ratios)", flush=True)
                continue
            print(f"{name:<18}{params}{row['plain_forward_s']:>9.3f}{row['sipl_pass_x']:>9.2f}x"
                  f"{row[f'anchored_0..{k}_x']:>9.2f}x{row[f'official_0..{k}_x']:>9.2f}x")
            print(f"{'  (MAC ratios)':<60}{mac_ratios}")
            if args.no_train:
                continue
            print(f"{'  train step / plain step':<26}{train_header}   (plain step {row['train_plain_s']:.3f} s)")
            print(f"{'':<26}" + "".join(f"{row[f'{case}_vs_train_plain']:>14.2f}x" for case in TRAIN_CASES),
                  flush=True)
    if args.json:
        with open(args.json + ".tmp", "w") as handle:
            json.dump(results, handle, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
