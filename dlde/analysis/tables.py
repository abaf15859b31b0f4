"""Markdown tables of the analyses: one table writer, one cell of a mean and its interval, and
the tables of the few-shot, unknown-object and retrieval protocols.

Every table of :mod:`dlde.analysis` (these and the sweep tables of :mod:`dlde.analysis.aggregate`)
is written by :func:`markdown_table`; a mean with its t-interval
(:func:`dlde.analysis.stats.t_interval`) by :func:`interval_cell`. The functions read plain
dicts (results or their JSON), so a table can be rebuilt from a saved ``results.json``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: the header, the separator, one line per row (no trailing newline).

    Args:
        header: the column titles.
        rows: per row, its cells already formatted (as many as ``header``).
    """
    lines = [_line(header), "|" + "---|" * len(header)]
    lines += [_line(row) for row in rows]
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def interval_cell(stat: Mapping[str, float], digits: int = 3, *, sd: bool = False, missing: str = "n/a") -> str:
    """``mean [low, high]`` of a :func:`dlde.analysis.stats.t_interval` (``mean ± sd [low, high]`` with ``sd``).

    Args:
        stat: ``mean``, ``low``, ``high`` (and ``sd`` when shown).
        digits: decimals of every number.
        sd: show the standard deviation after the mean.
        missing: the cell when the mean is NaN (no value).

    The parts that are NaN (a single value has no spread and no interval) are left out.
    """
    if not _finite(stat["mean"]):
        return missing
    cell = f"{stat['mean']:.{digits}f}"
    if sd and _finite(stat["sd"]):
        cell += f" ± {stat['sd']:.{digits}f}"
    if _finite(stat["low"]) and _finite(stat["high"]):
        cell += f" [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"
    return cell


def few_shot_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The few-shot summary (:func:`dlde.analysis.fewshot.summarize`) as a markdown table: mean
    [95 % interval] over draws."""
    header = ["method", "k", "draws", "novel AP", "novel AP50", "base AP (before → after)", "steps", "seconds"]
    return markdown_table(header, ([f"{e['method']}", f"{e['k']}", f"{e['draws']}", interval_cell(e["novel_AP"]),
                                    interval_cell(e["novel_AP50"]),
                                    f"{e['base_AP_before']:.3f} → {interval_cell(e['base_AP'])}", f"{e['steps']}",
                                    interval_cell(e["seconds"], 1)] for e in summary))


def open_set_table(result: Mapping[str, Any]) -> str:
    """One row per model and score of :func:`dlde.analysis.openset_protocol.open_set_evaluation`
    (or its summary): AUROC, unknown recall at the known-precision point, WI, A-OSE."""
    header = ["model", "score", "AUROC", "unknown recall (known recall) at 95 % known precision", "WI @ recall 0.8",
              "A-OSE (flagged)"]
    rows = []
    for name, m in result["models"].items():
        for kind in ("cosine", "probability"):
            if kind not in m:
                continue
            primary = kind == m["primary_score"]
            aose = f"{m['A-OSE']} ({m['A-OSE_flagged']})" if primary else f"{m['A-OSE']}"
            rows.append([f"{name}", f"{kind}", f"{m[kind]['auroc']:.3f}",
                         f"{m[kind]['unknown_recall']:.3f} ({m[kind]['known_recall']:.3f})",
                         f"{m['wilderness_impact']:.3f}", aose])
    return markdown_table(header, rows)


def retrieval_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per model (results of :func:`dlde.analysis.retrieval_protocol.retrieval_evaluation`) MAP@R
    and Recall@k, then a second table of MAP@R per class."""
    ks = sorted(int(key.split("@")[1]) for key in next(iter(results.values())) if key.startswith("Recall@"))
    header = ["model", "gallery", "MAP@R"] + [f"Recall@{k}" for k in ks] + ["ms per query"]
    rows = [[f"{name}", f"{r['gallery']}", f"{r['MAP@R']:.3f}"] + [f"{r[f'Recall@{k}']:.3f}" for k in ks]
            + [f"{1000 * r['seconds_per_query']:.3f}"] for name, r in results.items()]
    classes = sorted({c for r in results.values() for c in r["per_class"]})
    per_class = [[f"{name}"] + [f"{r['per_class'][c]['MAP@R']:.3f}" if c in r["per_class"] else "n/a"
                                for c in classes] for name, r in results.items()]
    return (markdown_table(header, rows) + "\n\n"
            + markdown_table(["model"] + [f"MAP@R {c}" for c in classes], per_class))
