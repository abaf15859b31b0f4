"""The one table writer, the interval cell and the t-interval: the committed tables come back
byte for byte from the committed numbers.

A table file ends with a provenance line (commit, command, date: ``write_table_file``) that no
saved number can give back; the tests rebuild everything else of a file byte for byte
(``split_provenance`` takes that line off), so they hold for the committed files with or without
one. The provenance line itself is tested in ``tests/test_readme_tables.py``."""
import csv
import json
import math
from pathlib import Path

import pytest

from dlde.analysis.stats import t_interval
from dlde.protocols.fewshot import FewShotSummary
from dlde.protocols.fewshot.cli import TABLE_TITLE, sections
from dlde.protocols.openset import PooledOpenSet
from dlde.protocols.retrieval import PooledRetrieval
from dlde.protocols.tables import few_shot_table, open_set_table, retrieval_table
from dlde.reports.sweeps import sweep_markdown
from dlde.tables import interval_cell, markdown_table, split_provenance

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def _nan_for_null(value):
    """JSON ``null`` (how a NaN is saved) back to NaN, everywhere in ``value``."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return value


def test_markdown_table_lines():
    assert markdown_table(["a", "b"], [["1", "2"], ["x", ""]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n| x |  |"
    assert markdown_table(["a"], []) == "| a |\n|---|"


def test_interval_cell_leaves_out_what_is_nan():
    stat = t_interval([1.0, 2.0, 3.0])
    half = stat["high"] - stat["mean"]
    assert interval_cell(stat) == f"2.000 [{2 - half:.3f}, {2 + half:.3f}]"
    assert interval_cell(stat, 1, sd=True) == f"2.0 ± 1.0 [{2 - half:.1f}, {2 + half:.1f}]"
    assert interval_cell(t_interval([0.25])) == "0.250"
    assert interval_cell(t_interval([])) == "n/a" and interval_cell(t_interval([]), sd=True, missing="") == ""


def test_the_committed_few_shot_benchmark_tables_come_back_from_its_json():
    data = _nan_for_null(json.loads((FIGURES / "few_shot_benchmark.json").read_text()))
    text = split_provenance((FIGURES / "few_shot_benchmark.md").read_text())[0]
    for table in (few_shot_table([FewShotSummary.from_dict(e) for e in data["few_shot"]]),
                  open_set_table(PooledOpenSet.from_dict(data["open_set"])),
                  retrieval_table({name: PooledRetrieval.from_dict(r) for name, r in data["retrieval"].items()})):
        assert f"\n\n{table}\n\n" in text + "\n"  # a whole block (the last one ends the file)


def test_the_few_shot_command_writes_the_committed_table_file_from_its_json():
    """``python -m dlde.protocols.fewshot --table`` writes what the benchmark script it replaced wrote."""
    data = _nan_for_null(json.loads((FIGURES / "few_shot_benchmark.json").read_text()))
    text = split_provenance((FIGURES / "few_shot_benchmark.md").read_text())[0]
    parts = sections([FewShotSummary.from_dict(e) for e in data["few_shot"]], data["skipped_shots"],
                     PooledOpenSet.from_dict(data["open_set"]),
                     {name: PooledRetrieval.from_dict(r) for name, r in data["retrieval"].items()},
                     len(data["base_seeds"]))
    assert "\n\n".join([TABLE_TITLE] + parts) + "\n" == text


@pytest.mark.parametrize("csv_file", sorted((FIGURES / "ablations").glob("*.csv")), ids=lambda p: p.stem)
def test_the_committed_sweep_tables_come_back_from_their_csv(csv_file):
    rows = []
    with csv_file.open() as handle:  # full precision, blank for NaN
        for saved in csv.DictReader(handle):
            arm, n = saved.pop("arm"), int(saved.pop("n"))
            rows.append({"arm": arm, "n": n} | {key: math.nan if value == "" else float(value)
                                                for key, value in saved.items()})
    text = split_provenance(csv_file.with_suffix(".md").read_text())[0]
    collapse = csv_file.with_name(f"{csv_file.stem}_collapse.png").exists()
    assert text == sweep_markdown(csv_file.stem, rows, collapse=collapse)  # the whole file but its provenance
