"""``sipl synthesize``: the first DVC stage (clean sources → degraded WebDataset shards)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to the CPU count)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from sipl.config import load_params
    from sipl.data.synthesize import synthesize

    synthesize(load_params(args.params), workers=args.workers, progress=not args.no_progress)
    return 0
