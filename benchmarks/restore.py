"""Benchmark `sipl restore` on one large image: wall time and peak resident memory of the CLI process.

    python benchmarks/restore.py [--size 2048] [--steps 1] [--model DIR] [--limit-gib 2]

Without --model an untrained model of the tiny profile is exported to a temporary folder (speed and memory do not
depend on the weights). The restore runs as a child process, so its peak RSS is measured alone (ru_maxrss of the
children). Exits 1 when the peak exceeds --limit-gib.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_image(size: int, path: Path) -> None:
    """A smooth colour field plus noise: a stand-in for a large degraded photo."""
    from sipl.imageio import write_png_atomic

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                     0.5 + 0.5 * np.sin(8 * np.pi * ramp)[None, :].repeat(size, 0)], axis=-1)
    noisy = base + rng.normal(0, 0.1, base.shape).astype(np.float32)
    write_png_atomic((np.clip(noisy, 0, 1) * 255).astype(np.uint8), path)


def export_tiny_model(directory: Path) -> None:
    import torch

    from sipl.checkpoint import save_model
    from sipl.models import build_model

    torch.manual_seed(0)
    save_model(build_model("nafnet", "tiny", sipl=True), directory, {"note": "untrained benchmark model"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--scheme", default="anchored")
    parser.add_argument("--tile", type=int, default=None, help="passed to sipl restore (default: its auto policy)")
    parser.add_argument("--model", default=None, help="exported model folder (default: an untrained tiny model)")
    parser.add_argument("--limit-gib", type=float, default=2.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sipl-bench-restore-"))
    try:
        model_dir = Path(args.model) if args.model else work / "models"
        if not args.model:
            export_tiny_model(model_dir)
        image = work / "in" / "large.png"
        make_image(args.size, image)
        sipl_cli = Path(sys.executable).parent / "sipl"
        command = [str(sipl_cli) if sipl_cli.exists() else "sipl", "restore", str(image), "-o", str(work / "out"),
                   "--model", str(model_dir), "--steps", str(args.steps), "--scheme", args.scheme, "--no-progress",
                   "--params", str(work / "no-params.yaml")]
        if args.tile is not None:
            command += ["--tile", str(args.tile)]
        start = time.perf_counter()
        completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux
        if completed.returncode != 0:
            print(completed.stderr, file=sys.stderr)
            print(f"sipl restore failed with exit code {completed.returncode}", file=sys.stderr)
            return 1
        result = {"benchmark": "restore", "size": [args.size, args.size], "steps": args.steps,
                  "scheme": args.scheme, "tile": args.tile if args.tile is not None else "auto",
                  "wall_s": round(wall, 2), "peak_rss_gib": round(peak_gib, 3), "limit_gib": args.limit_gib}
        print(json.dumps(result))
        return 0 if peak_gib <= args.limit_gib else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
