"""The front door: a README of at most 200 lines over docs/, one click from every document, with
links and images that exist, Python that runs as written, and a valid CITATION.cff."""
import os
import re
from pathlib import Path

import pytest
import yaml

from dlde.pipeline.readme import DOCS, anchors, broken_links, documents, heading_anchor, render_documents, table_files

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in documents()}
README = DOCUMENTS["README.md"]
LINK_TARGET = re.compile(r"\]\(([^)\s]+)\)")


def python_blocks(text: str) -> list[str]:
    """The code of the ```python blocks of a markdown text."""
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_the_readme_has_at_most_200_lines():
    assert len(README.splitlines()) <= 200


def test_the_documents_are_the_readme_and_docs():
    assert list(DOCUMENTS)[0] == "README.md"
    assert {"docs/results.md", "docs/large-vocabularies.md", "docs/speed.md", "docs/reproducibility.md",
            "docs/training.md", "docs/notebooks.md", "docs/guarantees.md", "docs/differences.md",
            "docs/architecture.md", "docs/changes.md"} <= set(DOCUMENTS)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_relative_link_and_image_exists(name):
    assert broken_links(DOCUMENTS[name], ROOT / name, name) == []


def test_every_document_is_one_click_from_the_readme():
    linked = {target.partition("#")[0] for target in LINK_TARGET.findall(README)}
    assert sorted(name for name in DOCUMENTS if name.startswith(f"{DOCS}/") and name not in linked) == []


def test_every_table_file_is_shown_or_linked_by_a_document():
    """A result of the old README is one click away: its table file is shown in a document (a marker
    names it) or linked from one."""
    named = {source for _, report in render_documents().values() for source in report.sources}
    for name, text in DOCUMENTS.items():
        named |= {Path(os.path.normpath(Path(name).parent / target.partition("#")[0])).as_posix()
                  for target in LINK_TARGET.findall(text)}
    missing = [path.relative_to(ROOT).as_posix() for path in table_files(ROOT)
               if path.relative_to(ROOT).as_posix() not in named]
    assert missing == []


def test_every_figure_of_the_figures_index_is_reachable_from_the_readme():
    assert "figures/index.md" in LINK_TARGET.findall(README) or "](figures/index.md)" in README
    index = (ROOT / "figures" / "index.md").read_text(encoding="utf-8")
    assert broken_links(index, ROOT / "figures" / "index.md") == []


@pytest.mark.parametrize(("title", "anchor"), [
    ("Headline: three heads, five seeds", "headline-three-heads-five-seeds"),
    ("Speed against torchvision's RetinaNet", "speed-against-torchvisions-retinanet"),
    ("After `make figures`: a run folder that is taken", "after-make-figures-a-run-folder-that-is-taken"),
    ("The seed's spelling", "the-seeds-spelling"),
    ("`means_lr` and the [collapse](x.md)", "means_lr-and-the-collapse"),
])
def test_headings_get_githubs_anchors(title, anchor):
    assert heading_anchor(title) == anchor


def test_a_repeated_heading_is_numbered_and_code_blocks_hold_no_headings():
    text = "# Results\n\n## Notes\n\n```bash\n# not a heading\n```\n\n## Notes\n"
    assert anchors(text) == {"results", "notes", "notes-1"}


def test_the_citation_file_is_cff_1_2_0():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0"
    assert {"cff-version", "message", "title", "authors"} <= set(citation)
    for author in citation["authors"] + [a for ref in citation.get("references", []) for a in ref["authors"]]:
        assert author.get("name") or author.get("family-names") or author.get("alias"), author
    for reference in citation.get("references", []):
        assert {"type", "title", "authors"} <= set(reference)
    assert "CITATION.cff" in LINK_TARGET.findall(README)


@pytest.mark.slow
def test_the_python_of_the_documents_runs_as_written(tmp_path, monkeypatch):
    """Every ```python block of README.md and docs/, run in a folder holding a tiny finished run at
    ``runs/dlde`` (what ``make figures`` leaves there, in small)."""
    from dlde.train import TrainConfig, train

    monkeypatch.chdir(tmp_path)
    train(TrainConfig.from_dict({"run_dir": "runs/dlde", "data_root": str(tmp_path / "data"), "progress": False,
                                 "epochs": 1, "max_train_batches": 1}, preset="tiny"))
    blocks = [(name, code) for name, text in DOCUMENTS.items() for code in python_blocks(text)]
    assert [name for name, _ in blocks].count("README.md") == 1 and len(blocks) >= 2
    for name, code in blocks:
        exec(compile(code, f"<python block of {name}>", "exec"), {"__name__": "__main__"})  # noqa: S102
    assert (tmp_path / "model.pt").is_file()  # the README's save
