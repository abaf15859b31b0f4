"""The tables of the protocols: few-shot (:func:`few_shot_table`), unknown objects
(:func:`open_set_table`) and retrieval (:func:`retrieval_table`), each a markdown table written by
:func:`dlde.tables.markdown_table` with intervals by :func:`dlde.tables.interval_cell`. They read plain
dicts (results or their JSON), so a table can be rebuilt from a saved ``results.json``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dlde.tables import interval_cell, markdown_table

__all__ = ["few_shot_table", "open_set_seeds_table", "open_set_table", "retrieval_table"]


def few_shot_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The few-shot summary (:func:`dlde.protocols.fewshot.summarize`) as a markdown table: mean
    [95 % interval] over draws, or over base seeds of the per-seed means (column ``base seeds × draws``)."""
    seeds = any("base_seeds" in e for e in summary)
    header = ["method", "k", "base seeds × draws" if seeds else "draws", "novel AP", "novel AP50",
              "base AP (before → after)", "steps", "seconds"]
    return markdown_table(header, ([f"{e['method']}", f"{e['k']}",
                                    f"{e.get('base_seeds', 1)} × {e['draws']}" if seeds else f"{e['draws']}",
                                    interval_cell(e["novel_AP"]),
                                    interval_cell(e["novel_AP50"]),
                                    f"{e['base_AP_before']:.3f} → {interval_cell(e['base_AP'])}", f"{e['steps']}",
                                    interval_cell(e["seconds"], 1)] for e in summary))


def open_set_table(result: Mapping[str, Any]) -> str:
    """One row per model and score of :func:`dlde.protocols.openset.open_set_evaluation`
    (or its summary): AUROC, unknown recall at the known-precision point, WI, A-OSE; for a result
    pooled over base seeds (``base_seeds``), :func:`open_set_seeds_table`."""
    if "base_seeds" in result:
        return open_set_seeds_table(result)
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


def open_set_seeds_table(pooled: Mapping[str, Any]) -> str:
    """One row per model and unknown score of :func:`dlde.protocols.openset.pool_open_set`: mean
    [95 % interval over base seeds] of AUROC, unknown and known recall at 95 % known precision, and WI
    and A-OSE after flagging by the score at that point; first per model a row ``no flag`` (WI, A-OSE)."""
    header = ["model", "score", "AUROC", "unknown recall at 95 % known precision", "known recall there",
              "WI @ recall 0.8", "A-OSE"]
    rows = []
    for name, m in pooled["models"].items():
        rows.append([f"{name}", "no flag", "", "", "", interval_cell(m["wilderness_impact"]),
                     interval_cell(m["A-OSE"], 1)])
        for kind, s in m["scores"].items():
            rows.append([f"{name}", f"{kind}", interval_cell(s["auroc"]), interval_cell(s["unknown_recall"]),
                         interval_cell(s["known_recall"]), interval_cell(s["wilderness_impact_flagged"]),
                         interval_cell(s["A-OSE_flagged"], 1)])
    return markdown_table(header, rows)


def retrieval_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per model (results of :func:`dlde.protocols.retrieval.retrieval_evaluation`) MAP@R
    and Recall@k, then a second table of MAP@R per class. For results pooled over base seeds
    (:func:`dlde.protocols.retrieval.pool_retrieval`, ``base_seeds`` per model) a column of
    the base seeds, every value a mean [95 % interval over base seeds], per class the means."""
    pooled = any("base_seeds" in r for r in results.values())
    cell = interval_cell if pooled else (lambda value: f"{value:.3f}")
    mean = (lambda value: value["mean"]) if pooled else (lambda value: value)
    ks = sorted(int(key.split("@")[1]) for key in next(iter(results.values())) if key.startswith("Recall@"))
    header = ["model"] + (["base seeds"] if pooled else []) + ["gallery", "MAP@R"] + [f"Recall@{k}" for k in ks]
    rows = [[f"{name}"] + ([f"{r['base_seeds']}"] if pooled else []) + [f"{r['gallery']}", cell(r["MAP@R"])]
            + [cell(r[f"Recall@{k}"]) for k in ks]
            + [f"{1000 * mean(r['seconds_per_query']):.3f}"] for name, r in results.items()]
    classes = sorted({c for r in results.values() for c in r["per_class"]})
    per_class = [[f"{name}"] + [f"{mean(r['per_class'][c]['MAP@R']):.3f}" if c in r["per_class"] else "n/a"
                                for c in classes] for name, r in results.items()]
    return (markdown_table(header + ["ms per query"], rows) + "\n\n"
            + markdown_table(["model"] + [f"MAP@R {c}" for c in classes], per_class))
