"""A package's public names imported on first use (PEP 562).

``dlde`` and ``dlde.train`` re-export names of heavy modules (the model, the trainer), and ``python
-m dlde.train`` imports both packages before its first line runs: importing the names eagerly
would load torch before the command takes the portable kernels and checks its dataset
(:mod:`dlde.kernels`, :mod:`dlde.train.preflight`). With :func:`public_names` a package imports
what a name needs when the name is first used, and keeps it.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def public_names(package: str, modules: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` of ``package``.

    Args:
        package: the package's ``__name__``.
        modules: public name -> the module that defines it (relative to ``package`` or absolute).
    """
    namespace = sys.modules[package].__dict__

    def get(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(modules[name], package), name)
        namespace[name] = value  # the next use finds it without this function
        return value

    def names() -> list[str]:
        return sorted({*namespace, *modules})

    return get, names
