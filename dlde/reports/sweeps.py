"""A sweep's report, one way from its runs to its files: the run folders of each arm are aggregated
over seeds (:mod:`dlde.analysis.sweep_stats`), tabulated (:func:`sweep_table`, with the one table
writer :mod:`dlde.tables`) and drawn (:mod:`dlde.plots.sweep_plots`) into
``<figures_dir>/ablations/<sweep>.md``, ``.csv``, ``.json`` (what made it) and ``.png`` + ``.pdf``
(:func:`write_sweep`); :func:`index_lines` lists the written sweeps in ``figures/index.md``.

The sweep runner (:mod:`dlde.pipeline.sweeps`) resolves ``figures.yaml`` into run folders, trains
them and hands each sweep's ``arm -> run folders`` here; notebook ``07_vocabulary`` reads the same
tables (:func:`sweep_table`). Nothing here reads the plan or calls back into the runner.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlde.analysis.stats import CONFIDENCE
from dlde.analysis.sweep_stats import (
    DIAGNOSTIC_METRICS,
    collapse_curves,
    metric_title,
    run_summary,
    summarize_arms,
    tabulated,
)
from dlde.files import atomic_write_text
from dlde.plots.plotting import save_figure
from dlde.plots.sweep_plots import plot_collapse, plot_sweep
from dlde.tables import code_value, interval_cell, markdown_table, write_table_file
from dlde.train.runs import RunFolder

__all__ = ["ABLATIONS_FOLDER", "SWEEP_RECORD_SUFFIX", "diagnostics_table", "index_lines", "sweep_markdown",
           "shown_diagnostics", "sweep_table", "write_csv", "write_sweep"]

ABLATIONS_FOLDER = "ablations"  # under figures_dir: the written sweeps
SWEEP_RECORD_SUFFIX = ".json"  # <out_dir>/<sweep>.json: what made the table (read by figures/index.md)
SWEEPS_HEADING = "## Sweeps"  # the section of figures/index.md that :func:`index_lines` writes


def _digits(metric: str) -> int:
    return 0 if metric == "images" else 1 if metric in ("min_angle_deg", "kappa", "epoch_time_s", "w") else 3


def shown_diagnostics(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The :data:`DIAGNOSTIC_METRICS` that some arm of ``rows`` has a number for: the columns of
    :func:`diagnostics_table` and the diagnostics columns of :func:`write_csv` (one rule for both, so the
    table comes back from the CSV)."""
    return [m for m in DIAGNOSTIC_METRICS if any(math.isfinite(r.get(f"{m}_mean", math.nan)) for r in rows)]


def diagnostics_table(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The :func:`shown_diagnostics` of ``rows`` as a markdown table like :func:`sweep_table`'s; None when
    no arm has any."""
    metrics = shown_diagnostics(rows)
    if not metrics:
        return None
    header = ["arm", "seeds"] + [f"{DIAGNOSTIC_METRICS[m]} mean ± sd [{100 * CONFIDENCE:g} % CI]" for m in metrics]
    cells = [[str(row["arm"]), str(row["n"])]
             + [interval_cell({key: row[f"{m}_{key}"] for key in ("mean", "sd", "low", "high")}, _digits(m),
                              sd=True, missing="") for m in metrics] for row in rows]
    return markdown_table(header, cells) + "\n"


def sweep_table(rows: Sequence[Mapping[str, Any]], confidence: float = CONFIDENCE) -> str:
    """The rows of :func:`~dlde.analysis.sweep_stats.summarize_arms` as a markdown table: ``mean ± sd
    [low, high]`` per cell.

    A metric an arm does not have (e.g. the angle for the sigmoid head) is left blank; the
    columns are those of :func:`~dlde.analysis.sweep_stats.tabulated`.
    """
    percent = f"{100 * confidence:g} %"
    metrics = tabulated(rows)
    header = ["arm", "seeds"] + [f"{metric_title(metric)} mean ± sd [{percent} CI]" for metric in metrics]
    cells = [[str(row["arm"]), str(row["n"])]
             + [interval_cell({key: row[f"{metric}_{key}"] for key in ("mean", "sd", "low", "high")},
                              _digits(metric), sd=True, missing="") for metric in metrics]
             for row in rows]
    return markdown_table(header, cells) + "\n"


def sweep_markdown(name: str, rows: Sequence[Mapping[str, Any]], *, collapse: bool = False) -> str:
    """The content of ``<sweep>.md`` (before its provenance line): a title, :func:`sweep_table` and,
    with ``collapse``, a link to the collapse figure ``<sweep>_collapse.png``."""
    text = f"# Sweep `{name}`\n\n" + sweep_table(rows)
    diagnostics = diagnostics_table(rows)
    if diagnostics is not None:
        text += ("\nWhat the tracked means did by the last epoch (mean cosine of a class mean to its start per "
                 "frequency bucket, 1 = never moved; length of the mean tracked embedding, 1 = all point one way; "
                 "the scale w) and the images trained over all epochs:\n\n" + diagnostics)
    if collapse:
        text += f"\nCollapse of the class means per epoch: ![{name} collapse]({name}_collapse.png)\n"
    return text


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """The rows of :func:`~dlde.analysis.sweep_stats.summarize_arms` as CSV (full precision; blank for
    NaN): the metrics of :func:`~dlde.analysis.sweep_stats.tabulated` and the diagnostics of
    :func:`shown_diagnostics`, so both tables of ``<sweep>.md`` come back from it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["arm", "n"] + [f"{m}_{k}" for m in (*tabulated(rows), *shown_diagnostics(rows))
                              for k in ("mean", "sd", "low", "high")]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([("" if isinstance(row[c], float) and not math.isfinite(row[c]) else row[c])
                             for c in columns])
    return path


def write_sweep(name: str, arms: Mapping[str, Sequence[str | os.PathLike]], out_dir: str | os.PathLike, *,
                parameters: Mapping[str, Any] | None = None, display_root: str | os.PathLike | None = None
                ) -> dict[str, Path]:
    """Aggregate one sweep's finished runs into ``out_dir/<name>.md/.csv/.json/.png/.pdf``.

    Args:
        name: the sweep's name.
        arms: arm name -> the run folders of its seeds (unfinished folders are skipped; their
            count shows in the ``seeds`` column).
        out_dir: e.g. ``figures/ablations``.
        parameters: what made the sweep (base parameters, arms, seeds), recorded in the
            ``.json`` for ``figures/index.md``.
        display_root: run folders are recorded relative to it when inside it.

    Returns:
        The paths written, by suffix (``md``, ``csv``, ``json``, ``png``, ``pdf``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = {arm: [run_summary(d) for d in dirs if RunFolder(d).is_finished()] for arm, dirs in arms.items()}
    rows = summarize_arms(summaries)
    curves = collapse_curves(arms)  # empty when no run has tracked means
    md = write_table_file(out_dir / f"{name}.md", sweep_markdown(name, rows, collapse=bool(curves)))
    csv_path = write_csv(rows, out_dir / f"{name}.csv")

    def shown(path) -> str:
        path = Path(path).resolve()
        if display_root is not None:
            try:
                return path.relative_to(Path(display_root).resolve()).as_posix()
            except ValueError:
                pass
        return str(path)

    record = {"sweep": name, "parameters": dict(parameters or {}),
              "runs": {arm: [shown(d) for d in dirs] for arm, dirs in arms.items()}}
    json_path = out_dir / f"{name}{SWEEP_RECORD_SUFFIX}"
    atomic_write_text(json_path, json.dumps(record, indent=1, default=str) + "\n")
    png, pdf = save_figure(plot_sweep(rows, name, summaries), out_dir, name)
    written = {"md": md, "csv": csv_path, "json": json_path, "png": png, "pdf": pdf}
    if curves:
        written["collapse_png"], written["collapse_pdf"] = save_figure(
            plot_collapse(curves, f"{name}: largest cosine between two class means"), out_dir, f"{name}_collapse")
    return written


def index_lines(ablations_dir: str | os.PathLike) -> list[str]:
    """The ``Sweeps`` section of ``figures/index.md`` (:data:`SWEEPS_HEADING`): every sweep written into
    ``ablations_dir`` (a folder :data:`ABLATIONS_FOLDER` beside index.md), read back from its ``.json``;
    empty when there is none."""
    folder = Path(ablations_dir)
    records = sorted(folder.glob(f"*{SWEEP_RECORD_SUFFIX}")) if folder.is_dir() else []
    if not records:
        return []
    rows = []
    for path in records:
        record = json.loads(path.read_text())
        name, parameters = record["sweep"], record.get("parameters", {})
        base = ", ".join(f"{k}={code_value(v)}" for k, v in (parameters.get("base") or {}).items()) or "defaults"
        arms = parameters.get("grid") or parameters.get("arms") or {}
        arms_text = "; ".join(f"{k}: {code_value(v)}" for k, v in arms.items())
        seeds = ", ".join(str(s) for s in parameters.get("seeds", []))
        rows.append([name, f"[{name}.md]({ABLATIONS_FOLDER}/{name}.md) ([csv]({ABLATIONS_FOLDER}/{name}.csv))",
                     f"[{name}.png]({ABLATIONS_FOLDER}/{name}.png) ([pdf]({ABLATIONS_FOLDER}/{name}.pdf))",
                     base, arms_text, seeds])
    return ["", f"{SWEEPS_HEADING} (`python -m dlde.pipeline --sweeps`, `make ablations`)", "",
            "Mean ± sd and 95 % t-interval over seeds; every arm's runs are listed in the `.json`.", "",
            markdown_table(["sweep", "table", "figure", "base", "arms", "seeds"], rows)]
