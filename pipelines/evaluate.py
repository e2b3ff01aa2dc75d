"""`sipl evaluate` (stage 3): score refinement steps 0..refine.max_steps of every scheme on the val/test shards
and on every benchmark set of ``data/benchmarks/index.json`` (written by `sipl benchmarks`; shards checked against
their manifest first).

Writes ``metrics/eval_steps.json`` (benchmark sets under ``"benchmarks"``), ``plots/psnr_vs_steps.csv``,
``plots/samples/{task}.png`` (the sample grids) and ``plots/sample_images/`` (the same samples one PNG per column,
of the reporting split and of every benchmark set, for the report's before/after viewer).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sipl import env

env.apply_quiet_defaults()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models", help="exported model folder (default: models)")
    parser.add_argument("--shards", default=None, help="shard root (default: shards.root from params)")
    parser.add_argument("--out", default=".", help="folder that receives metrics/ and plots/ (default: .)")
    parser.add_argument("--benchmarks", default="data/benchmarks",
                        help="output of `sipl benchmarks` (default: data/benchmarks; none there = no sets)")


def run(args: argparse.Namespace) -> int:
    import torch

    from sipl.atomic_files import write_json_atomic, write_text_atomic
    from sipl.config import load_params
    from sipl.data import benchmarks, shards
    from sipl.data.imageio import write_png_atomic
    from sipl.errors import SiplError
    from sipl.evaluation import evaluate, metrics

    from sipl.outputs import writable_dir

    params = load_params(args.params)
    root = args.shards or params.shards.root
    out = Path(args.out)
    for folder in (out / "metrics", out / "plots" / "samples"):
        writable_dir(folder, "--out")
    manifest = shards.read_manifest(root)
    # Every shard read is checked against the manifest (sha256 and sample count), like `sipl train` does: a shard
    # cut at a member boundary is still a valid tar and would otherwise be scored on fewer images than listed.
    entries_by_split = {
        split: {task: shards.shard_entries(root, split, task, manifest)
                for task in sorted(manifest["splits"].get(split) or {})}
        for split in params.eval.splits}
    if not shards.is_remote(root):  # local: all before any model work; S3: each shard as it is read (one download)
        for tasks in entries_by_split.values():
            for entries in tasks.values():
                shards.verify_shards(entries)
    from sipl.models.files import gate_threshold, has_global_affine, load_model

    # As exported: the head's gate is chosen below on val (selection.json may hold one chosen for another model).
    model, meta = load_model(args.model, with_selection=False)
    grid_scheme = params.refine.scheme if params.refine.scheme in params.refine.schemes else params.refine.schemes[0]
    # The grids come from the reporting split: test when evaluated, else the last split.
    grid_split = "test" if "test" in params.eval.splits else params.eval.splits[-1]

    from sipl.config.profiles import CLEAN_CLASS

    class_families = {CLEAN_CLASS: CLEAN_CLASS, **{name: task.family for name, task in params.tasks.items()}}

    def say(message: str) -> None:
        print(f"sipl evaluate: {message}", file=sys.stderr, flush=True)

    # Benchmark sets: every shard is checked against its set's manifest before any model work.
    index = benchmarks.read_index(args.benchmarks)
    if index is None:
        say(f"{args.benchmarks}/{benchmarks.INDEX} not found: no benchmark sets (`sipl benchmarks` writes it)")
    benchmark_inputs = {name: (entry, benchmarks.samples_by_task(args.benchmarks, name))
                        for name, entry in sorted((index or {}).get("sets", {}).items())}

    def split_samples(split: str) -> dict:
        """task -> (family, checked Samples) of a split (a fresh read of its shards on each call)."""
        return {task: (entry.get("family") or (params.tasks[task].family if task in params.tasks else "other"),
                       shards.iter_checked_samples(entries_by_split[split][task]))
                for task, entry in (manifest["splits"].get(split) or {}).items()}

    # The head's confidence gate, chosen on val as `sipl select` chooses it, and applied before anything is scored:
    # the test split, the benchmark sets and the refinement steps are all scored as `sipl restore` will run them.
    gate_section = None
    if has_global_affine(model) and "val" in params.eval.splits and manifest["splits"].get("val"):
        from sipl.evaluation import gates, selection

        gate_started = time.perf_counter()
        gate_section = gates.score_gates(model, split_samples("val"), tile=params.eval.tile,
                                         tile_overlap=params.eval.tile_overlap,
                                         max_images=params.eval.max_images_per_task,
                                         progress=lambda m: say(f"val gate {m}"))
        if gate_section["tasks"]:
            chosen = selection.choose_gate(gate_section)["affine_min_confidence"]
            model.head.affine_min_confidence = gate_threshold(chosen)
            gate_section["applied"] = str(chosen)
            gate_section["seconds"] = round(time.perf_counter() - gate_started, 2)
            say(f"head confidence gate {chosen} (the model's own: {gate_section['model']}), chosen on val from "
                f"{gate_section['gates']}")
        else:
            gate_section = None
    from sipl.models.runtime import for_inference

    model = for_inference(model, params.eval.engine)

    started = time.perf_counter()
    splits, all_grids = {}, {}
    for split in params.eval.splits:
        tasks = manifest["splits"].get(split) or {}
        if not tasks:
            say(f"split '{split}' has no shards; skipped")
            continue
        samples_by_task = split_samples(split)
        say(f"{split}: {len(samples_by_task)} tasks, schemes {params.refine.schemes}, "
            f"steps 0..{params.refine.max_steps}")
        results, grids = evaluate.evaluate_split(
            model, samples_by_task, schemes=list(params.refine.schemes), max_steps=params.refine.max_steps,
            tile=params.eval.tile, tile_overlap=params.eval.tile_overlap, use_classical=params.eval.classical,
            grid_scheme=grid_scheme if split == grid_split else None, grid_images=params.eval.sample_grid_images,
            max_images=params.eval.max_images_per_task, progress=lambda m, s=split: say(f"{s} {m}"),
            class_families=class_families)
        splits[split] = results
        if split == grid_split:
            all_grids = grids
    if not any(splits.values()):
        raise SiplError(f"{root}: none of the splits {params.eval.splits} has samples; run `sipl synthesize` "
                        "with non-zero splits.val_fraction / test_fraction")

    benchmark_sets, benchmark_grids = {}, {}
    for name, (entry, samples_by_task) in benchmark_inputs.items():
        say(f"benchmark {name} ({entry.get('kind')}): {len(samples_by_task)} tasks")
        results, benchmark_grids[name] = evaluate.evaluate_split(
            model, samples_by_task, schemes=list(params.refine.schemes), max_steps=params.refine.max_steps,
            tile=params.eval.tile, tile_overlap=params.eval.tile_overlap, use_classical=params.eval.classical,
            grid_scheme=grid_scheme, grid_images=params.eval.sample_grid_images,
            max_images=params.eval.max_images_per_task, progress=lambda m, s=name: say(f"benchmark {s} {m}"),
            class_families=class_families)
        benchmark_sets[name] = {"kind": entry.get("kind"), "path": entry.get("path"), "tasks": results,
                                "groups": evaluate.group_averages(results) if results else {}}

    document = {
        "convention": metrics.CONVENTION,
        "versions": metrics.library_versions(),
        "model": meta.get("model", {}),
        # sipl restore refines each image with its predicted class's step count when the model has a head
        "routing": "per_degradation" if getattr(model, "head", None) is not None else "global",
        "refine": {"max_steps": params.refine.max_steps, "schemes": list(params.refine.schemes),
                   "scheme": params.refine.scheme, "tile": params.eval.tile, "tile_overlap": params.eval.tile_overlap},
        "seconds_note": "cumulative model seconds per image to reach the step (scoring excluded); with eval.tile "
                        "the whole chain is counted at step 0; torch threads: " f"{torch.get_num_threads()}",
        "wall_s": round(time.perf_counter() - started, 2),
        "splits": splits,
        "groups": {split: evaluate.group_averages(tasks) for split, tasks in splits.items() if tasks},
        "benchmarks": benchmark_sets,
    }
    if gate_section is not None:
        document["affine_gate"] = gate_section
    report_split = grid_split if splits.get(grid_split) else next(s for s, t in splits.items() if t)
    write_json_atomic(out / "metrics" / "eval_steps.json", document)
    write_text_atomic(out / "plots" / "psnr_vs_steps.csv",
                      evaluate.psnr_csv(splits[report_split], document["groups"][report_split]))
    labels = [column["label"] for column in evaluate.sample_columns(grid_scheme, params.refine.max_steps)]
    for task, rows in all_grids.items():
        if rows:
            write_png_atomic(evaluate.sample_grid(rows, labels), out / "plots" / "samples" / f"{task}.png")
    evaluate.write_sample_images(out / "plots" / "sample_images", grid_scheme,
                                 [(grid_split, "split", all_grids)]
                                 + [(name, "benchmark", grids) for name, grids in benchmark_grids.items()])
    say(f"done in {document['wall_s']:.1f} s: metrics/eval_steps.json, plots/psnr_vs_steps.csv, "
        f"plots/samples/ ({len(all_grids)} grids), plots/sample_images/, {len(benchmark_sets)} benchmark set(s)")
    return 0
