"""`sipl restore INPUT... -o OUT`: restore your own images (files, folders, globs) into PNGs in OUT."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sipl import env

env.apply_quiet_defaults()


def _at_least(option: str, minimum: int, value: str, also: str = "") -> int:
    """``value`` as an integer >= ``minimum``, else an argparse error naming ``option`` (``also``: other accepted
    words, for the message)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option} takes {also}an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"{option} must be >= {minimum}, got {number}")
    return number


def _steps(value: str) -> str | int:
    return value if value == "auto" else _at_least("--steps", 0, value, also="'auto' or ")


def _max_pixels(value: str) -> int:
    return _at_least("--max-pixels", 1, value)


def configure(parser: argparse.ArgumentParser) -> None:
    from sipl.data.imageio import DEFAULT_MAX_PIXELS

    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("-o", "--output", required=True, help="output folder (PNG files named after the inputs)")
    parser.add_argument("--steps", type=_steps, default="auto",
                        help="refinement steps: 'auto' (the setting chosen by `sipl select`) or an integer")
    parser.add_argument("--scheme", choices=["official", "anchored"], default=None,
                        help="refinement scheme (default: the selected one, else refine.scheme)")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile side in pixels for large images; 0 = never tile (default: 512 above 512 px)")
    parser.add_argument("--tile-overlap", type=int, default=16, help="overlap between tiles in pixels")
    parser.add_argument("--model", default=None,
                        help="exported model folder (default: models/ when the pipeline has trained one, else the "
                             "shipped model sipl/pretrained/tiny-bsds432)")
    parser.add_argument("--engine", choices=["auto", "onnx", "eager"], default="auto",
                        help="how the model runs: onnx (ONNX Runtime, the fast CPU path), eager (PyTorch); "
                             "auto = onnx on CPU, eager on CUDA")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu, or cuda (a GPU; bf16 where supported)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--page", action="store_true",
                        help="also write OUT/index.html: every image before and after (a divider, a flip, 1:1 zoom), "
                             "the degradation the model saw, the steps and seconds, and the skipped files; opens "
                             "from disk, no server")
    parser.add_argument("--max-pixels", type=_max_pixels, default=DEFAULT_MAX_PIXELS,
                        help="skip images with more pixels than this, before decoding them (decompression bombs; "
                             f"default {DEFAULT_MAX_PIXELS}, Pillow's limit)")


def resolve_setting(args: argparse.Namespace, meta: dict) -> tuple[int | dict[str, int], str, str]:
    """(steps, scheme, where the setting came from) from the CLI, models/selection.json and params.yaml.

    With ``--steps auto``, a model with a degradation head and a selection that chose steps per task, ``steps`` is
    that per-task mapping (plus ``clean``: 0): each image gets the step count of the class the head predicts."""
    from sipl.config import load_params
    from sipl.config.sections import RefineConfig
    from sipl.errors import SiplError

    params = load_params(args.params) if Path(args.params).is_file() else None
    refine_cfg = params.refine if params is not None else RefineConfig()
    selected = meta.get("selected") or {}
    if args.steps != "auto":
        return args.steps, args.scheme or refine_cfg.scheme, "--steps"
    if "steps" in selected:
        scheme = args.scheme or selected.get("scheme", refine_cfg.scheme)
        classes = meta.get("model", {}).get("degradation_classes") or []
        per_task = selected.get("per_task") or {}
        if classes and per_task and args.scheme in (None, selected.get("scheme")):
            from sipl.config.profiles import CLEAN_CLASS

            steps = {name: int(per_task.get(name, 0)) for name in classes if name != CLEAN_CLASS}
            return {CLEAN_CLASS: 0, **steps}, scheme, f"{args.model}/selection.json, per predicted degradation"
        return int(selected["steps"]), scheme, f"{args.model}/selection.json"
    if params is not None and isinstance(params.refine_steps, int):
        return params.refine_steps, args.scheme or refine_cfg.scheme, f"{args.params} refine_steps"
    raise SiplError(f"{args.model}: no selection.json, so --steps auto has nothing to use; run `sipl select` "
                    "(or `dvc repro select`) first, or pass --steps N")


def run(args: argparse.Namespace) -> int:
    import sipl
    from sipl import restore
    from sipl.errors import SiplError
    from sipl.outputs import writable_dir

    if args.tile is not None and 0 < args.tile < 32:
        raise SiplError(f"--tile {args.tile} is too small; use 0 (no tiling) or at least 32")
    if args.tile is not None and args.tile < 0:
        raise SiplError(f"--tile {args.tile} is negative; use 0 (no tiling) or at least 32")
    if args.tile_overlap < 0:
        raise SiplError(f"--tile-overlap {args.tile_overlap} is negative; use 0 or more pixels")
    restore_plan = restore.plan(args.inputs, args.output)
    if not restore_plan.jobs:
        for argument, reason in restore_plan.missing:
            print(f"sipl restore: {argument}: {reason}", file=sys.stderr)
        raise SiplError("no input image found; pass image files, folders or glob patterns")
    writable_dir(args.output, "-o")  # before any work: a bad -o must not cost a restored image
    if args.page:
        from sipl.viewer import restore_page

        restore_page.check_output_folder(args.output)  # an index.html sipl did not write is never replaced
    if args.model is None:
        from sipl.models.shipped import default_model_dir

        args.model, why = default_model_dir()
        print(f"sipl restore: model: {why}", file=sys.stderr)
    model, meta = sipl.load_model(args.model)
    steps, scheme, source = resolve_setting(args, meta)
    from sipl.models.runtime import for_inference

    model = for_inference(model, args.engine, args.device)
    described = (f"{steps} step(s)" if isinstance(steps, int)
                 else "steps per degradation " + ", ".join(f"{k} {v}" for k, v in steps.items()))
    print(f"sipl restore: {len(restore_plan.jobs)} image(s), {scheme}, {described} (from {source})",
          file=sys.stderr)
    page = None
    if args.page:
        page = restore_page.RestorePage(args.output, {
            "model": str(args.model), "scheme": scheme, "steps": described, "source": source,
            "engine": args.engine, "device": args.device})
    try:
        summary = restore.run_plan(model, restore_plan, steps, scheme, args.tile, args.tile_overlap,
                                   progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr),
                                   max_pixels=args.max_pixels, on_done=page.add if page else None,
                                   on_failed=page.skip if page else None)
    except KeyboardInterrupt:
        if page is not None:
            print(f"sipl restore: interrupted; page of the images done so far: {page.write(interrupted=True)}",
                  file=sys.stderr)
        raise
    for item in summary["failed"]:
        print(f"sipl restore: failed: {item['input']}: {item['reason']}", file=sys.stderr)
    total = sum(item["seconds"] for item in summary["done"])
    not_attempted = summary.get("not_attempted") or []
    print(f"sipl restore: {len(summary['done'])} written to {args.output} in {total:.1f} s, "
          f"{len(summary['failed'])} failed" + (f", {len(not_attempted)} not attempted" if not_attempted else ""),
          file=sys.stderr)
    if summary.get("stopped"):
        print(f"sipl restore: error: {stopped_message(summary)}", file=sys.stderr)
    if page is not None:
        print(f"sipl restore: page: {page.write()}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def stopped_message(summary: dict) -> str:
    """The sentence for a run stopped by an output it could not write: that file, why, the counts, what to do."""
    import errno

    stopped, folder = summary["stopped"], Path(summary["stopped"]["output"]).parent
    if stopped["errno"] in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space in {folder} (or give another -o)"
    else:
        fix = f"make {folder} writable again (or give another -o)"
    rest = summary.get("not_attempted") or []
    shown = ", ".join(rest[:3]) + (", ..." if len(rest) > 3 else "")
    return (f"{stopped['output']}: cannot write it ({stopped['reason']}), so the run stopped there: "
            f"{len(summary['done'])} written, {len(summary['failed'])} failed (this one included), {len(rest)} not "
            f"attempted{' (' + shown + ')' if rest else ''}; {fix} and re-run with the failed and not attempted "
            "inputs")
