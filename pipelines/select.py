"""`sipl select` (stage 4): choose the refinement scheme and step count on validation.

Reads only ``metrics/eval_steps.json`` (seconds); writes ``metrics/eval.json``, ``metrics/benchmarks.json`` (every
benchmark set at the setting chosen on validation; ``{"sets": {}}`` without sets) and ``models/selection.json`` (with
the degradation head's confidence gate when the evaluation scored it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sipl import env

env.apply_quiet_defaults()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps-file", default="metrics/eval_steps.json", help="output of `sipl evaluate`")
    parser.add_argument("--metrics", default="metrics/eval.json", help="where to write the test metrics")
    parser.add_argument("--benchmarks-metrics", default=None,
                        help="where to write the benchmark sets' metrics (default: benchmarks.json beside --metrics)")
    parser.add_argument("--model", default="models", help="model folder that receives selection.json")


def run(args: argparse.Namespace) -> int:
    from sipl.atomic_files import write_json_atomic
    from sipl.config import load_params
    from sipl.errors import SiplError
    from sipl.evaluation import selection

    params = load_params(args.params)
    steps_file = Path(args.steps_file)
    try:
        eval_steps = json.loads(steps_file.read_text())
    except FileNotFoundError:
        raise SiplError(f"{steps_file}: not found; run `sipl evaluate` (or `dvc repro evaluate`) first") from None
    except ValueError as error:
        raise SiplError(f"{steps_file}: not valid JSON ({error}); re-run `sipl evaluate`") from None
    if not isinstance(eval_steps, dict) or "splits" not in eval_steps:
        raise SiplError(f"{steps_file}: not an evaluation file (no 'splits'); re-run `sipl evaluate`")

    from sipl.outputs import writable_file

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise SiplError(f"{model_dir}: no model folder; run `sipl train` first")
    try:
        chosen = selection.select(eval_steps, params.refine_steps, scheme=params.refine.scheme,
                                  schemes=list(params.refine.schemes), min_gain_db=params.refine.min_gain_db)
        document = selection.eval_metrics(eval_steps, chosen)
        benchmark_document = selection.benchmark_metrics(eval_steps, chosen)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        what = f"key {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise SiplError(f"{steps_file}: not the content `sipl evaluate` writes ({what}); re-run `sipl evaluate`"
                        ) from None
    benchmarks_path = args.benchmarks_metrics or Path(args.metrics).with_name("benchmarks.json")
    for option, path in (("--metrics", args.metrics), ("--benchmarks-metrics", benchmarks_path)):
        writable_file(path, option)  # all checked before the first is written
    write_json_atomic(args.metrics, document)
    write_json_atomic(benchmarks_path, benchmark_document)
    write_json_atomic(model_dir / "selection.json", selection.selection_file(chosen))
    all_group = document["groups"]["all"]
    print(f"sipl select: {chosen['scheme']} x {chosen['steps']} step(s) ({chosen['criterion']}); "
          f"{document['split']} PSNR {all_group['psnr']:.2f} dB (step 0 {all_group['step0_psnr']:.2f}, input "
          f"{all_group['input_psnr']:.2f}); per family {chosen['per_family']}", file=sys.stderr)
    if "affine_min_confidence" in chosen:
        gate, scored = chosen["affine_min_confidence"], eval_steps["affine_gate"].get("applied")
        print(f"sipl select: head confidence gate {gate} (the model's own: {chosen['affine_gate']['model']}); val "
              f"PSNR of step 0 by gate {chosen['affine_gate']['val_psnr']}", file=sys.stderr)
        if scored != str(gate):
            print(f"sipl select: warning: {steps_file} was scored with the gate {scored}, not {gate}; its test and "
                  "benchmark numbers are not what `sipl restore` runs: re-run `sipl evaluate`", file=sys.stderr)
    for name, entry in benchmark_document["sets"].items():
        if "all" in entry["groups"]:
            group = entry["groups"]["all"]
            print(f"sipl select: benchmark {name}: PSNR {group['psnr']:.2f} dB (step 0 {group['step0_psnr']:.2f}, "
                  f"input {group['input_psnr']:.2f})", file=sys.stderr)
    return 0
