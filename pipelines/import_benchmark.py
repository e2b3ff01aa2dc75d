"""``sipl import-benchmark KIND DIR``: convert a paired benchmark folder into test shards."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from sipl.data.benchmark_import import KINDS

    parser.add_argument("kind", choices=sorted(KINDS), help="benchmark layout")
    parser.add_argument("directory", help="the benchmark's folder")
    parser.add_argument("-o", "--out", default=None, help="shard root (default: data/imported/KIND; s3:// ok)")
    parser.add_argument("--sigma", type=int, nargs="+", default=[15, 25, 50], help="noise levels (cbsd68/kodak)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthesised noise")
    parser.add_argument("--skip-unpaired", action="store_true", help="convert the valid pairs, list the rest")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="image files with more pixels count as unreadable, before decoding (default: Pillow's "
                             "limit, about 89.5 million)")


def run(args: argparse.Namespace) -> int:
    from sipl.config import load_params
    from sipl.data.benchmark_import import import_benchmark

    from pathlib import Path

    from sipl.data.imageio import DEFAULT_MAX_PIXELS
    from sipl.errors import SiplError

    if args.max_pixels is not None and args.max_pixels < 1:
        raise SiplError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    params = load_params(args.params) if Path(args.params).is_file() else None
    encoding = params.shards.encoding if params else "npy"
    out = args.out or f"data/imported/{args.kind}"  # data/benchmarks/ belongs to the benchmarks stage
    manifest = import_benchmark(args.kind, args.directory, out, sigmas=args.sigma, seed=args.seed,
                                encoding=encoding, skip_unpaired=args.skip_unpaired,
                                max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    for task, entry in manifest["splits"]["test"].items():
        print(f"{task:<16} {entry['samples']:>6} pairs  {len(entry['shards'])} shard(s)")
    if manifest["skipped"]:
        print(f"{manifest['skipped']} file(s) skipped; see {out}/skipped.json")
    print(f"wrote {out}/manifest.json")
    return 0
