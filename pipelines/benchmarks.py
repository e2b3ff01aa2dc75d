"""`sipl benchmarks` (the stage before evaluation): the field benchmark sets of params ``benchmarks`` -> test shards.

Writes ``data/benchmarks/{name}/`` per set and ``data/benchmarks/index.json`` (also for ``benchmarks: []``).
"""

from __future__ import annotations

import argparse
import sys

from sipl import env

env.apply_quiet_defaults()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/benchmarks", help="output folder (default: data/benchmarks)")


def run(args: argparse.Namespace) -> int:
    import time

    from sipl.config import load_params
    from sipl.data.benchmarks import build_sets

    def say(message: str) -> None:
        print(f"sipl benchmarks: {message}", file=sys.stderr, flush=True)

    params = load_params(args.params)
    started = time.perf_counter()
    index = build_sets(params, args.out, say=say)
    say(f"{len(index['sets'])} set(s) in {args.out}/ ({time.perf_counter() - started:.1f} s)")
    return 0
