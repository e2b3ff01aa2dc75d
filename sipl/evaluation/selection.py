"""Choosing the refinement setting (scheme, step count) from ``metrics/eval_steps.json``, and ``metrics/eval.json``.

Pure functions over the evaluation document (no torch, no model): ``sipl select`` runs in well under a second.

Selection rule (``refine_steps: auto``): among every (scheme, step) scored on the validation split, take the one
with the highest mean validation PSNR, the mean being over tasks of each task's mean per-image PSNR (the field's
"average of the columns"). Ties (within ``TIE_DB``) go to fewer steps, then to ``refine.scheme``, then to the order
of ``refine.schemes``. The same rule, restricted to the chosen scheme and one family's tasks, gives the per-family
step counts reported as ``per_task``. An integer ``refine_steps`` forces that step count with ``refine.scheme``.

Refinement must earn its cost: a step count above 0 is chosen (globally, and for a family) only when its mean
validation PSNR beats step 0 by at least ``min_gain_db`` (``refine.min_gain_db``), and for a family only when none of
its tasks loses more than that against step 0; otherwise step 0 stands. With ``routing: per_degradation`` (the model
has a degradation head, so ``sipl restore`` refines each image with the step count of its predicted class) the
reported metrics of every task are those at its own step count.

The degradation head's confidence gate (``affine_min_confidence``, models with a global affine): ``choose_gate``
takes the gate with the highest mean validation PSNR of the step-0 restoration over tasks, from the ``"affine_gate"``
section of the evaluation (``sipl.evaluation.gates``); ties (within ``TIE_DB``) go to the model's own gate, then to
the highest gate (the fewest corrections).
"""

from __future__ import annotations

from typing import Any

from sipl.errors import SiplError

TIE_DB = 1e-6
CDD11_NAMES = ("low", "haze", "rain", "snow", "low_haze", "low_rain", "low_snow", "haze_rain", "haze_snow",
               "low_haze_rain", "low_haze_snow")
THREE_TASK = ("denoise_15", "denoise_25", "denoise_50", "derain", "dehaze")
FIVE_TASK = ("denoise_25", "dehaze", "derain", "deblur", "lowlight")
METRIC_KEYS = ("psnr", "ssim", "psnr_y", "ssim_y")


def group_members(families: dict[str, str]) -> dict[str, list[str]]:
    """Benchmark groups present among the tasks.

    Args:
        families: task name -> family.

    Returns:
        group name -> sorted task list: ``all`` always; ``three_task`` and ``five_task`` only when every one of
        their tasks is present; ``composite`` (family ``composite`` or a CDD-11 name) when any such task is.
    """
    tasks = sorted(families)
    groups = {"all": tasks}
    for name, members in (("three_task", THREE_TASK), ("five_task", FIVE_TASK)):
        if all(task in families for task in members):
            groups[name] = sorted(members)
    composite = [task for task in tasks if families[task] == "composite" or task in CDD11_NAMES]
    if composite:
        groups["composite"] = composite
    return groups


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _split(eval_steps: dict[str, Any], split: str) -> dict[str, Any]:
    tasks = eval_steps.get("splits", {}).get(split)
    if not tasks:
        have = sorted(eval_steps.get("splits", {}))
        raise SiplError(f"metrics/eval_steps.json has no '{split}' split (have: {have}); add '{split}' to "
                        "eval.splits in params.yaml and re-run `sipl evaluate`")
    return tasks


def _step_psnr(task: dict[str, Any], scheme: str, step: int) -> float:
    return task["schemes"][scheme][str(step)]["psnr"]


def _candidates(tasks: dict[str, Any], schemes: list[str]) -> list[tuple[str, int]]:
    """(scheme, step) pairs scored for every task in ``tasks``."""
    pairs = []
    for scheme in schemes:
        step_sets = [set(int(s) for s in task["schemes"].get(scheme, {})) for task in tasks.values()]
        for step in sorted(set.intersection(*step_sets)) if step_sets else []:
            pairs.append((scheme, step))
    return pairs


def _best(pairs: list[tuple[str, int]], score: dict[tuple[str, int], float], preferred: str,
          order: list[str]) -> tuple[str, int]:
    top = max(score[pair] for pair in pairs)
    tied = [pair for pair in pairs if score[pair] >= top - TIE_DB]
    return min(tied, key=lambda p: (p[1], p[0] != preferred, order.index(p[0]) if p[0] in order else len(order)))


def _earns(pair: tuple[str, int], members: list[dict[str, Any]], min_gain_db: float) -> bool:
    """Whether refinement ``pair`` beats step 0 of its scheme by ``min_gain_db`` on the mean of ``members`` and loses
    no more than that on any one of them."""
    scheme, steps = pair
    if steps == 0:
        return True
    gains = [_step_psnr(task, scheme, steps) - _step_psnr(task, scheme, 0) for task in members]
    return _mean(gains) >= min_gain_db and min(gains) >= -min_gain_db


def _gate_value(label: str) -> float | str:
    """selection.json's value of a gate label of the evaluation: the number, or the label itself (``"never"``)."""
    try:
        return float(label)
    except ValueError:
        return label


def choose_gate(section: dict[str, Any]) -> dict[str, Any]:
    """Pick the head's confidence gate from the ``"affine_gate"`` section of ``metrics/eval_steps.json``.

    Returns:
        ``{"affine_min_confidence": number or "never", "affine_gate": {"split", "model", "val_psnr": {label: mean
        PSNR over tasks}, "criterion"}}``: the gate with the highest mean, ties to the model's own gate, then to the
        highest gate (``section["gates"]`` is ascending).
    """
    labels, tasks = list(section["gates"]), section["tasks"]
    split = section.get("split", "val")
    if not labels or not tasks:
        raise SiplError(f"metrics/eval_steps.json: 'affine_gate' holds no scored gate or no '{split}' task; re-run "
                        "`sipl evaluate`")
    means = {label: _mean([task["psnr"][label] for task in tasks.values()]) for label in labels}
    top = max(means.values())
    tied = [label for label in labels if means[label] >= top - TIE_DB]
    chosen = section["model"] if section["model"] in tied else tied[-1]
    return {"affine_min_confidence": _gate_value(chosen),
            "affine_gate": {"split": split, "model": _gate_value(section["model"]),
                            "val_psnr": {label: round(means[label], 4) for label in labels},
                            "criterion": f"max mean {split} PSNR of step 0 over tasks; ties -> the model's own gate, "
                                         "then the highest"}}


def _gate_keys(selection: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Those of ``choose_gate``'s ``keys`` that ``selection`` has (none when the model has no gate to choose)."""
    return {key: selection[key] for key in keys if key in selection}


def select(eval_steps: dict[str, Any], refine_steps: str | int, scheme: str, schemes: list[str],
           split: str = "val", min_gain_db: float = 0.0) -> dict[str, Any]:
    """Pick the refinement setting.

    Args:
        eval_steps: the ``metrics/eval_steps.json`` document.
        refine_steps: ``"auto"`` or a forced step count.
        scheme: ``refine.scheme`` (the forced scheme, and the tie-break preference).
        schemes: ``refine.schemes`` (candidates, in tie-break order).
        split: the selection split (validation).
        min_gain_db: the least validation gain over step 0 that a step count above 0 must show.

    Returns:
        ``{"scheme", "steps", "per_task", "per_family", "refine_steps", "criterion", "val_psnr", "routing"}``, plus
        ``choose_gate``'s keys when the evaluation scored the head's gate.
    """
    gate = choose_gate(eval_steps["affine_gate"]) if "affine_gate" in eval_steps else {}
    return {**_select_steps(eval_steps, refine_steps, scheme, schemes, split, min_gain_db), **gate}


def _select_steps(eval_steps: dict[str, Any], refine_steps: str | int, scheme: str, schemes: list[str],
                  split: str, min_gain_db: float) -> dict[str, Any]:
    routing = eval_steps.get("routing", "global")
    all_tasks = {name: task for data in eval_steps.get("splits", {}).values() for name, task in data.items()}
    if refine_steps != "auto":
        steps = int(refine_steps)
        available = _candidates(all_tasks, [scheme]) if all_tasks else []
        if (scheme, steps) not in available:
            have = sorted({s for sc, s in available}) or "none"
            raise SiplError(f"refine_steps={steps} with refine.scheme={scheme!r} was not evaluated (steps scored: "
                            f"{have}); raise refine.max_steps / add the scheme to refine.schemes and re-run "
                            "`sipl evaluate`")
        families = sorted({task["family"] for task in all_tasks.values()})
        return {"scheme": scheme, "steps": steps, "per_task": {name: steps for name in sorted(all_tasks)},
                "per_family": {family: steps for family in families}, "refine_steps": steps,
                "criterion": "forced by refine_steps", "val_psnr": None, "routing": "global"}

    tasks = _split(eval_steps, split)
    pairs = _candidates(tasks, [s for s in schemes if any(s in t["schemes"] for t in tasks.values())])
    if not pairs:
        raise SiplError(f"metrics/eval_steps.json: no scheme of {schemes} was scored on every '{split}' task; "
                        "re-run `sipl evaluate` with the current refine.schemes")
    score = {pair: _mean([_step_psnr(task, *pair) for task in tasks.values()]) for pair in pairs}
    earning = [pair for pair in pairs if _earns(pair, list(tasks.values()), min_gain_db)]
    chosen = _best(earning, score, scheme, schemes)

    per_family: dict[str, int] = {}
    for family in sorted({task["family"] for task in tasks.values()}):
        members = [task for task in tasks.values() if task["family"] == family]
        steps_here = [pair for pair in pairs if pair[0] == chosen[0] and _earns(pair, members, min_gain_db)]
        family_score = {pair: _mean([_step_psnr(task, *pair) for task in members]) for pair in steps_here}
        per_family[family] = _best(steps_here, family_score, chosen[0], schemes)[1]
    per_task = {name: per_family.get(task["family"], chosen[1]) for name, task in sorted(all_tasks.items())}
    return {"scheme": chosen[0], "steps": chosen[1], "per_task": per_task, "per_family": per_family,
            "refine_steps": "auto",
            "criterion": (f"max mean {split} PSNR over tasks among the settings that beat step 0 by >= {min_gain_db} dB "
                          "(and lose no more on any task); ties -> fewer steps, then refine.scheme"),
            "val_psnr": round(score[chosen], 4), "routing": routing}


def _report_split(eval_steps: dict[str, Any]) -> str:
    splits = eval_steps.get("splits", {})
    for split in ("test", "val"):
        if splits.get(split):
            return split
    raise SiplError("metrics/eval_steps.json holds no evaluated split; re-run `sipl evaluate`")


def _task_entries(tasks: dict[str, Any], selection: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Per task of one split or benchmark set: the ``metrics/eval.json`` task entry at the selected setting.

    The own step count of a task is ``per_task`` (tasks scored on val/test), else its family's ``per_family``
    (benchmark task names absent from params tasks), else the global count. With ``routing: per_degradation`` the
    metrics are taken at the own step count (what ``sipl restore`` applies), else at the global one."""
    scheme = selection["scheme"]
    per_degradation = selection.get("routing") == "per_degradation"
    tasks_out: dict[str, dict[str, Any]] = {}
    for name, task in sorted(tasks.items()):
        own_steps = selection["per_task"].get(name, selection.get("per_family", {}).get(task["family"],
                                                                                         selection["steps"]))
        steps = own_steps if per_degradation else selection["steps"]
        if str(steps) not in task["schemes"].get(scheme, {}):
            raise SiplError(f"metrics/eval_steps.json: task {name} ({where}) has no score for scheme {scheme!r} "
                            f"step {steps}; re-run `sipl evaluate`")
        chosen = task["schemes"][scheme][str(steps)]
        step0 = task["schemes"][scheme]["0"]
        entry = {key: round(chosen[key], 4) for key in METRIC_KEYS}
        entry.update({"input_psnr": round(task["input"]["psnr"], 4), "input_ssim": round(task["input"]["ssim"], 4),
                      "step0_psnr": round(step0["psnr"], 4), "step0_ssim": round(step0["ssim"], 4),
                      "sipl_gain": round(chosen["psnr"] - step0["psnr"], 4),
                      "seconds_per_image": round(chosen["seconds"], 4), "images": task["images"]})
        if task.get("classical"):
            entry["classical_psnr"] = round(task["classical"]["psnr"], 4)
            entry["classical_ssim"] = round(task["classical"]["ssim"], 4)
        if task.get("degradation"):
            entry["degradation_accuracy"] = round(task["degradation"]["accuracy"], 4)
        if str(own_steps) in task["schemes"][scheme]:
            entry["per_task_steps"] = own_steps
            entry["per_task_psnr"] = round(task["schemes"][scheme][str(own_steps)]["psnr"], 4)
        tasks_out[name] = entry
    return tasks_out


def _group_entries(tasks: dict[str, Any], tasks_out: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Plain means over each group's tasks of the selected-setting task entries."""
    families = {name: task["family"] for name, task in tasks.items()}
    groups = {}
    for group, members in group_members(families).items():
        rows = [tasks_out[name] for name in members]
        groups[group] = {key: round(_mean([row[key] for row in rows]), 4)
                         for key in ("psnr", "ssim", "psnr_y", "ssim_y", "input_psnr", "step0_psnr", "sipl_gain")}
        groups[group]["tasks"] = len(members)
    return groups


def eval_metrics(eval_steps: dict[str, Any], selection: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics/eval.json`` document: test metrics at the selected setting (val when no test split).

    Per task: ``psnr, ssim, psnr_y, ssim_y`` at the selected (scheme, steps); ``input_*``, ``step0_*`` and
    ``classical_*`` (where a baseline exists) for reference; ``sipl_gain`` = psnr - step0_psnr (what the
    self-refinement adds over the dictionary-only preliminary restoration); ``per_task_steps`` / ``per_task_psnr``
    at the per-family choice. Groups hold plain means of their tasks' values.
    """
    split = _report_split(eval_steps)
    tasks = eval_steps["splits"][split]
    tasks_out = _task_entries(tasks, selection, split)
    groups = _group_entries(tasks, tasks_out)
    return {
        "convention": eval_steps.get("convention", {}),
        "versions": eval_steps.get("versions", {}),
        "split": split,
        "selected": {**{key: selection[key] for key in
                        ("scheme", "steps", "per_task", "per_family", "refine_steps", "criterion", "val_psnr",
                         "routing")}, **_gate_keys(selection, "affine_min_confidence")},
        "sipl_gain": groups["all"]["sipl_gain"],
        "tasks": tasks_out,
        "groups": groups,
    }


def benchmark_metrics(eval_steps: dict[str, Any], selection: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics/benchmarks.json`` document: every benchmark set at the setting selected on validation.

    ``{"convention", "selected": {"scheme", "steps", "per_family"}, "sets": {NAME: {"kind", "tasks": {TASK: <the
    keys of metrics/eval.json "tasks">}, "groups": {GROUP: <the keys of its "groups">}}}}``; ``{"sets": {}}``
    when ``eval_steps`` holds no benchmark set. Benchmark sets never take part in the selection.
    """
    sets = {}
    for name, entry in sorted((eval_steps.get("benchmarks") or {}).items()):
        tasks = entry.get("tasks") or {}
        tasks_out = _task_entries(tasks, selection, f"benchmark set {name}")
        sets[name] = {"kind": entry.get("kind"), "tasks": tasks_out,
                      "groups": _group_entries(tasks, tasks_out) if tasks else {}}
    return {"convention": eval_steps.get("convention", {}),
            "selected": {**{key: selection[key] for key in ("scheme", "steps", "per_family", "routing")},
                         **_gate_keys(selection, "affine_min_confidence")},
            "sets": sets}


def selection_file(selection: dict[str, Any]) -> dict[str, Any]:
    """The ``models/selection.json`` document that ``load_model`` merges as ``meta["selected"]`` (and whose
    ``affine_min_confidence``, when the evaluation scored the gate, it sets on the model's head)."""
    return {**{key: selection[key] for key in ("scheme", "steps", "per_task", "per_family", "refine_steps", "routing")},
            **_gate_keys(selection, "affine_min_confidence", "affine_gate")}
