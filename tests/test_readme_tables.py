"""The README's results tables are their files' tables (``python -m dlde.pipeline.readme``), and every
table file can name the commit, command and date that made it (``dlde.analysis.tables``)."""
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dlde.analysis.tables import (
    PROVENANCE,
    code_commit,
    command_line,
    missing_provenance,
    provenance_line,
    split_provenance,
    write_table_file,
)
from dlde.kernels import setting as kernel_setting
from dlde.pipeline.readme import main, render, table_commits, table_files

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
LINE = "<sub>commit abc1234 · `make ablations` · 2026-11-30 · portable kernels</sub>"


def readme_copy(folder: Path) -> Path:
    """The README and the files its blocks name, copied under ``folder``."""
    for source in render(README, ROOT).sources:
        (folder / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, folder / source)
    path = folder / "README.md"
    path.write_text(README, encoding="utf-8")
    return path


def block_line(text: str, marker: str) -> int:
    """The 1-based line of ``marker`` in ``text``."""
    return text.split("\n").index(marker) + 1


# --------------------------------------------------------------------------- the README itself
def test_the_readme_tables_equal_their_files():
    report = render(README, ROOT)
    assert report.differing == [] and report.unquoted == []
    assert report.text == README
    assert {"figures/metrics.md", "figures/ablations/headline.md", "figures/few_shot_benchmark.md",
            "figures/benchmarks/step_time.md"} <= set(report.sources)


def test_every_committed_table_file_names_its_provenance_and_all_name_one_commit():
    """Every number of the README comes from one version of the code: re-running one table after a
    change of dlde/ means re-running them all (``python -m dlde.pipeline.readme`` warns too)."""
    files = table_files(ROOT, render(README, ROOT).sources)
    assert len(files) >= 14 and missing_provenance(files) == []
    commits = table_commits(files)
    assert len(commits) == 1, {commit: [path.relative_to(ROOT).as_posix() for path in paths]
                               for commit, paths in commits.items()}
    assert "+changes" not in next(iter(commits))


def test_a_table_that_differs_from_its_file_is_named_and_rewritten(tmp_path, capsys):
    readme = readme_copy(tmp_path)
    marker = "<!-- table: figures/metrics.md -->"
    row = re.search(r"^\| dlde \| dlde \| digits \| 16 \| (\d\.\d{3}) \|", README, re.MULTILINE)
    changed = "0.999" if row.group(1) != "0.999" else "0.998"  # an AP the file does not hold
    edited = README.replace(row.group(0), row.group(0).replace(row.group(1), changed))
    assert edited != README
    readme.write_text(edited, encoding="utf-8")
    assert main(["--check", "--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert f"README.md:{block_line(README, marker)}: the table differs from figures/metrics.md" in err
    assert err.count("differs") == 1 and readme.read_text(encoding="utf-8") == edited  # --check writes nothing
    main(["--readme", str(readme)])
    assert readme.read_text(encoding="utf-8") == README  # rewritten from the file
    main(["--check", "--readme", str(readme)])
    assert "differs" not in capsys.readouterr().err


def test_a_derived_table_quoting_a_number_its_files_lack_fails(tmp_path, capsys):
    readme = readme_copy(tmp_path)
    quoted = re.search(r"0\.001: (0\.\d{3}) \[", README)  # the means_lr = 0.001 arm's AP
    wrong = "0.999" if quoted.group(1) != "0.999" else "0.998"  # no AP of the ablations
    edited = README.replace(quoted.group(0), quoted.group(0).replace(quoted.group(1), wrong))
    assert edited != README
    readme.write_text(edited, encoding="utf-8")
    assert main(["--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert re.search(rf"README\.md:\d+: the table derived from figures/ablations/means_lr\.md.* shows {wrong}, "
                     r"which none of them holds", err)
    assert readme.read_text(encoding="utf-8") == edited  # a derived table is never rewritten


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
