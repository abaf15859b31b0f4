"""Aggregate the runs of a sweep over seeds: tables and figures with confidence intervals.

A sweep (``figures.yaml``, section ``sweeps``) trains every arm once per seed. For each run
:func:`run_summary` reads the final numbers from its folder; :func:`summarize_arms` gives,
per arm, the number of seeds, the mean, the sample standard deviation and a 95 % confidence
interval of the mean from the t-distribution over seeds; :func:`write_sweep` writes
``<out_dir>/<sweep>.md``, ``.csv``, ``.json`` (what made it, for ``figures/index.md``) and a
figure with error bars (``.png`` + ``.pdf``). Runs evaluated with LVIS's frequency buckets (a
large-vocabulary dataset such as ``glyphs``) add the columns of :data:`VOCABULARY_METRICS`.

Everything here is a pure function of run folders or metric dicts, so it is tested on
hand-made inputs.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlde.evaluation.lvis_eval import FREQUENCY_BUCKETS
from dlde.files import atomic_write_text
from dlde.train.runs import RunFolder

from .plotting import LINES, MARKERS, figure_size, print_style, save_figure
from .stats import CONFIDENCE, t_interval
from .tables import interval_cell, markdown_table, write_table_file

#: The numbers tabulated per arm, in order, with their column titles.
METRICS: dict[str, str] = {"AP": "AP", "AP50": "AP50", "AP75": "AP75",
                           "min_angle_deg": "min. angle between means (°)", "kappa": "final κ̂",
                           "ECE": "ECE (IoU ≥ 0.5)"}
#: Tabulated only when the runs were evaluated with LVIS's frequency buckets (so the tables of the
#: digits sweeps keep their columns): APr, APc, APf of the last epoch and the training time per
#: epoch (the mean over epochs of ``train_time_s``, without validation), in seconds.
VOCABULARY_METRICS: dict[str, str] = {"APr": "APr", "APc": "APc", "APf": "APf",
                                      "epoch_time_s": "training time per epoch (s)"}
BUCKET_METRICS = tuple(FREQUENCY_BUCKETS)  # APr, APc, APf
#: What the tracked means did, from the last epoch's row of ``metrics.jsonl`` (runs written since
#: the per-epoch diagnostics, :func:`dlde.model.means.means_diagnostics`), and the images trained
#: over all epochs (the budget; repeat-factor sampling makes epochs longer). A second table.
DIAGNOSTIC_METRICS: dict[str, str] = {
    "cos_start_r": "cos to start, rare", "cos_start_c": "cos to start, common", "cos_start_f": "cos to start, frequent",
    "embedding_norm": "length of the mean embedding", "w": "w (mean over classes)", "images": "images trained"}
#: Keys of the metrics row that the diagnostics read.
_DIAGNOSTIC_KEYS = {"cos_start_r": "means_cos_to_start_r", "cos_start_c": "means_cos_to_start_c",
                    "cos_start_f": "means_cos_to_start_f", "embedding_norm": "mean_embedding_norm", "w": "w_mean"}
#: Column order when the vocabulary columns are shown.
_ORDER = ("AP", "AP50", "AP75", "APr", "APc", "APf", "min_angle_deg", "kappa", "ECE", "epoch_time_s")
#: Where 01_train writes its results.json inside a run folder (holds the calibration error).
TRAIN_RESULTS = Path("01_train") / "results.json"
SWEEP_RECORD_SUFFIX = ".json"  # <out_dir>/<sweep>.json: what made the table (read by figures/index.md)


# ------------------------------------------------------------------------------ statistics
def min_angle_deg(means: Any) -> float:
    """Smallest angle between two class means, in degrees.

    Args:
        means: (C, d) class mean directions (need not be unit length). A zero mean (a class
            never tracked) has no direction and is left out.

    Returns:
        min over pairs ``i != j`` of ``arccos(cos(μ_i, μ_j))`` in degrees; NaN with fewer than
        two usable means.
    """
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2:
        raise ValueError(f"means must be (C, d), got shape {means.shape}")
    norms = np.linalg.norm(means, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    if usable.sum() < 2:
        return float("nan")
    unit = means[usable] / norms[usable, None]  # (C', d)
    cosines = unit @ unit.T  # (C', C')
    np.fill_diagonal(cosines, -np.inf)
    return float(np.degrees(np.arccos(np.clip(cosines.max(), -1.0, 1.0))))


def final_kappa(kappa_history: Any) -> float:
    """Mean over classes of the last row of ``kappa_history`` (E+1, C); NaN entries are skipped."""
    last = np.asarray(kappa_history, dtype=np.float64)[-1]
    return float(np.nanmean(last)) if np.isfinite(last).any() else float("nan")


# ------------------------------------------------------------------------------- run folders
def run_summary(run_dir: str | os.PathLike) -> dict[str, float]:
    """The final numbers of one finished run folder.

    Returns:
        ``AP``, ``AP50``, ``AP75`` of the last epoch of ``metrics.jsonl``; ``min_angle_deg``
        from the last row of ``means_history.npy`` and ``kappa`` from ``kappa_history.npy``
        (NaN for heads without tracked means); ``ECE`` from 01_train's ``results.json``. Only
        when the run has them: ``APr``, ``APc``, ``APf`` (when the last epoch holds them) and
        ``epoch_time_s`` (when the epochs hold ``train_time_s``).

    Raises:
        ValueError: the folder holds no finished epoch.
    """
    run_dir = Path(run_dir)
    rows = RunFolder(run_dir).metrics()
    if not rows:
        raise ValueError(f"{run_dir}: no finished epoch in metrics.jsonl")
    last = rows[-1]
    nan = float("nan")
    summary = {key: (nan if last.get(key) is None else float(last[key])) for key in ("AP", "AP50", "AP75")}
    means, kappa = run_dir / "means_history.npy", run_dir / "kappa_history.npy"
    summary["min_angle_deg"] = min_angle_deg(np.load(means, allow_pickle=False)[-1]) if means.exists() else nan
    summary["kappa"] = final_kappa(np.load(kappa, allow_pickle=False)) if kappa.exists() else nan
    results = run_dir / TRAIN_RESULTS
    ece = json.loads(results.read_text()).get("ECE") if results.exists() else None
    summary["ECE"] = nan if ece is None else float(ece)
    summary.update({key: (nan if last[key] is None else float(last[key])) for key in BUCKET_METRICS if key in last})
    times = [float(row["train_time_s"]) for row in rows if row.get("train_time_s") is not None]
    if times:
        summary["epoch_time_s"] = float(np.mean(times))
    summary.update({name: float(last[key]) for name, key in _DIAGNOSTIC_KEYS.items() if last.get(key) is not None})
    if all(row.get("train_images") is not None for row in rows):
        summary["images"] = float(sum(row["train_images"] for row in rows))
    return summary


def has_buckets(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any row of :func:`summarize_arms` holds a finite bucket metric (APr, APc or APf)."""
    return any(math.isfinite(row.get(f"{metric}_mean", math.nan)) for row in rows for metric in BUCKET_METRICS)


def tabulated(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics of the table of ``rows``: :data:`METRICS`, and :data:`VOCABULARY_METRICS`
    where the runs were evaluated with frequency buckets (:func:`has_buckets`)."""
    return list(_ORDER) if has_buckets(rows) else list(METRICS)


def _title(metric: str) -> str:
    return METRICS.get(metric) or VOCABULARY_METRICS[metric]


def max_mean_cosine(means_history: Any) -> np.ndarray:
    """``(E + 1,)`` largest cosine between two different class means at every epoch of a
    ``(E + 1, C, d)`` history: 1 when two means have collapsed onto each other."""
    history = np.asarray(means_history, dtype=np.float64)
    norms = np.linalg.norm(history, axis=2, keepdims=True)
    unit = np.divide(history, norms, out=np.zeros_like(history), where=norms > 0)
    cosines = unit @ unit.transpose(0, 2, 1)  # (E + 1, C, C)
    classes = history.shape[1]
    off = cosines[:, ~np.eye(classes, dtype=bool)].reshape(len(history), -1)
    valid = (norms[:, :, 0] > 0)[:, :, None] & (norms[:, :, 0] > 0)[:, None, :]
    off = np.where(valid[:, ~np.eye(classes, dtype=bool)], off, -np.inf)
    out = off.max(axis=1)
    return np.where(np.isfinite(out), out, np.nan)


@print_style
def plot_collapse(arms: Mapping[str, Sequence[str | os.PathLike]], title: str = ""):
    """The collapse of class means, as a figure one column wide: per arm, the largest cosine between
    two class means after every epoch (mean over seeds, band = min..max), each arm with its own
    marker and line style. Arms without means are skipped.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figure_size(2.6))
    for index, (arm, dirs) in enumerate(arms.items()):
        curves = [max_mean_cosine(np.load(Path(d) / "means_history.npy", allow_pickle=False))
                  for d in dirs if (Path(d) / "means_history.npy").exists()]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        stacked = np.stack([c[:length] for c in curves])
        epochs = np.arange(length)
        with warnings.catch_warnings():  # epoch 0 of zero starting means has no cosine: NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = np.nanmean(stacked, axis=0), np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0)
        line, = ax.plot(epochs, mean, marker=MARKERS[index % len(MARKERS)], linestyle=LINES[index % len(LINES)],
                        ms=3, label=f"{arm} (n={len(curves)})")
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel("max cosine between\ntwo class means")
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_title(title or "collapse of the class means")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def summarize_arms(arms: Mapping[str, Sequence[Mapping[str, float]]],
                   confidence: float = CONFIDENCE) -> list[dict[str, Any]]:
    """Per arm, :func:`t_interval` of every metric of :data:`METRICS` over its seeds.

    Args:
        arms: arm name -> one summary per seed (as from :func:`run_summary`).
        confidence: coverage of the intervals.

    Returns:
        One row per arm, in the order given: ``arm``, ``n`` (seeds) and, per metric ``m``,
        ``m_mean``, ``m_sd``, ``m_low``, ``m_high``; the metrics of :data:`VOCABULARY_METRICS`
        too when any summary holds a bucket metric.
    """
    buckets = any(metric in s for summaries in arms.values() for s in summaries for metric in BUCKET_METRICS)
    metrics = list(_ORDER if buckets else METRICS)
    metrics += [m for m in DIAGNOSTIC_METRICS if any(m in s for summaries in arms.values() for s in summaries)]
    rows = []
    for arm, summaries in arms.items():
        row: dict[str, Any] = {"arm": arm, "n": len(summaries)}
        for metric in metrics:
            stats = t_interval([s.get(metric) for s in summaries], confidence)
            row.update({f"{metric}_{key}": stats[key] for key in ("mean", "sd", "low", "high")})
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------- output
def _digits(metric: str) -> int:
    return 0 if metric == "images" else 1 if metric in ("min_angle_deg", "kappa", "epoch_time_s", "w") else 3


def diagnostics_table(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The :data:`DIAGNOSTIC_METRICS` of ``rows`` (those any arm has) as a markdown table like
    :func:`sweep_table`'s; None when no arm has any."""
    metrics = [m for m in DIAGNOSTIC_METRICS if any(math.isfinite(r.get(f"{m}_mean", math.nan)) for r in rows)]
    if not metrics:
        return None
    header = ["arm", "seeds"] + [f"{DIAGNOSTIC_METRICS[m]} mean ± sd [{100 * CONFIDENCE:g} % CI]" for m in metrics]
    cells = [[str(row["arm"]), str(row["n"])]
             + [interval_cell({key: row[f"{m}_{key}"] for key in ("mean", "sd", "low", "high")}, _digits(m),
                              sd=True, missing="") for m in metrics] for row in rows]
    return markdown_table(header, cells) + "\n"


def sweep_table(rows: Sequence[Mapping[str, Any]], confidence: float = CONFIDENCE) -> str:
    """The rows of :func:`summarize_arms` as a markdown table: ``mean ± sd [low, high]`` per cell.

    A metric an arm does not have (e.g. the angle for the sigmoid head) is left blank; the
    columns are those of :func:`tabulated`.
    """
    percent = f"{100 * confidence:g} %"
    metrics = tabulated(rows)
    header = ["arm", "seeds"] + [f"{_title(metric)} mean ± sd [{percent} CI]" for metric in metrics]
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
    """The rows of :func:`summarize_arms` as CSV (full precision; blank for NaN), the metrics of :func:`tabulated`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["arm", "n"] + [f"{m}_{k}" for m in tabulated(rows) for k in ("mean", "sd", "low", "high")]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([("" if isinstance(row[c], float) and not math.isfinite(row[c]) else row[c])
                             for c in columns])
    return path


@print_style
def plot_sweep(rows: Sequence[Mapping[str, Any]], title: str = "",
               seeds: Mapping[str, Sequence[Mapping[str, float]]] | None = None, columns: int = 3):
    """Error-bar figure of a sweep: one panel per metric, per arm its mean and confidence interval.

    Args:
        rows: from :func:`summarize_arms`.
        title: figure title (e.g. the sweep's name).
        seeds: arm -> the per-seed summaries the rows were computed from; drawn as grey
            points next to each mean when given.
        columns: panels per row of the figure.

    Returns:
        A matplotlib figure two columns wide (one for a single panel); metrics no arm has (e.g. κ̂
        in a sigmoid-only sweep) are omitted.
    """
    import matplotlib.pyplot as plt

    metrics = [m for m in tabulated(rows) if any(math.isfinite(r[f"{m}_mean"]) for r in rows)] or ["AP"]
    ncols = min(columns, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=figure_size(0.3 + 2.2 * nrows, columns=2 if ncols > 1 else 1),
                             squeeze=False)
    x = np.arange(len(rows))
    labels = [str(r["arm"]) for r in rows]
    for ax, metric in zip(axes.flat, metrics):
        mean = np.array([r[f"{metric}_mean"] for r in rows], dtype=np.float64)  # (arms,)
        low = np.array([r[f"{metric}_low"] for r in rows], dtype=np.float64)
        high = np.array([r[f"{metric}_high"] for r in rows], dtype=np.float64)
        has_ci = np.isfinite(low) & np.isfinite(high)
        errors = np.where(has_ci, np.stack([mean - low, high - mean]), 0.0)  # (2, arms)
        if seeds is not None:
            for position, row in zip(x, rows):
                values = np.array([np.nan if s.get(metric) is None else s[metric] for s in seeds.get(row["arm"], [])],
                                  dtype=np.float64)
                ax.plot(np.full(values.shape, position + 0.15), values, ".", color="0.55", markersize=5)
        ax.errorbar(x, mean, yerr=errors, fmt="o", capsize=4, color="tab:blue")
        ax.set_xticks(x, labels, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_title(_title(metric))
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(f"{title}: mean and {100 * CONFIDENCE:g} % t-interval over seeds (grey: single seeds)"
                     if seeds is not None else f"{title}: mean and {100 * CONFIDENCE:g} % t-interval over seeds")
    fig.tight_layout()
    return fig


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
    collapse = any((Path(d) / "means_history.npy").exists() for dirs in arms.values() for d in dirs)
    md = write_table_file(out_dir / f"{name}.md", sweep_markdown(name, rows, collapse=collapse))
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
    if collapse:
        written["collapse_png"], written["collapse_pdf"] = save_figure(
            plot_collapse(arms, f"{name}: largest cosine between two class means"), out_dir, f"{name}_collapse")
    return written
