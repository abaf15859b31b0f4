"""The tables of the protocols: few-shot (:func:`few_shot_table`), unknown objects
(:func:`open_set_table`) and retrieval (:func:`retrieval_table`), each a markdown table written by
:func:`dlde.tables.markdown_table` with intervals by :func:`dlde.tables.interval_cell`. They read the
protocols' typed results, which a saved ``results.json`` gives back (their ``from_dict``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from dlde.tables import interval_cell, markdown_table

from .fewshot.results import FewShotSummary
from .openset import PooledOpenSet
from .retrieval import PooledRetrieval

__all__ = ["few_shot_table", "open_set_table", "retrieval_table"]


def few_shot_table(summary: Sequence[FewShotSummary]) -> str:
    """The few-shot summary (:func:`dlde.protocols.fewshot.summarize`) as a markdown table: mean
    [95 % interval] over draws, or over base seeds of the per-seed means (column ``base seeds × draws``)."""
    seeds = any(e.base_seeds is not None for e in summary)
    header = ["method", "k", "base seeds × draws" if seeds else "draws", "novel AP", "novel AP50",
              "base AP (before → after)", "steps", "seconds"]
    return markdown_table(header, ([f"{e.method}", f"{e.k}", f"{e.base_seeds or 1} × {e.draws}" if seeds
                                    else f"{e.draws}", interval_cell(e.novel_AP), interval_cell(e.novel_AP50),
                                    f"{e.base_AP_before:.3f} → {interval_cell(e.base_AP)}", f"{e.steps}",
                                    interval_cell(e.seconds, 1)] for e in summary))


def open_set_table(pooled: PooledOpenSet) -> str:
    """One row per model and unknown score of :func:`dlde.protocols.openset.pool_open_set`: mean
    [95 % interval over base seeds] of AUROC, unknown and known recall at 95 % known precision, and WI
    and A-OSE after flagging by the score at that point; first per model a row ``no flag`` (WI, A-OSE)."""
    header = ["model", "score", "AUROC", "unknown recall at 95 % known precision", "known recall there",
              "WI @ recall 0.8", "A-OSE"]
    rows = []
    for name, m in pooled.models.items():
        rows.append([f"{name}", "no flag", "", "", "", interval_cell(m.wilderness_impact), interval_cell(m.a_ose, 1)])
        for kind, s in m.scores.items():
            rows.append([f"{name}", f"{kind}", interval_cell(s.auroc), interval_cell(s.unknown_recall),
                         interval_cell(s.known_recall), interval_cell(s.wilderness_impact_flagged),
                         interval_cell(s.a_ose_flagged, 1)])
    return markdown_table(header, rows)


def retrieval_table(results: Mapping[str, PooledRetrieval]) -> str:
    """Per model (:func:`dlde.protocols.retrieval.pool_retrieval`) its base seeds, gallery, MAP@R and
    Recall@k, each a mean [95 % interval over base seeds], and the milliseconds per query; then a
    second table of the mean MAP@R per class."""
    ks = sorted(next(iter(results.values())).recall)
    header = ["model", "base seeds", "gallery", "MAP@R"] + [f"Recall@{k}" for k in ks] + ["ms per query"]
    rows = [[f"{name}", f"{r.base_seeds}", f"{r.gallery}", interval_cell(r.map_at_r)]
            + [interval_cell(r.recall[k]) for k in ks] + [f"{1000 * r.seconds_per_query['mean']:.3f}"]
            for name, r in results.items()]
    classes = sorted({c for r in results.values() for c in r.per_class})
    per_class = [[f"{name}"] + [f"{r.per_class[c]['mean']:.3f}" if c in r.per_class else "n/a" for c in classes]
                 for name, r in results.items()]
    return (markdown_table(header, rows) + "\n\n"
            + markdown_table(["model"] + [f"MAP@R {c}" for c in classes], per_class))
