"""The README's commands run as written from a fresh clone: they name the venv's executables (or a
make target), and the training flags they use exist."""
import re
import shlex
from pathlib import Path

from dlde.train.cli import _parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BARE = re.compile(r"(^|[`\s(])(python3?|papermill|jupyter|pytest|torchrun) ")


def shell_blocks() -> list[str]:
    """Commands of the ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.split(" #")[0].strip() for line in joined.splitlines()
                     if line.strip() and not line.strip().startswith("#")]
    return commands


def test_no_command_needs_an_activated_venv():
    inline = re.findall(r"`([^`\n]+)`", README)
    offenders = [text for text in shell_blocks() + inline if BARE.search(" " + text)
                 and ".venv/bin/" not in text and "make " not in text]
    assert offenders == []
    assert README.startswith("# ") and "make figures" in README.split("\n```", 2)[1]  # the two set-up commands


def test_the_training_flags_in_the_readme_exist():
    commands = [c for c in shell_blocks() if "dlde.train" in c]
    assert len(commands) >= 4
    for command in commands:
        words = shlex.split(command.split("bash -c ")[-1].strip("'"))
        arguments = words[words.index("dlde.train") + 1:]
        _parser("digits").parse_args(arguments)  # exits (SystemExit) on an unknown flag or bad value
