"""The results tables of README.md and docs/*.md are their files' tables (``python -m
dlde.pipeline.readme``), markers resolve from the repository root in every document, and every table
file can name the commit, command and date that made it (``dlde.tables``)."""
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dlde.kernels import setting as kernel_setting
from dlde.pipeline.readme import documents, main, render, render_documents, table_commits, table_files
from dlde.tables import (
    PROVENANCE,
    code_commit,
    command_line,
    missing_provenance,
    provenance_line,
    split_provenance,
    write_table_file,
)

ROOT = Path(__file__).resolve().parents[1]
#: Each document (README.md, docs/*.md) by its name relative to the root -> its text.
DOCUMENTS = {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in documents()}
LINE = "<sub>commit abc1234 · `make ablations` · 2026-11-30 · portable kernels</sub>"


def all_sources() -> list[str]:
    """Every table file a block of a document names, in order."""
    return list(dict.fromkeys(source for _, report in render_documents().values() for source in report.sources))


def documents_copy(folder: Path) -> Path:
    """The documents and the files their blocks and links need, copied under ``folder``; the README's path."""
    for source in all_sources():
        (folder / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, folder / source)
    for name, text in DOCUMENTS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    linked = [path for path in (ROOT / "figures").rglob("*") if path.is_file()] + [ROOT / "CITATION.cff"]
    for path in linked:  # what the documents link to besides the table files, as links to the files here
        target = folder / path.relative_to(ROOT)
        if not target.exists():  # the copied table files stay copies: a test may write them
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return folder / "README.md"


def absent_number() -> str:
    """A three-decimal number no table file of any document holds (a quote the check must refuse)."""
    texts = [(ROOT / source.split("#")[0]).read_text(encoding="utf-8") for source in all_sources()]
    return next(number for number in (f"0.{n:03d}" for n in range(999, 0, -1))
                if not any(number in text for text in texts))


def holding(pattern: str) -> tuple[str, re.Match]:
    """The document whose text matches ``pattern`` (the first) and the match."""
    for name, text in DOCUMENTS.items():
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            return name, match
    raise AssertionError(f"no document matches {pattern!r}")


def block_line(text: str, marker: str) -> int:
    """The 1-based line of ``marker`` in ``text``."""
    return text.split("\n").index(marker) + 1


# --------------------------------------------------------------------------- the documents themselves
@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_tables_of_each_document_equal_their_files(name):
    report = render(DOCUMENTS[name], ROOT, name)  # markers resolve from the root, in docs/ too
    assert report.differing == [] and report.unquoted == []
    assert report.text == DOCUMENTS[name]


def test_the_documents_show_the_results_tables():
    sources = set(all_sources())
    assert {"figures/metrics.md", "figures/ablations/headline.md", "figures/few_shot_benchmark.md",
            "figures/benchmarks/step_time.md", "figures/ablations/vocabulary_heads.md"} <= sources
    assert render(DOCUMENTS["README.md"], ROOT).sources  # the README's findings come from table files too


def test_every_committed_table_file_names_its_provenance_and_all_name_one_commit():
    """Every number of the documents comes from one version of the code: re-running one table after a
    change of dlde/ means re-running them all (``python -m dlde.pipeline.readme`` warns too)."""
    files = table_files(ROOT, all_sources())
    assert len(files) >= 13 and missing_provenance(files) == []
    commits = table_commits(files)
    assert len(commits) == 1, {commit: [path.relative_to(ROOT).as_posix() for path in paths]
                               for commit, paths in commits.items()}
    assert "+changes" not in next(iter(commits))


def test_a_table_that_differs_from_its_file_is_named_and_rewritten(tmp_path, capsys):
    readme = documents_copy(tmp_path)
    marker = "<!-- table: figures/metrics.md -->"
    name, row = holding(r"^\| dlde \| dlde \| digits \| 16 \| (\d\.\d{3}) \|")
    assert marker in DOCUMENTS[name]
    changed = "0.999" if row.group(1) != "0.999" else "0.998"  # an AP the file does not hold
    edited = DOCUMENTS[name].replace(row.group(0), row.group(0).replace(row.group(1), changed))
    assert edited != DOCUMENTS[name]
    (tmp_path / name).write_text(edited, encoding="utf-8")
    assert main(["--check", "--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert f"{name}:{block_line(DOCUMENTS[name], marker)}: the table differs from figures/metrics.md" in err
    assert err.count("differs") == 1
    assert (tmp_path / name).read_text(encoding="utf-8") == edited  # --check writes nothing
    assert main(["--readme", str(readme)]) == 0
    assert f"{name}: rewrote 1 table(s) from their files" in capsys.readouterr().out
    assert (tmp_path / name).read_text(encoding="utf-8") == DOCUMENTS[name]  # rewritten from the file
    assert main(["--check", "--readme", str(readme)]) == 0
    assert "differs" not in capsys.readouterr().err


def test_a_derived_table_quoting_a_number_its_files_lack_fails(tmp_path, capsys):
    readme = documents_copy(tmp_path)
    name, quoted = holding(r"0\.001: (0\.\d{3}) \[")  # the means_lr = 0.001 arm's AP
    wrong = absent_number()
    edited = DOCUMENTS[name].replace(quoted.group(0), quoted.group(0).replace(quoted.group(1), wrong))
    assert edited != DOCUMENTS[name]
    (tmp_path / name).write_text(edited, encoding="utf-8")
    assert main(["--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(name)}:\d+: the table derived from figures/ablations/means_lr\.md.* shows {wrong}, "
                     r"which none of them holds", err)
    assert (tmp_path / name).read_text(encoding="utf-8") == edited  # a derived table is never rewritten


def test_the_readme_findings_quote_only_their_files(tmp_path, capsys):
    readme = documents_copy(tmp_path)
    _, quoted = holding(r"\| \*\*Digits: a tie\.\*\* .*?\| (0\.\d{3}) \[")  # DLDENet's headline AP
    assert quoted.string is DOCUMENTS["README.md"]
    wrong = absent_number()
    readme.write_text(DOCUMENTS["README.md"].replace(quoted.group(0), quoted.group(0).replace(quoted.group(1), wrong)),
                      encoding="utf-8")
    assert main(["--check", "--readme", str(readme)]) == 1
    assert re.search(rf"README\.md:\d+: the table derived from figures/ablations/headline\.md.* shows {wrong}",
                     capsys.readouterr().err)


# ------------------------------------------------------------------------------ the rewriter
def test_blocks_take_the_picked_table_indented_with_the_provenance_line_and_are_idempotent(tmp_path):
    write_table_file(tmp_path / "two.md", "# Two\n\n| a |\n|---|\n| 1 |\n\nnote\n\n| b |\n|---|\n| 2 |",
                     command="make bench")
    (tmp_path / "one.md").write_text("| c |\n|---|\n| 3 |\n")
    text = ("intro\n- item:\n\n  <!-- table: two.md#2 -->\n  stale\n  <!-- /table -->\n\n"
            "<!-- table: one.md -->\n<!-- /table -->\nend\n")
    report = render(text, tmp_path)
    provenance = (tmp_path / "two.md").read_text().splitlines()[-1]
    assert report.text == ("intro\n- item:\n\n  <!-- table: two.md#2 -->\n\n  | b |\n  |---|\n  | 2 |\n\n"
                           f"  {provenance}\n\n  <!-- /table -->\n\n"
                           "<!-- table: one.md -->\n\n| c |\n|---|\n| 3 |\n\n<!-- /table -->\nend\n")
    assert [line.split(":")[1] for line in report.differing] == ["4", "8"]
    again = render(report.text, tmp_path)
    assert again.text == report.text and again.differing == []


@pytest.mark.parametrize("text, message", [
    ("a\n<!-- table: gone.md -->\n<!-- /table -->\n", "error: README.md:2: the table file gone.md does not exist"),
    ("a\n<!-- table: one.md -->\n| x |\n", "error: README.md:2: unclosed marker '<!-- table: one.md -->': "
                                          "no '<!-- /table -->' follows"),
    ("<!-- table: one.md -->\n<!-- table: one.md -->\n<!-- /table -->\n", "error: README.md:1: unclosed marker"),
    ("<!-- /table -->\n", "error: README.md:1: '<!-- /table -->' closes no marker"),
    ("<!-- table: one.md -->\n<!-- /derived -->\n", "error: README.md:2: '<!-- /derived -->' closes"),
    ("<!-- table:one.md -->\n", "error: README.md:1: malformed marker"),
    ("<!-- table: two.md -->\n<!-- /table -->\n", "error: README.md:1: two.md holds 2 tables; pick one with two.md#k"),
    ("<!-- table: one.md#3 -->\n<!-- /table -->\n", "error: README.md:1: one.md holds 1 table(s); #3 is not one"),
])
def test_a_broken_block_is_a_one_line_error(tmp_path, capsys, text, message):
    (tmp_path / "one.md").write_text("| c |\n|---|\n| 3 |\n")
    (tmp_path / "two.md").write_text("| a |\n|---|\n\n| b |\n|---|\n")
    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert main(["--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert readme.read_text() == text


def test_a_table_file_without_provenance_fails_and_more_than_one_commit_is_a_warning(tmp_path, capsys):
    (tmp_path / "figures").mkdir()
    write_table_file(tmp_path / "figures" / "good.md", "| a |\n|---|\n| 1 |", command="make figures")
    (tmp_path / "figures" / "bare.md").write_text("| b |\n|---|\n| 2 |\n")
    (tmp_path / "figures" / "index.md").write_text("| not a results table |\n|---|\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table: figures/good.md -->\n<!-- /table -->\n")
    assert main(["--readme", str(readme)]) == 1
    assert main(["--check", "--readme", str(readme)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: figures/bare.md has no provenance line (commit, command, date): re-run what writes it"] * 2

    write_table_file(tmp_path / "figures" / "bare.md", "| b |\n|---|\n| 2 |", command="make ablations")
    assert main(["--check", "--readme", str(readme)]) == 0
    assert capsys.readouterr().err == ""
    write_table_file(tmp_path / "figures" / "old.md", "| c |\n|---|\n| 3 |", command="make figures")
    old = tmp_path / "figures" / "old.md"
    old.write_text(old.read_text().replace(f"commit {code_commit()} ", "commit abc1234 "))
    assert main(["--check", "--readme", str(readme)]) == 0
    assert capsys.readouterr().err == (f"warning: the table files come from 2 commits of dlde/: {code_commit()} "
                                       "(2 files), abc1234 (1 file)\n")


def test_markers_in_docs_resolve_from_the_root_and_their_files_are_checked_too(tmp_path, capsys):
    (tmp_path / "figures").mkdir()
    (tmp_path / "docs").mkdir()
    write_table_file(tmp_path / "figures" / "good.md", "| a |\n|---|\n| 1 |", command="make figures")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bare.md").write_text("| b |\n|---|\n| 2 |\n")  # outside figures/: only a doc names it
    readme = tmp_path / "README.md"
    readme.write_text("See [the results](docs/results.md).\n")
    doc = "# Results\n\n<!-- table: figures/good.md -->\n<!-- /table -->\n\n[table](../figures/good.md)\n"
    (tmp_path / "docs" / "results.md").write_text(doc)
    assert main(["--check", "--readme", str(readme)]) == 1
    assert capsys.readouterr().err == "docs/results.md:3: the table differs from figures/good.md " \
                                      "(run .venv/bin/python -m dlde.pipeline.readme)\n"
    assert main(["--readme", str(readme)]) == 0
    assert capsys.readouterr().out == "docs/results.md: rewrote 1 table(s) from their files\n"
    rewritten = (tmp_path / "docs" / "results.md").read_text()
    assert "| a |\n|---|\n| 1 |\n\n<sub>commit " in rewritten
    assert readme.read_text() == "See [the results](docs/results.md).\n"  # a document without blocks stays
    assert main(["--check", "--readme", str(readme)]) == 0

    (tmp_path / "docs" / "more.md").write_text("<!-- derived: results/bare.md -->\n| 2 |\n<!-- /derived -->\n")
    assert main(["--check", "--readme", str(readme)]) == 1  # the provenance rule covers every document's files
    assert capsys.readouterr().err == ("error: results/bare.md has no provenance line (commit, command, date): "
                                       "re-run what writes it\n")


def test_a_link_to_nothing_fails_naming_document_and_line(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("# Top\n\n[ok](docs/a.md#a-heading) [gone](docs/b.md)\n")
    (tmp_path / "docs" / "a.md").write_text("# A heading\n\n![fig](../figures/x.png) [up](../README.md#nowhere)\n"
                                            "`[not a link](nothing.md)` [web](https://example.org/x.md)\n")
    assert main(["--check", "--readme", str(readme)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: README.md:3: docs/b.md names no file ({(tmp_path / 'docs' / 'b.md').as_posix()} does not exist)",
        f"error: docs/a.md:3: ../figures/x.png names no file ({(tmp_path / 'docs' / '../figures/x.png').as_posix()} "
        "does not exist)",
        "error: docs/a.md:3: ../README.md#nowhere: README.md has no heading #nowhere"]
    assert readme.read_text() == "# Top\n\n[ok](docs/a.md#a-heading) [gone](docs/b.md)\n"  # links are never rewritten


# ------------------------------------------------------------------------------ provenance
def test_the_provenance_line_names_commit_command_and_date():
    assert provenance_line("make ablations", commit="abc1234", date="2026-11-30", kernels="portable") == LINE
    assert PROVENANCE.match(LINE).groupdict() == {"commit": "abc1234", "command": "make ablations",
                                                  "date": "2026-11-30", "kernels": "portable"}
    older = "<sub>commit abc1234 · `make ablations` · 2026-11-30</sub>"  # written before the kernels were pinned
    assert PROVENANCE.match(older)["kernels"] is None
    line = provenance_line("python -m x `y`")
    match = PROVENANCE.match(line)
    assert match and match["command"] == "python -m x 'y'"  # a backtick would end the code span
    assert match["date"] == datetime.now(timezone.utc).date().isoformat()
    assert re.fullmatch(r"[0-9a-f]{4,40}(\+changes)?", match["commit"])  # this checkout's
    assert match["kernels"] == kernel_setting()  # this process's
    assert not PROVENANCE.match("<sub>commit abc1234 · make ablations · 2026-11-30</sub>")


def test_the_commit_is_the_last_one_of_dlde_with_changes_marked(tmp_path):
    assert code_commit(tmp_path) == "unknown"  # not a git checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "dlde").mkdir()
    (tmp_path / "dlde" / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "code"], check=True)
    commit = subprocess.run(git + ["log", "-1", "--format=%h"], check=True, capture_output=True, text=True).stdout
    (tmp_path / "notes.md").write_text("outside dlde/\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "notes"], check=True)
    assert code_commit(tmp_path) == commit.strip()  # the last commit that changed dlde/, not HEAD
    (tmp_path / "dlde" / "a.py").write_text("x = 2\n")
    assert code_commit(tmp_path) == commit.strip() + "+changes"


def test_the_command_is_the_running_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    python = str(ROOT / ".venv" / "bin" / "python")
    assert command_line([str(ROOT / "dlde" / "pipeline" / "__main__.py"), "--config", "figures.yaml"], python) \
        == ".venv/bin/python -m dlde.pipeline --config figures.yaml"
    assert command_line([str(ROOT / "dlde" / "pipeline" / "readme.py"), "--check"], python) \
        == ".venv/bin/python -m dlde.pipeline.readme --check"
    assert command_line([str(ROOT / "benchmarks" / "step_time.py"), "--table", "a b.md"], "/usr/bin/python3") \
        == "/usr/bin/python3 benchmarks/step_time.py --table 'a b.md'"


def test_a_table_file_ends_with_its_provenance_and_gives_back_its_content(tmp_path):
    content = "# Sweep `x`\n\n| a |\n|---|\n| 1 |\n"
    path = write_table_file(tmp_path / "x.md", content + "\n\n", command="make ablations")
    text = path.read_text()
    assert text.startswith(content + "\n<sub>commit ") and text.endswith("</sub>\n")
    body, provenance = split_provenance(text)
    assert body == content and provenance["command"] == "make ablations"
    assert split_provenance(content) == (content, None)
    (tmp_path / "bare.md").write_text(content)
    (tmp_path / "inside.md").write_text(LINE + "\n\n" + content)  # provenance is the last line, not any line
    assert missing_provenance([path, tmp_path / "bare.md", tmp_path / "inside.md"]) == [tmp_path / "bare.md",
                                                                                         tmp_path / "inside.md"]
