"""Benchmark restoring large photos: seconds per megapixel of the ONNX Runtime path against eager PyTorch, chain
costs, peak memory, and the machine's matmul rate, all in one run.

    python benchmarks/restore.py                        # 1 MP and 12 MP, eager and onnx, step 0 and chains 0..3
    python benchmarks/restore.py --sizes 1024 --quick   # 1 MP only, step 0 and the anchored chain
    python benchmarks/restore.py --model models         # your exported model and its selected setting
    python benchmarks/restore.py --rss-megapixels 24    # also: `sipl restore` of a 24 MP image, peak RSS

Each case runs in a child process (``--case``) so that its peak resident memory (ru_maxrss) is its own: the child
loads the model, prepares the engine (ONNX graphs come from the cache, exported by a warm-up child first), restores
one synthetic image the way ``sipl restore`` does (tiles of ``sipl.restore.AUTO_TILE`` above that side) and reports
its seconds. Settings: step 0; the official and anchored chains 0..3; the model's selected setting when ``--model``
has a selection. Goals (issue "fast restoration"): step 0 <= 2.0 s/MP at 1 MP and 12 MP and >= 3x eager; chains
0..3 <= 5x step 0; a 24 MP restore at the selected setting under 2 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = {1024: (1024, 1024), 4000: (3000, 4000), 6000: (4000, 6000)}  # longest side -> (height, width)


def make_image(height: int, width: int) -> np.ndarray:
    """A smooth colour field plus noise, uint8 H×W×3: a stand-in for a large noisy photo."""
    rng = np.random.default_rng(0)
    rows, cols = np.linspace(0, 1, height, dtype=np.float32), np.linspace(0, 1, width, dtype=np.float32)
    base = np.stack([np.broadcast_to(cols[None, :], (height, width)), np.broadcast_to(rows[:, None], (height, width)),
                     0.5 + 0.5 * np.sin(8 * np.pi * cols)[None, :].repeat(height, 0)], axis=-1)
    noisy = base + rng.normal(0, 0.1, base.shape).astype(np.float32)
    return (np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def export_tiny_model(directory: Path) -> None:
    """The default profile's model shape (tiny NAFNet, SIPL, degradation head), untrained: speed and memory do not
    depend on the weights."""
    import torch

    from sipl.config import load_params
    from sipl.config.profiles import CLEAN_CLASS
    from sipl.models import build_model
    from sipl.models.files import save_model

    params = load_params(REPO / "params.yaml")
    profile = params.profiles[params.profile]
    torch.manual_seed(0)
    model = build_model(**profile.model.build_arguments(tasks=list(params.tasks)))
    save_model(model, directory, {"note": "untrained benchmark model", "classes": [CLEAN_CLASS, *params.tasks]})


def matmul_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` float32 n×n matmul rate with ``threads`` intra-op threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_case(model_dir: str, engine: str, side: int, steps: int, scheme: str, threads: int) -> dict:
    """Child process: restore one synthetic image; seconds, s/MP and this process's peak RSS."""
    import torch

    import sipl
    from sipl.models.runtime import for_inference
    from sipl.restore import choose_tile, restore_array

    torch.set_num_threads(threads)
    height, width = SIZES.get(side, (side, side))
    model, _ = sipl.load_model(model_dir)
    runner = for_inference(model, engine)
    image = make_image(height, width)
    restore_array(runner, image[:64, :64], 0, scheme, None)  # warm-up: sessions, allocator
    start, cpu_start = time.perf_counter(), time.process_time()
    restore_array(runner, image, steps, scheme, choose_tile(height, width, None))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    megapixels = height * width / 1e6
    return {"engine": engine, "size": [height, width], "steps": steps, "scheme": scheme, "seconds": round(seconds, 2),
            "s_per_mp": round(seconds / megapixels, 3), "cpu_s_per_mp": round(cpu_seconds / megapixels, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)}


def _child(model_dir: Path, engine: str, side: int, steps: int, scheme: str, threads: int) -> dict:
    command = [sys.executable, __file__, "--case", str(model_dir), engine, str(side), str(steps), scheme,
               str(threads)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"case {engine} {side} {steps} {scheme} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def restore_rss(model_dir: Path, megapixels: int, steps: str, work: Path) -> dict:
    """`sipl restore` of one synthetic photo of about ``megapixels`` MP, in a child process: wall time, peak RSS,
    and how many progress updates its tile bar wrote."""
    from sipl.data.imageio import write_png_atomic

    width = int((megapixels * 1e6 * 3 / 2) ** 0.5)
    height = int(megapixels * 1e6 / width)
    image = work / "in" / "large.png"
    write_png_atomic(make_image(height, width), image)
    sipl_cli = Path(sys.executable).parent / "sipl"
    command = [str(sipl_cli) if sipl_cli.exists() else "sipl", "restore", str(image), "-o", str(work / "out"),
               "--model", str(model_dir), "--steps", steps, "--params", str(work / "no-params.yaml")]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"sipl restore failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    updates = completed.stderr.count("tile/s]") + completed.stderr.count("s/tile]")
    return {"size": [height, width], "steps": steps, "wall_s": round(wall, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, 3),
            "progress_updates": updates}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        model_dir, engine, side, steps, scheme, threads = sys.argv[2:8]
        print(json.dumps(run_case(model_dir, engine, int(side), int(steps), scheme, int(threads))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 4000],
                        help="longest sides: 1024 (1 MP), 4000 (4000×3000, 12 MP), 6000 (24 MP)")
    parser.add_argument("--model", default=None, help="exported model folder (default: an untrained default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="step 0 and the anchored chain only")
    parser.add_argument("--eager-chains-max-side", type=int, default=1024,
                        help="time eager chains only up to this side (eager 12 MP chains take many minutes)")
    parser.add_argument("--rss-megapixels", type=int, default=0, help="also `sipl restore` a photo this large")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sipl-bench-restore-"))
    os.environ.setdefault("SIPL_CACHE_DIR", str(work / "cache"))
    figures: dict = {"threads": args.threads, "matmul_gflops": round(matmul_gflops(args.threads), 1),
                     "matmul_gflops_1thread": round(matmul_gflops(1), 1), "cases": []}
    try:
        model_dir = Path(args.model) if args.model else work / "models"
        if not args.model:
            export_tiny_model(model_dir)
        selected = None
        if (model_dir / "selection.json").is_file():
            selected = json.loads((model_dir / "selection.json").read_text())
        settings = [(0, "anchored"), (3, "anchored")] + ([] if args.quick else [(3, "official")])
        if selected and (int(selected.get("steps", 0)), selected.get("scheme")) not in settings:
            settings.append((int(selected["steps"]), selected["scheme"]))
        start = time.perf_counter()
        _child(model_dir, "onnx", 64, 0, "anchored", args.threads)  # exports the graphs into the cache
        figures["onnx_export_s"] = round(time.perf_counter() - start, 1)
        for side in args.sizes:
            for steps, scheme in settings:
                for engine in ("eager", "onnx"):
                    if engine == "eager" and steps > 0 and side > args.eager_chains_max_side:
                        continue
                    case = _child(model_dir, engine, side, steps, scheme, args.threads)
                    figures["cases"].append(case)
                    print(json.dumps(case), flush=True)
        if args.rss_megapixels:
            steps = "auto" if selected else "0"
            figures["restore_rss"] = restore_rss(model_dir, args.rss_megapixels, steps, work)
            print(json.dumps(figures["restore_rss"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmatmul: {figures['matmul_gflops']} GFLOP/s with {args.threads} threads "
          f"({figures['matmul_gflops_1thread']} with 1); onnx export (once per model): {figures['onnx_export_s']} s")
    print("s/MP: wall seconds per megapixel (CPU seconds of all threads in brackets: steadier on a busy machine)")
    print(f"{'size':<11} {'setting':>10} {'eager s/MP':>16} {'onnx s/MP':>15} {'speed-up':>15} "
          f"{'x step 0':>8} {'peak GiB':>8}")
    by_key = {(tuple(c["size"]), c["steps"], c["scheme"], c["engine"]): c for c in figures["cases"]}
    print("" if by_key else "(no --sizes: no speed table)")
    for (size, steps, scheme, engine), case in by_key.items():
        if engine != "onnx":
            continue
        eager = by_key.get((size, steps, scheme, "eager"))
        step0 = by_key[(size, 0, "anchored", "onnx")]
        setting = "step 0" if steps == 0 else f"{scheme[:4]} 0..{steps}"
        eager_s = f"{eager['s_per_mp']:.2f} ({eager['cpu_s_per_mp']:.2f})" if eager else "-"
        onnx_s = f"{case['s_per_mp']:.2f} ({case['cpu_s_per_mp']:.2f})"
        speedup = (f"{eager['s_per_mp'] / case['s_per_mp']:.2f}x ({eager['cpu_s_per_mp'] / case['cpu_s_per_mp']:.2f}x)"
                   if eager else "-")
        print(f"{f'{size[0]}x{size[1]}':<11} {setting:>10} {eager_s:>16} {onnx_s:>15} {speedup:>15} "
              f"{case['seconds'] / step0['seconds']:>7.2f}x {case['peak_rss_gib']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
