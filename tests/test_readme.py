"""The commands of README.md and docs/*.md run as written from a fresh clone: they name the venv's
executables (or a make target), and the training flags they use exist."""
import re
import shlex
from pathlib import Path

import pytest

from dlde.pipeline.readme import documents
from dlde.train.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in documents()}
README = DOCUMENTS["README.md"]
BARE = re.compile(r"(^|[`\s(])(python3?|papermill|jupyter|pytest|torchrun) ")
TRAIN = re.compile(r"-m dlde\.train\b")


def shell_blocks(text: str) -> list[str]:
    """Commands of the ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.split(" #")[0].strip() for line in joined.splitlines()
                     if line.strip() and not line.strip().startswith("#")]
    return commands


def test_the_readme_starts_with_the_two_set_up_commands():
    assert README.startswith("# ")
    first = README.split("\n```", 2)[1]
    assert first.startswith("bash\n") and shell_blocks("```" + first + "```") == ["make figures", "make test"]


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_no_command_needs_an_activated_venv(name):
    text = DOCUMENTS[name]
    inline = re.findall(r"`([^`\n]+)`", text)
    offenders = [code for code in shell_blocks(text) + inline if BARE.search(" " + code)
                 and ".venv/bin/" not in code and "make " not in code]
    assert offenders == []


def test_the_training_flags_in_the_documents_exist():
    commands = [command for text in DOCUMENTS.values() for command in shell_blocks(text) if TRAIN.search(command)]
    assert len(commands) >= 4 and sum(TRAIN.search(c) is not None for c in shell_blocks(README)) >= 3
    for command in commands:
        words = shlex.split(command.split("bash -c ")[-1].strip("'"))
        arguments = words[words.index("dlde.train") + 1:]
        _parser("digits").parse_args(arguments)  # exits (SystemExit) on an unknown flag or bad value
