"""`sipl report` (stage 5): write reports/index.html from the metrics and plots of the run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sipl import env

env.apply_quiet_defaults()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=".", help="folder holding metrics/ and plots/ (default: .)")
    parser.add_argument("--out", default="reports", help="report folder (default: reports)")


def run(args: argparse.Namespace) -> int:
    from sipl.evaluation.report import build_report
    from sipl.outputs import writable_dir

    writable_dir(args.out, "--out")
    params_path = Path(args.params)
    params_text = params_path.read_text() if params_path.is_file() else None
    index = build_report(Path(args.root), Path(args.out), params_text)
    print(f"sipl report: wrote {index}", file=sys.stderr)
    return 0
