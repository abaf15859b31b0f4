"""The committed notebooks: the lock of their ``parameters`` cells and JupyterLab's save guard.

``notebooks/parameters.lock.json`` records the ``parameters`` cell of every committed notebook.
The pipeline checks a notebook's cell against it before executing the notebook, ``make lab``
installs :func:`refuse_committed_save` so Lab never overwrites a committed notebook, and

::

    python -m dlde.pipeline.lock --lock | --check [--notebooks DIR]

writes or checks the lock.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

#: The committed notebooks (the repository's ``notebooks/``).
NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
#: The committed record of every notebook's ``parameters`` cell, next to the notebooks.
LOCK_FILE = "parameters.lock.json"
LOCK_COMMAND = "`.venv/bin/python -m dlde.pipeline.lock --lock`"
#: The notebook that trains a run (:mod:`dlde.pipeline.run_config`); every other reads runs.
TRAIN_NOTEBOOK = "01_train.ipynb"


def parameters_cell(notebook: str | os.PathLike) -> str:
    """The source of the one cell tagged ``parameters`` of ``notebook``.

    Raises:
        ValueError: the notebook has no such cell, or more than one.
    """
    cells = [cell for cell in json.loads(Path(notebook).read_text())["cells"]
             if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook}: {len(cells)} cells tagged 'parameters', expected exactly one")
    source = cells[0]["source"]
    return "".join(source) if isinstance(source, list) else source


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The parameters a notebook declares (``papermill.inspect_notebook``)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


@cache
def declared(notebook: str) -> dict[str, dict[str, Any]]:
    """The parameters ``notebooks/<notebook>`` declares (read once per process)."""
    return notebook_parameters(NOTEBOOKS_DIR / notebook)


def notebook_defaults(notebook: str = TRAIN_NOTEBOOK) -> dict[str, Any]:
    """The default values of a notebook's parameters cell (``{"EPOCHS": 16, ...}``)."""
    return {name: ast.literal_eval(spec["default"]) for name, spec in declared(notebook).items()}


def read_lock(notebooks_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """The committed parameters cells: notebook file name -> source (``parameters.lock.json``)."""
    path = Path(notebooks_dir or NOTEBOOKS_DIR) / LOCK_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: write it with {LOCK_COMMAND}")
    return {name: "".join(lines) for name, lines in json.loads(path.read_text()).items()}


def write_lock(notebooks_dir: str | os.PathLike | None = None) -> Path:
    """Record the parameters cell of every ``*.ipynb`` of ``notebooks_dir`` as the committed one.

    Run it (``python -m dlde.pipeline.lock --lock``) after changing a notebook's parameters on
    purpose, and commit the lock together with the notebook.
    """
    folder = Path(notebooks_dir or NOTEBOOKS_DIR)
    lock = {path.name: parameters_cell(path).splitlines(keepends=True) for path in sorted(folder.glob("*.ipynb"))}
    path = folder / LOCK_FILE
    path.write_text(json.dumps(lock, indent=1, ensure_ascii=False) + "\n")
    return path


def check_parameters_cell(notebook: str | os.PathLike) -> None:
    """Fail unless ``notebook``'s parameters cell is the one recorded in the lock next to it.

    The pipeline calls this before executing a notebook: a notebook edited and saved in
    JupyterLab (a changed default, say ``EPOCHS = 2``) cannot silently change what
    ``make figures`` computes.

    Raises:
        ValueError: the cell differs from the lock (the first differing line is named), or the
            notebook is not in the lock.
        FileNotFoundError: no lock file next to the notebook.
    """
    notebook = Path(notebook)
    lock = read_lock(notebook.parent)
    if notebook.name not in lock:
        raise ValueError(f"{notebook}: not in {notebook.parent / LOCK_FILE}; add it with {LOCK_COMMAND}")
    current, committed = parameters_cell(notebook), lock[notebook.name]
    if current == committed:
        return
    now, then = current.splitlines(), committed.splitlines()
    line = next((i for i, (a, b) in enumerate(zip(now, then)) if a != b), min(len(now), len(then)))
    got = now[line] if line < len(now) else "<no line>"
    want = then[line] if line < len(then) else "<no line>"
    raise ValueError(f"{notebook}: parameters cell differs from {LOCK_FILE} at line {line + 1}: "
                     f"{got!r} instead of {want!r}; set values in figures.yaml, or, to change a default "
                     f"on purpose, run {LOCK_COMMAND} and commit both files")


def refuse_committed_save(model: Mapping[str, Any], path: str, contents_manager: Any, **kwargs: Any) -> None:
    """Jupyter server ``pre_save_hook`` (set by ``make lab``): a notebook recorded in
    ``notebooks/parameters.lock.json`` is never overwritten from JupyterLab.

    Lab's save and autosave of such a notebook get HTTP 403 with a message telling the user to
    use *File > Save Notebook As…* into ``runs/``; every other file saves normally.

    Args:
        model: the contents model being saved.
        path: the API path, relative to the server's root (e.g. ``notebooks/01_train.ipynb``).
        contents_manager: the server's contents manager (its ``root_dir`` locates the file).
    """
    from tornado.web import HTTPError

    parts = Path(path.strip("/")).parts
    if len(parts) != 2 or parts[0] != "notebooks" or not parts[1].endswith(".ipynb"):
        return
    folder = Path(contents_manager.root_dir) / "notebooks"
    try:
        locked = read_lock(folder)
    except FileNotFoundError:
        return
    if parts[1] in locked:
        raise HTTPError(403, f"{path} is a committed notebook (make figures runs it) and is read-only in "
                             f"JupyterLab: use File > Save Notebook As… and save your copy under runs/")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dlde.pipeline.lock --lock | --check``: write or check ``notebooks/parameters.lock.json``."""
    parser = argparse.ArgumentParser(prog="python -m dlde.pipeline.lock",
                                     description="The committed parameters cells of the notebooks.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--lock", action="store_true", help="record the current parameters cells as committed")
    action.add_argument("--check", action="store_true", help="fail when a parameters cell differs from the lock")
    parser.add_argument("--notebooks", default=None, help="notebooks folder (default: the repository's notebooks/)")
    args = parser.parse_args(argv)
    if args.lock:
        print(f"wrote {write_lock(args.notebooks)}")
        return 0
    failures = []
    for path in sorted(Path(args.notebooks or NOTEBOOKS_DIR).glob("*.ipynb")):
        try:
            check_parameters_cell(path)
        except (ValueError, FileNotFoundError) as error:
            failures.append(str(error))
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
