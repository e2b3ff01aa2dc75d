"""``sipl train``: train the selected profile on Ray Train and export ``models/``, ``metrics/train.json`` and
``plots/train.csv``. Resumes the run with the same params automatically."""

from __future__ import annotations

import argparse
import json

from sipl.env import apply_quiet_defaults


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None,
                        help="override ray.num_workers (the global batch, hence the optimisation, stays the same)")
    parser.add_argument("--steps", type=int, default=None, help="override the profile's train.steps")
    parser.add_argument("--check", action="store_true",
                        help="only check the shards and the batch plan, start nothing")


def _with_overrides(params, args):
    raw = params.model_dump(mode="json")
    if args.workers is not None:
        raw["ray"]["num_workers"] = args.workers
    if args.steps is not None:
        raw["profiles"][params.profile]["train"]["steps"] = args.steps
    from sipl.config import parse_params

    return parse_params(raw, source=f"{args.params} (with command-line overrides)")


def run(args) -> int:
    apply_quiet_defaults()
    from sipl.config import load_params
    from sipl.training.launcher import fit, make_spec

    params = _with_overrides(load_params(args.params), args)
    from sipl.data.shards import require_bucket

    # Before any work, and never created: a typo in a bucket name must not make storage appear.
    require_bucket(params.shards.root, f"{args.params} shards.root")
    require_bucket(params.ray.storage_path, f"{args.params} ray.storage_path")
    if args.check:
        spec = make_spec(params)
        print(json.dumps({"fingerprint": spec["fingerprint"], "plan": spec["plan"], "weights": spec["weights"],
                          "train_shards": {t: len(u) for t, u in spec["train_urls"].items()}}, indent=2))
        return 0
    summary = fit(params)
    print(json.dumps({"steps": summary["steps"], "wall_s": summary["wall_s"],
                      "samples_per_s": summary["samples_per_s"], "skipped_samples": summary["skipped_samples"],
                      "val": summary["val"]}, indent=2))
    return 0
