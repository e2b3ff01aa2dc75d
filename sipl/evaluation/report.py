"""``reports/index.html``: one offline page (inline CSS and script, images as relative files under ``reports/``).

Sections: the selected refinement setting, group and per-task tables (input / classical / step 0 / chosen), one
table per benchmark set (``metrics/benchmarks.json``), the PSNR-vs-steps plot, the samples, the training curve and
the run's params. Plots are matplotlib PNGs (Agg). The samples of the test split and of every benchmark set
(``plots/sample_images/``) are shown in the before/after viewer of ``sipl restore --page`` (``sipl.viewer``): a
divider, a flip, zoom to 1:1 pixels, and a choice of what each side shows (input, step 0, each refinement step,
ground truth).
"""

from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.gain{color:#0a6d2c}.loss{color:#a11}.note{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
"""


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _gain(value: float | None) -> str:
    if value is None:
        return "–"
    css = "gain" if value > 0 else "loss" if value < 0 else ""
    return f'<span class="{css}">{value:+.2f}</span>'


def plot_psnr_vs_steps(eval_steps: dict[str, Any], selected: dict[str, Any], split: str, path: Path) -> None:
    """One panel per scheme: PSNR against step for each task (thin) and the mean over tasks (bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = eval_steps["splits"][split]
    mean = eval_steps.get("groups", {}).get(split, {}).get("all", {})
    schemes = list(next(iter(tasks.values()))["schemes"])
    fig, axes = plt.subplots(1, len(schemes), figsize=(5.2 * len(schemes), 4), squeeze=False, sharey=True)
    for ax, scheme in zip(axes[0], schemes):
        for name, task in sorted(tasks.items()):
            steps = sorted(task["schemes"][scheme], key=int)
            ax.plot([int(s) for s in steps], [task["schemes"][scheme][s]["psnr"] for s in steps], marker=".",
                    linewidth=1, alpha=0.7, label=name)
        if mean.get("schemes", {}).get(scheme):
            steps = sorted(mean["schemes"][scheme], key=int)
            ax.plot([int(s) for s in steps], [mean["schemes"][scheme][s]["psnr"] for s in steps], color="black",
                    linewidth=2.5, marker="o", label="mean")
        if scheme == selected.get("scheme"):
            ax.axvline(selected["steps"], color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{scheme} ({split})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("refinement step (0 = preliminary)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("PSNR (dB, RGB)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def read_train_csv(path: Path) -> dict[str, list[float]]:
    """Numeric columns of ``plots/train.csv`` (non-numeric cells are skipped)."""
    columns: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as stream:
        for index, row in enumerate(csv.DictReader(stream)):
            for key, value in row.items():
                try:
                    columns.setdefault(key, []).append((index, float(value)))
                except (TypeError, ValueError):
                    continue
    return {key: [v for _, v in values] for key, values in columns.items() if values}


def plot_train_curve(path_csv: Path, path_png: Path) -> bool:
    """Training losses (log scale) and other logged numbers against step; False when nothing is plottable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = read_train_csv(path_csv)
    x_name = next((name for name in ("step", "steps", "iteration", "epoch") if name in columns), None)
    series = {name: values for name, values in columns.items() if name != x_name and "time" not in name}
    if not series:
        return False
    losses = {n: v for n, v in series.items() if "loss" in n}
    rates = {n: v for n, v in series.items() if n == "lr" or n.endswith("/lr") or n.startswith("lr")}
    others = {n: v for n, v in series.items() if n not in losses and n not in rates}
    panels = [p for p in (losses, rates, others) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for name, values in panel.items():
            have_x = x_name is not None and len(columns[x_name]) >= len(values)
            xs = columns[x_name][: len(values)] if have_x else range(len(values))
            ax.plot(list(xs), values, label=name, linewidth=1.2)
        if panel is not others and all(v > 0 for vals in panel.values() for v in vals):
            ax.set_yscale("log")
        ax.set_xlabel(x_name or "row")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_png, dpi=90)
    plt.close(fig)
    return True


def benchmark_section(document: dict[str, Any] | None) -> str:
    """HTML of the benchmark sets: per set, task | images | input | classical | step 0 | selected | gain over input,
    then its ``all`` group (PSNR in dB at the setting selected on validation)."""
    parts = ["<h2>Benchmark sets</h2>"]
    sets = (document or {}).get("sets") or {}
    if not sets:
        parts.append("<p class='note'>No benchmark sets: list them under <code>benchmarks:</code> in params.yaml "
                     "(metrics/benchmarks.json).</p>")
        return "".join(parts)
    header = ["task", "images", "input", "classical", "step 0", "selected", "gain over input"]
    for name, entry in sets.items():
        rows = [[html.escape(task), str(t.get("images", "")), _fmt(t["input_psnr"]), _fmt(t.get("classical_psnr")),
                 _fmt(t["step0_psnr"]), _fmt(t["psnr"]), _gain(t["psnr"] - t["input_psnr"])]
                for task, t in entry["tasks"].items()]
        group = entry.get("groups", {}).get("all")
        if group:
            rows.append(["<b>all (mean)</b>", "", _fmt(group["input_psnr"]), "–", _fmt(group["step0_psnr"]),
                         _fmt(group["psnr"]), _gain(group["psnr"] - group["input_psnr"])])
        parts.append(f"<h3>{html.escape(name)} <span class='note'>({html.escape(str(entry.get('kind', '')))})"
                     "</span></h3>" + _table(header, rows))
    parts.append("<p class='note'>PSNR in dB (RGB) at the setting selected on validation; benchmark sets take no "
                 "part in the selection.</p>")
    return "".join(parts)


def _selected_steps(eval_json: dict[str, Any], task: dict[str, Any] | None) -> int:
    """The step count the selected setting restores a task with: its own under per-degradation routing."""
    selected = eval_json["selected"]
    if selected.get("routing") == "per_degradation" and task and "per_task_steps" in task:
        return int(task["per_task_steps"])
    return int(selected["steps"])


def sample_section(root: Path, out_dir: Path, eval_json: dict[str, Any], benchmarks: dict[str, Any] | None) -> str:
    """HTML of the samples: per set (the test split, each benchmark set) and task, one before/after comparison per
    sample (``sample_comparisons``), each task's grid image (``plots/samples/``) linked. Images are copied under
    ``out_dir/samples/``. Without ``plots/sample_images/`` (an evaluation from before it existed), the grids."""
    from sipl.errors import SiplError
    from sipl.evaluation.evaluate import SAMPLE_IMAGES_INDEX

    grids = {p.stem: p for p in sorted((root / "plots" / "samples").glob("*.png")) if p.stem in eval_json["tasks"]}
    if grids:
        (out_dir / "samples").mkdir(exist_ok=True)
    for grid in grids.values():
        shutil.copyfile(grid, out_dir / "samples" / grid.name)
    source = root / "plots" / "sample_images"
    index = _load_json(source / SAMPLE_IMAGES_INDEX)
    if index is not None:
        try:
            return sample_comparisons(source, index, out_dir, eval_json, benchmarks, grids)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise SiplError(f"{source / SAMPLE_IMAGES_INDEX}: not the expected content ({type(error).__name__}: "
                            f"{error}); re-run `sipl evaluate`") from None
    parts = ["<h2>Samples</h2><p class='note'>Columns: degraded input, preliminary restoration (step 0), "
             "refinement steps, ground truth.</p>"]
    for name, grid in grids.items():
        parts.append(f"<h3>{html.escape(name)}</h3>"
                     f'<img src="samples/{html.escape(grid.name)}" alt="{html.escape(name)}">')
    if not grids:
        parts.append("<p class='note'>No sample grids (plots/samples/) found.</p>")
    return "".join(parts)


def sample_comparisons(source: Path, index: dict[str, Any], out_dir: Path, eval_json: dict[str, Any],
                       benchmarks: dict[str, Any] | None, grids: dict[str, Path]) -> str:
    """The samples of ``source`` (``plots/sample_images``, described by ``index``) as before/after comparisons:
    the input on the left, the selected restoration on the right (the task's own step count under per-degradation
    routing), either side switchable to any column. Their files are copied to ``out_dir/samples/``."""
    from sipl.viewer import component

    selected_scheme = eval_json["selected"]["scheme"]
    sets, number = [], 0
    for entry in index["sets"]:
        results = (eval_json["tasks"] if entry["kind"] == "split"
                   else (benchmarks or {}).get("sets", {}).get(entry["name"], {}).get("tasks", {}))
        tasks = []
        for task, samples in entry["tasks"].items():
            steps = _selected_steps(eval_json, results.get(task))
            # the samples hold the steps of one scheme: the selection's own only when it chose that scheme
            chosen = f"step{steps}" if steps == 0 or selected_scheme == index["scheme"] else None
            comparisons = []
            for sample in samples:
                views = {}
                for column in index["columns"]:
                    relative = sample["files"].get(column["key"])
                    if relative is None:
                        continue
                    target = out_dir / "samples" / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source / relative, target)
                    url = component.relative_url(target, out_dir)
                    label = column["label"] + (" (selected)" if column["key"] == chosen else "")
                    views[column["key"]] = component.View(label, url, url)
                last_step = list(views.values())[-2]
                number += 1
                height, width = sample["size"]
                comparisons.append(component.Comparison(
                    key=f"sample-{number}", name=f"{entry['name']} {task} sample {len(comparisons) + 1}",
                    width=width, height=height, before=views["input"], after=views.get(chosen or "", last_step),
                    choices=tuple(views.values())))
            grid = grids.get(task) if entry["kind"] == "split" else None
            tasks.append({"name": task, "steps": steps, "comparisons": comparisons,
                          "grid": component.relative_url(out_dir / "samples" / grid.name, out_dir) if grid else None})
        title = f"{entry['name']} split" if entry["kind"] == "split" else f"benchmark set {entry['name']}"
        sets.append({"title": title, "tasks": tasks})
    return component.render("report_samples.html.j2", sets=sets, scheme=selected_scheme)


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def build_report(root: Path, out_dir: Path, params_text: str | None) -> Path:
    """Write ``out_dir/index.html`` (+ its images) from the run's metrics and plots under ``root``.

    Requires ``root/metrics/eval.json``; every other input is optional and its section says so when missing.
    A metrics file with missing or mistyped keys fails with SiplError naming the metrics files and the key.
    """
    from sipl.errors import SiplError

    try:
        return _build_report(root, out_dir, params_text)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        what = f"key {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise SiplError(f"{root / 'metrics'}: eval.json / eval_steps.json / benchmarks.json do not have the "
                        f"expected content ({what}); re-run `sipl evaluate` and `sipl select`") from None


def _build_report(root: Path, out_dir: Path, params_text: str | None) -> Path:
    from sipl.errors import SiplError

    eval_json = _load_json(root / "metrics" / "eval.json")
    if not isinstance(eval_json, dict) or "tasks" not in eval_json:
        raise SiplError(f"{root / 'metrics' / 'eval.json'}: missing or unreadable; run `sipl select` first")
    eval_steps = _load_json(root / "metrics" / "eval_steps.json")
    train_json = _load_json(root / "metrics" / "train.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    selected, split = eval_json["selected"], eval_json.get("split", "test")
    parts = [f"<h1>SIPL restoration report</h1><p>Selected setting: <b>{_fmt(selected['scheme'])}</b> scheme, "
             f"<b>{selected['steps']}</b> refinement step(s) ({_fmt(selected.get('criterion'))}; validation PSNR "
             f"{_fmt(selected.get('val_psnr'))} dB). Numbers below: <b>{split}</b> split.</p>"]
    if selected.get("per_family"):
        parts.append("<p class='note'>Per-family best step counts (validation): " + ", ".join(
            f"{html.escape(f)}: {s}" for f, s in selected["per_family"].items()) + "</p>")

    parts.append("<h2>Groups (mean of task means)</h2>")
    parts.append(_table(["group", "tasks", "input PSNR", "step 0 PSNR", "chosen PSNR", "SIPL gain", "chosen SSIM",
                         "PSNR-Y", "SSIM-Y"],
                        [[html.escape(name), str(g.get("tasks", "")), _fmt(g["input_psnr"]), _fmt(g["step0_psnr"]),
                          _fmt(g["psnr"]), _gain(g.get("sipl_gain")), _fmt(g["ssim"], 4), _fmt(g.get("psnr_y")),
                          _fmt(g.get("ssim_y"), 4)] for name, g in eval_json["groups"].items()]))
    parts.append("<h2>Tasks</h2>")
    parts.append(_table(["task", "images", "input", "classical", "step 0", "chosen", "SIPL gain", "SSIM input",
                         "SSIM chosen", "PSNR-Y", "s/image"],
                        [[html.escape(name), str(t.get("images", "")), _fmt(t["input_psnr"]),
                          _fmt(t.get("classical_psnr")), _fmt(t["step0_psnr"]), _fmt(t["psnr"]),
                          _gain(t.get("sipl_gain")), _fmt(t.get("input_ssim"), 4), _fmt(t["ssim"], 4),
                          _fmt(t["psnr_y"]), _fmt(t.get("seconds_per_image"), 3)]
                         for name, t in eval_json["tasks"].items()]))
    parts.append("<p class='note'>PSNR in dB. Classical baselines: non-local means (noise), dark channel prior "
                 "(haze), gamma + CLAHE (low light); – where the family has none.</p>")
    parts.append(benchmark_section(_load_json(root / "metrics" / "benchmarks.json")))

    parts.append("<h2>PSNR against refinement steps</h2>")
    if eval_steps and eval_steps.get("splits", {}).get(split):
        plot_psnr_vs_steps(eval_steps, selected, split, out_dir / "psnr_vs_steps.png")
        parts.append('<img src="psnr_vs_steps.png" alt="PSNR against refinement steps">')
    else:
        parts.append("<p class='note'>metrics/eval_steps.json not found: run `sipl evaluate`.</p>")

    samples = sample_section(root, out_dir, eval_json, _load_json(root / "metrics" / "benchmarks.json"))
    parts.append(samples)

    parts.append("<h2>Training</h2>")
    if train_json:
        summary = {k: train_json.get(k) for k in ("steps", "wall_s", "samples_per_s", "skipped_samples")}
        parts.append(_table(list(summary), [[_fmt(v) for v in summary.values()]]))
    train_csv = root / "plots" / "train.csv"
    if train_csv.is_file() and plot_train_curve(train_csv, out_dir / "train_curve.png"):
        parts.append('<img src="train_curve.png" alt="training curve">')
    else:
        parts.append("<p class='note'>plots/train.csv not found or empty.</p>")

    convention = eval_json.get("convention", {})
    parts.append("<h2>Metric convention</h2>"
                 + _table(["", ""], [[html.escape(k), html.escape(str(v))] for k, v in convention.items()]))
    if eval_json.get("versions"):
        parts.append("<p class='note'>" + ", ".join(f"{html.escape(k)} {html.escape(str(v))}"
                                                    for k, v in eval_json["versions"].items()) + "</p>")
    parts.append("<h2>Parameters</h2>")
    parts.append(f"<pre>{html.escape(params_text)}</pre>" if params_text
                 else "<p class='note'>params.yaml not found.</p>")

    from sipl.data.imageio import write_bytes_atomic
    from sipl.viewer.component import assets

    # the samples' before/after viewer, inlined (the page opens from disk), where there are samples to compare
    viewer = assets() if '<figure class="cmp"' in samples else {"css": "", "js": ""}
    script = f"<script>{viewer['js']}</script>" if viewer["js"] else ""
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>SIPL report</title>"
            "<link rel='icon' href='data:,'>"
            f"<style>{CSS}{viewer['css']}</style></head><body>{''.join(parts)}{script}</body></html>\n")
    index = out_dir / "index.html"
    write_bytes_atomic(page.encode("utf-8"), index)
    return index
