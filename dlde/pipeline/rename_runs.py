"""``python -m dlde.pipeline.rename_runs [RUNS_DIR] [--apply]``: move the sweep runs to the folders
the current presets name.

A sweep run's folder names what its configuration changes from its preset
(:func:`dlde.pipeline.sweeps.run_key`), so changing a preset renames runs: a folder trained under the
old preset holds a configuration another name now stands for, and a sweep refuses it (``--force``
would replace it). This command reads each run's saved configuration under
``<RUNS_DIR>/sweeps/<preset>/`` and moves the folder to its current name, so the finished runs are
found again instead of trained again. Without ``--apply`` it only prints the moves. It never
replaces a folder (a move onto an existing one is refused before anything moves) and leaves alone a
folder a sweep process is training (its ``sweep.lock`` names a live process, or is being written); a
lock left by a process that died on this host is no hold (the next sweep takes it over too).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from dlde.files import lock_holder
from dlde.train.config import PRESETS
from dlde.train.runs import RunFolder

from .sweeps import SWEEP_LOCK, SWEEPS_FOLDER, run_key


def planned_moves(runs_dir: str | Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """The moves ``(folder, its current name)`` of the sweep runs under ``runs_dir`` whose name is not
    their key any more, and the folders left alone because a sweep holds them."""
    sweeps = Path(runs_dir) / SWEEPS_FOLDER
    moves: list[tuple[Path, Path]] = []
    held: list[Path] = []
    presets = sorted(p for p in sweeps.iterdir() if p.is_dir() and p.name in PRESETS) if sweeps.is_dir() else []
    for preset in presets:
        for folder in sorted(p for p in preset.iterdir() if p.is_dir()):
            config = RunFolder(folder).saved_config()
            target = None if config is None else sweeps / run_key(config, preset.name)
            if target is None or target == folder:
                continue
            if lock_holder(folder / SWEEP_LOCK) is not None:
                held.append(folder)
            else:
                moves.append((folder, target))
    return moves, held


def apply_moves(moves: Sequence[tuple[Path, Path]]) -> None:
    """Move each folder to its target, through a temporary name (a target may be another move's
    source); refused before anything moves when a target exists and is not itself moved away, or
    when two folders would take one name."""
    sources = {source for source, _ in moves}
    targets = [target for _, target in moves]
    shared = sorted({target for target in targets if targets.count(target) > 1})
    if shared:
        raise FileExistsError(f"{shared[0]} is the name of more than one run folder (nothing was moved): "
                              + ", ".join(source.name for source, target in moves if target == shared[0]))
    for source, target in moves:
        if target.exists() and target not in sources:
            raise FileExistsError(f"{target} exists: {source.name} is not moved onto it (nothing was moved)")
    staged = [(source.with_name(source.name + ".renaming"), target) for source, target in moves]
    for (source, _), (temporary, _) in zip(moves, staged):
        source.rename(temporary)
    for temporary, target in staged:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.rename(target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlde.pipeline.rename_runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", nargs="?", default="runs", help="the runs folder (default: runs)")
    parser.add_argument("--apply", action="store_true", help="move the folders (without it: only print the moves)")
    args = parser.parse_args(argv)
    moves, held = planned_moves(args.runs_dir)
    for source, target in moves:
        print(f"{source.parent.name}/{source.name} -> {target.parent.name}/{target.name}")
    for folder in held:
        print(f"{folder.parent.name}/{folder.name}: left alone, a sweep is training it ({SWEEP_LOCK})")
    try:
        if args.apply:
            apply_moves(moves)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{len(moves)} folder(s) {'moved' if args.apply else 'to move (run again with --apply)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
