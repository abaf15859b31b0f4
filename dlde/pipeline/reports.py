"""The pipeline's reports in the figures folder: ``index.md`` (every current figure with its
notebook and parameters, the steps that are not current, the stale figures, the aggregated
sweeps) and ``metrics.md`` (the final metrics of each trained run).

A figure is stale when the step that made it in an earlier pipeline run has failed since (or,
for a notebook of a run, that run's training has): :func:`mark_failed` records it in
``pipeline_stale.json`` next to the step's results.json, and index.md lists it apart from the
current figures until the step succeeds again. The figure files themselves are never deleted."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlde.files import atomic_write_text
from dlde.reports.sweeps import SWEEPS_HEADING, index_lines
from dlde.tables import code_value, markdown_table, write_table_file

from .lock import TRAIN_NOTEBOOK
from .notebook import RESULTS_FILE, read_results
from .plan import PATH_PARAMETERS, STEP_FILE, Plan, Step

#: Next to results.json: ``{"failed", "reason", "figures"}``, figures of earlier pipeline runs
#: whose step (``failed``: that notebook, or the run's training) failed since.
STALE_FILE = "pipeline_stale.json"
STALE_REASON_CHARS = 300  # an index.md cell holds at most this much of a failure's reason


def finished(plan: Plan) -> list[tuple[Step, dict[str, Any], dict[str, Any]]]:
    """``(step, results, record)`` of every step of the file that has finished (on disk).

    ``record`` holds the parameters the step ran with; with ``--only`` the other steps'
    records come from earlier pipeline runs. A step that failed (or never ran) has neither
    file: :func:`dlde.pipeline.execute.execute` removes both before it starts. A step whose
    run's training failed since keeps both but is stale (:func:`mark_failed`), not finished.
    """
    found = []
    for step in plan.all_steps:
        out_dir = plan.out_dir(step)
        if ((out_dir / RESULTS_FILE).exists() and (out_dir / STEP_FILE).exists()
                and not (out_dir / STALE_FILE).exists()):
            found.append((step, read_results(out_dir), json.loads((out_dir / STEP_FILE).read_text())))
    return found


def _stale_record(plan: Plan, step: Step) -> dict[str, Any]:
    """The step's ``pipeline_stale.json`` (``{}`` when none of its figures is stale)."""
    path = plan.out_dir(step) / STALE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def step_figures(plan: Plan, step: Step) -> list[str]:
    """The figures ``step`` made in earlier pipeline runs: those of its results.json and those already stale."""
    out_dir = plan.out_dir(step)
    names = read_results(out_dir).get("figures", []) if (out_dir / RESULTS_FILE).exists() else []
    return list(dict.fromkeys(names + _stale_record(plan, step).get("figures", [])))


def mark_failed(plan: Plan, step: Step, reason: str, figures: list[str]) -> None:
    """Record that ``step`` failed: its ``figures`` (:func:`step_figures`, read before it ran)
    are stale. A failed training step leaves its run's model in doubt, so the figures of every
    other step of that run go stale too. Nothing is deleted."""
    failure = {"failed": step.notebook, "reason": reason}
    stale = [(step, figures)]
    if step.notebook == TRAIN_NOTEBOOK:
        stale += [(other, step_figures(plan, other)) for other in plan.all_steps
                  if other.run == step.run and other.notebook != TRAIN_NOTEBOOK]
    for target, names in stale:
        if names:
            out_dir = plan.out_dir(target)
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / STALE_FILE, json.dumps(failure | {"figures": names}, indent=1) + "\n")


def clear_stale(plan: Plan, step: Step) -> None:
    """``step`` succeeded: the figures it made are current (those it no longer makes are not listed)."""
    (plan.out_dir(step) / STALE_FILE).unlink(missing_ok=True)


def _figure_rows(plan: Plan, done: list[tuple[Step, dict[str, Any], dict[str, Any]]]) -> list[list[str]]:
    """One row per figure of the finished steps: figure, run, notebook, executed copy, parameters."""
    rows = []
    for step, results, record in done:
        parameters = ", ".join(
            f"{key}={code_value(plan.display(value) if key in PATH_PARAMETERS and value else value)}"
            for key, value in record["parameters"].items()) or "defaults"
        rows += [[_figure_link(name), step.run, f"`notebooks/{step.notebook}`",
                  f"`{plan.display(plan.executed(step))}`", parameters] for name in results.get("figures", [])]
    return rows


def _figure_link(name: str) -> str:
    return f"[{name}]({name}.png) ([pdf]({name}.pdf))"


def _stale_lines(plan: Plan) -> list[str]:
    """The ``Stale figures`` section of index.md (empty when no figure is stale)."""
    rows = []
    for step in plan.all_steps:
        record = _stale_record(plan, step)
        if not record:
            continue
        reason = " ".join(record["reason"].split())[:STALE_REASON_CHARS].replace("|", "\\|")  # one table cell
        rows += [[_figure_link(name), step.run, f"`notebooks/{step.notebook}`", f"`notebooks/{record['failed']}`",
                  reason] for name in record["figures"]]
    if not rows:
        return []
    return ["", "## Stale figures (their step failed since they were made)", "",
            "An earlier pipeline run made these figures; the step that made them (or the training of its "
            "run) has failed since, so they do not show what figures.yaml asks for now. They are kept, "
            "not deleted, and are current again once their step succeeds.", "",
            markdown_table(["figure", "run", "notebook", "failed step", "reason"], rows)]


def write_index(plan: Plan) -> Path:
    """``figures/index.md``: every current figure with its run, notebook and parameters, the
    steps whose figures are not current (failed or not run), the stale figures, and the
    aggregated sweeps."""
    done = finished(plan)
    lines = ["# Figures", "",
             "Written by `python -m dlde.pipeline`; edit `figures.yaml` and rerun it rather than this file.",
             "Every figure exists as PNG and PDF. Parameters not listed keep the notebook's defaults; "
             "`RUN_DIR`, `FIGURES_DIR`, `FIGURE_PREFIX` and `OUT_DIR` are set by the pipeline (and "
             "`CONFIG`, `RUNS_DIR` and `TINY` for a notebook that reads sweeps).", "",
             markdown_table(["figure", "run", "notebook", "executed copy", "parameters"], _figure_rows(plan, done))]
    current = {(step.run, step.notebook) for step, _, _ in done}
    missing = [step for step in plan.all_steps if (step.run, step.notebook) not in current]
    if missing:
        lines += ["", "## Not current", "",
                  "These steps failed or have not run: their figures (if any are left in this folder) are "
                  "not listed above and are not current. An executed copy holds the traceback.", "",
                  markdown_table(["run", "notebook", "executed copy"],
                                 [[step.run, f"`notebooks/{step.notebook}`", f"`{plan.display(plan.executed(step))}`"]
                                  for step in missing])]
    lines += _stale_lines(plan)
    lines += index_lines(plan.ablations_dir)
    plan.figures_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(plan.figures_dir / "index.md", "\n".join(lines) + "\n")



def write_sweep_index(plan: Plan) -> Path:
    """Rewrites only the ``Sweeps`` section of ``figures/index.md`` (the last one), keeping the
    figure list above it as the last figures run wrote it: a sweeps-only invocation knows nothing
    of the figure runs, which may not even exist in this checkout. Without an index.md it writes
    the whole file (:func:`write_index`)."""
    path = plan.figures_dir / "index.md"
    if not path.exists():
        return write_index(plan)
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(SWEEPS_HEADING)), len(lines))
    while start > 0 and not lines[start - 1].strip():
        start -= 1
    return atomic_write_text(path, "\n".join(lines[:start] + index_lines(plan.ablations_dir)) + "\n")


def _number(value: Any, digits: int = 3) -> str:
    """A cell of metrics.md: ``–`` for a missing value, a float with ``digits`` decimals."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_metrics_table(plan: Plan) -> Path:
    """``figures/metrics.md``: final COCO AP, losses and training time of each trained run."""
    rows = [[step.run, str(r.get("model", "–")), str(r.get("preset", "–")), str(r.get("epochs")),
             _number(r.get("AP")), _number(r.get("AP50")), _number(r.get("AP75")), _number(r.get("val_loss")),
             _number((r.get("train_time_s") or 0.0) / 60, 1)]
            for step, r, _ in finished(plan) if step.notebook == TRAIN_NOTEBOOK]
    table = markdown_table(["run", "model", "preset", "epochs", "AP", "AP50", "AP75", "val loss", "train time (min)"],
                           rows)
    plan.figures_dir.mkdir(parents=True, exist_ok=True)
    return write_table_file(plan.figures_dir / "metrics.md", table)
